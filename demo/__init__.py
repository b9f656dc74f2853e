"""``make demo``: one real operation end to end on loopback."""
