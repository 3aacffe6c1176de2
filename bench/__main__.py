"""`python -m bench`: see bench/cli.py and bench/README.md."""

import sys

from bench.cli import entry

sys.exit(entry())
