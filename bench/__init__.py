"""Benchmarks against a running stack (`make run`). Never part of the test suite (DESIGN §7)."""
