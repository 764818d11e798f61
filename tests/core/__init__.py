"""Tests of geopresence.core: the sans-I/O core (no event loop but where a test says so)."""
