"""Aids shared by tests and benchmarks: model machines and the exhaustive yardstick."""
