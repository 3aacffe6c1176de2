"""`python -m collector.cli`: the same as the `activity-collector` command."""

import sys

from collector.cli.main import main

sys.exit(main())
