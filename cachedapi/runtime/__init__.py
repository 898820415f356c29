"""The runtime that CachedApi pods run: one package, two roles.

``api`` serves the resource API over PostgreSQL and owns the Redis cache
(fills and invalidations); ``gateway`` authenticates, rate-limits, answers
cache hits from Redis and forwards the rest to the api role's Service.
Both read the configuration rendered by ``cachedapi.contract`` once, at start.
"""
