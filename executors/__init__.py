"""Executors: what changes the code inside a job's workspace. Found through entry points."""
