"""Tests of geopresence.wire: the wire codec."""
