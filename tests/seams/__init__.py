"""Conformance suites: every implementation of a seam against one contract."""
