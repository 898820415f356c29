"""``python -m cachedapi.runtime --role gateway|api``: the same as ``cachedapi runtime``."""

import argparse

from cachedapi.runtime import main

parser = main.add_arguments(argparse.ArgumentParser(prog="python -m cachedapi.runtime", description=__doc__))
raise SystemExit(main.main(parser.parse_args()))
