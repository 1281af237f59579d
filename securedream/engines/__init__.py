"""Engines run experiments: in-process today, Flower later."""
