"""Tests of geopresence.model: values."""
