"""The `vidlab` command line."""
