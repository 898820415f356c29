"""The gateway role: authentication, rate limiting and the cache check in front of the api role.

``app.create_app`` builds the ASGI callable that ``cachedapi runtime --role
gateway`` serves; the modules beside it each hold one concern of it.
"""
