"""Everything codeworker keeps in Redis: the key layout, file locks, idempotency claims and the
branch registry. Only these modules talk to Redis directly; each takes a client made with
``decode_responses=True``."""
