"""Helpers that make media files for tests and benchmarks."""
