"""Benchmarks: each measures codeworker against a baseline run in the same process."""
