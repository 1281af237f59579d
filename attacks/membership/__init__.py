"""Membership inference against CoDream: the distilled client models and the dream oracle."""
