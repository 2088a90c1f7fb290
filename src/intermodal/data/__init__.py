"""Synthetic data: the phantom used by the demo and the tests."""
