"""Deciding whether a change is proven: running the tests before and after, reading per-test
results (junit XML, coverage) and the rule of each operation type."""
