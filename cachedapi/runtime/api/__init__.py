"""The api role: the resource API over PostgreSQL, filling the Redis cache the gateway reads."""
