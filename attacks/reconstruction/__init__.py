"""Reconstruction: how close dreams (or a white-box inversion) come to clients' training images."""
