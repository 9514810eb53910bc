"""Shared library code of Ascension; each module has one subject."""
