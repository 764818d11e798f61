"""Tests of geopresence.storage: the disk."""
