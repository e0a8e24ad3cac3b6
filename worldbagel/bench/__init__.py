"""Measurements the benchmark scripts run and the tests check (scripts/bench_*.py print and record them)."""
