"""``cachedapi dev``: the whole data plane on one machine, for developing and testing, never shipped.

Real PostgreSQL and Redis from pip packages (``embedded``; the ``dev`` extra, which
the image does not install) and the runtime roles as processes (``devstack``). The
runtime never imports this package, and the operator neither (checked by
import-linter, see pyproject.toml).
"""
