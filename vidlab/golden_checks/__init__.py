"""Checks of vidlab against golden outputs of the official implementations, one module per system."""
