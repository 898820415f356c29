"""The gateway as a shared HTTP cache in front of any upstream (``contract.UPSTREAM_HTTP``).

With the bundled api role the gateway only reads entries the api role writes
(``checkpoint``). With the user's own API behind it there is no api role to
fill or invalidate, so this package does both, by RFC 9111 and RFC 5861, and
keeps the one promise no caching proxy makes: once a write through any gateway
replica is acknowledged, no replica serves the older representation.

- ``policy``: pure RFC 9111 decisions (Cache-Control, freshness, age, storable?).
- ``entry``: how a stored response is laid out in one Redis string.
- ``store``: the Redis keys and Lua scripts (lookup, fill, invalidate, purge).
- ``handler``: the request flow (read, revalidate, coalesce, write, purge).
"""
