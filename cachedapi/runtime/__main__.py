"""``python -m cachedapi.runtime --role gateway|api``: the same as ``cachedapi runtime``."""

import sys

from cachedapi import cli

raise SystemExit(cli.main(["runtime", *sys.argv[1:]]))
