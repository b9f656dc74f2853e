"""HTTP servers on loopback that stand in for remote services: the shared server base, and a git
smart-HTTP server with token auth (used by the demo, the benchmarks and the tests)."""
