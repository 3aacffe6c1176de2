"""`activity-collector config`: every setting, its value (passwords in DSNs masked) and where it came
from."""

from __future__ import annotations

import argparse
import csv
import json
import sys

from collector.cli.common import Configuration, Subparsers, serve_flags
from collector.config import SETTING_NAMES, EffectiveSettings


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "config",
        help="print the effective configuration: every setting, its value and where it came from",
        description="Takes the flags of `serve`; passwords in DSNs are masked.",
    )
    serve_flags(parser)
    parser.add_argument(
        "--format",
        choices=["table", "json", "csv"],
        default="table",
        help="output format: table, json (one document keyed by setting) or csv (default table)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, config: Configuration) -> int:
    return print_config(config.effective, args.format)


def print_config(effective: EffectiveSettings, output_format: str) -> int:
    """Every setting, its value (passwords in DSNs masked) and where it came from."""
    if output_format == "json":
        document = {
            name: {
                "value": effective.shown(name),
                "source": effective.origin(name).source,
                **({"from": effective.origin(name).where} if effective.origin(name).where else {}),
            }
            for name in SETTING_NAMES
        }
        print(json.dumps(document, indent=2))
        return 0
    if output_format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(("setting", "value", "source", "from"))
        for name in SETTING_NAMES:
            value = effective.shown(name)
            shown = json.dumps(value) if isinstance(value, bool) else str(value)
            origin = effective.origin(name)
            writer.writerow((name, shown, origin.source, origin.where))
        return 0
    rows = [("setting", "value", "source")]
    for name in SETTING_NAMES:
        value = effective.shown(name)
        shown = json.dumps(value) if isinstance(value, (bool, str)) else str(value)
        origin = effective.origin(name)
        rows.append((name, shown, f"{origin.source} ({origin.where})" if origin.where else origin.source))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}".rstrip())
    return 0
