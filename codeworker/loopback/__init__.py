"""Real servers on loopback that stand in for remote services, and real processes to run against
them: the shared HTTP server base, a git smart-HTTP server with token auth, a GitHub REST stand-in
(with signed webhook deliveries), a private ``redis-server`` and a ``codeworker worker`` process.
The demo, the benchmarks and the tests use them; nothing in the worker does."""
