"""Benchmarks: each measures Headwater against a baseline in the same run and reports the ratio."""
