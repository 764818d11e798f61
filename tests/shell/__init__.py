"""Tests of geopresence.shell: the trio node, through real sessions."""
