"""Metrics and evaluation protocols shared by every recipe."""
