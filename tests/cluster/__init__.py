"""Tests of geopresence.cluster: several nodes on Redis."""
