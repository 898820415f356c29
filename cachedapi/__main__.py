"""``python -m cachedapi`` is the ``cachedapi`` command."""

from cachedapi import cli

raise SystemExit(cli.main())
