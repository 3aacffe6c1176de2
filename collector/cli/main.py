"""`activity-collector`: serve, send, health, sql, report, schema, migrate, dead-letters, tenants, keys,
catalog, config."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from collector.config import LOG_LEVELS, SETTING_NAMES, ConfigError, EffectiveSettings, Settings, load_config

FORMATS = {
    "table": "PrettyCompactMonoBlock",
    "tsv": "TabSeparatedWithNames",
    "csv": "CSVWithNames",
    "json": "JSONEachRow",
}


def _config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration file; flags and ACTIVITY_* variables override it (ACTIVITY_CONFIG)",
    )


def _store_flags(parser: argparse.ArgumentParser) -> None:
    _config_flag(parser)
    parser.add_argument("--data-dir", type=Path, help="data directory (default ./data; ACTIVITY_DATA_DIR)")
    parser.add_argument(
        "--clickhouse-dsn",
        help="ClickHouse DSN: http(s)://user:pass@host:8123 or chdb:///path "
        "(default: embedded engine under the data directory; ACTIVITY_CLICKHOUSE_DSN)",
    )
    parser.add_argument("--clickhouse-database", help="ClickHouse database (default activity)")
    _postgres_flags(parser)


def _postgres_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--postgres-dsn",
        help="PostgreSQL DSN: postgresql://user:pass@host:5432/db "
        "(default: embedded PostgreSQL under the data directory; ACTIVITY_POSTGRES_DSN)",
    )


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", help="HOST:PORT of the gRPC service (default 127.0.0.1:50051)")
    parser.add_argument(
        "--tls-cert-file", help="PEM certificate chain: TLS on the gRPC port and the HTTP door"
    )
    parser.add_argument("--tls-key-file", help="PEM private key of --tls-cert-file")
    parser.add_argument(
        "--http-listen",
        help="HOST:PORT of the HTTP/JSON door, POST /v1/activities (default 127.0.0.1:8080; empty: none)",
    )
    parser.add_argument(
        "--metrics-listen",
        help="HOST:PORT of the Prometheus /metrics endpoint (default 127.0.0.1:9464; empty: none)",
    )
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, help="least severe log events written (default info)"
    )
    _store_flags(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="activity-collector",
        description="Collects user activities over gRPC and stores them in ClickHouse.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC service")
    _serve_flags(serve)

    config = sub.add_parser(
        "config",
        help="print the effective configuration: every setting, its value and where it came from",
        description="Takes the flags of `serve`; passwords in DSNs are masked.",
    )
    _serve_flags(config)
    config.add_argument(
        "--format", choices=["table", "json"], default="table", help="output format (default table)"
    )

    send = sub.add_parser("send", help="send activities from a JSON Lines file to a running server")
    send.add_argument("file", help="JSON Lines file, one activity per line (proto JSON mapping); - for stdin")
    send.add_argument(
        "--target",
        default=os.environ.get("ACTIVITY_TARGET", "127.0.0.1:50051"),
        help="HOST:PORT of the server (default 127.0.0.1:50051; ACTIVITY_TARGET)",
    )
    send.add_argument("--batch-size", type=int, default=500, help="activities per request (default 500)")
    send.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    send.add_argument(
        "--api-key",
        default=os.environ.get("ACTIVITY_API_KEY"),
        help="API key sent as `authorization: Bearer <key>` (default: ACTIVITY_API_KEY)",
    )
    send.add_argument(
        "--attempts",
        type=int,
        default=6,
        help="tries per batch when the server is unreachable or asks for a resend (default 6)",
    )

    health = sub.add_parser("health", help="ask a running server whether it is SERVING (exit 0) or not (1)")
    health.add_argument(
        "--target",
        default=os.environ.get("ACTIVITY_TARGET", "127.0.0.1:50051"),
        help="HOST:PORT of the server (default 127.0.0.1:50051; ACTIVITY_TARGET)",
    )
    health.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    health.add_argument("--ca-file", help="PEM certificates to trust: connect over TLS (default: plain text)")
    health.add_argument("--server-name", help="with --ca-file: the name the certificate must carry")

    sql = sub.add_parser("sql", help="run ClickHouse SQL against the store and print the result")
    sql.add_argument("query", help="the SQL statement")
    sql.add_argument(
        "--format", choices=sorted(FORMATS), default="table", help="output format (default table)"
    )
    _store_flags(sql)

    from collector.cli.report import add_parser as add_report_parser

    add_report_parser(sub, _store_flags, sorted(FORMATS))

    schema = sub.add_parser(
        "schema",
        help="print the ClickHouse DDL of the configured placement (one node, or clickhouse_cluster), "
        "every statement IF NOT EXISTS: run it to create the tables on nodes added to a cluster",
    )
    _store_flags(schema)

    migrate = sub.add_parser("migrate", help="apply the PostgreSQL migrations this release lacks")
    _config_flag(migrate)
    migrate.add_argument("--data-dir", type=Path, help="data directory (default ./data; ACTIVITY_DATA_DIR)")
    _postgres_flags(migrate)

    letters = sub.add_parser(
        "dead-letters", help="list, show, replay and purge the activities ClickHouse refused"
    )
    actions = letters.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="list the dead letters waiting (with --all, replayed ones too)")
    listing.add_argument("--all", action="store_true", help="include the letters already replayed")
    listing.add_argument("--format", choices=["table", "json"], default="table", help="output format")
    show = actions.add_parser("show", help="a dead letter's error and activities")
    show.add_argument("id", type=int)
    replay = actions.add_parser(
        "replay", help="insert dead letters into ClickHouse again (idempotent); failures are kept"
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=int, nargs="?", help="the letter to replay")
    which.add_argument("--all", action="store_true", help="every letter waiting")
    purge = actions.add_parser("purge", help="delete dead letters")
    gone = purge.add_mutually_exclusive_group(required=True)
    gone.add_argument("id", type=int, nargs="?", help="the letter to delete")
    gone.add_argument("--replayed", action="store_true", help="every letter already replayed")
    gone.add_argument("--all", action="store_true", help="every letter, replayed or not")
    for action in (listing, show, replay, purge):
        _store_flags(action)

    tenants = sub.add_parser("tenants", help="create, list, disable and enable tenants")
    tenant_actions = tenants.add_subparsers(dest="action", required=True)
    tenant_create = tenant_actions.add_parser("create", help="a new tenant (then: keys create --tenant NAME)")
    tenant_create.add_argument("name")
    tenant_list = tenant_actions.add_parser("list", help="every tenant, its state and active keys")
    tenant_disable = tenant_actions.add_parser("disable", help="refuse every key of a tenant")
    tenant_disable.add_argument("name")
    tenant_enable = tenant_actions.add_parser("enable", help="accept a disabled tenant's keys again")
    tenant_enable.add_argument("name")

    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    key_actions = keys.add_subparsers(dest="action", required=True)
    key_create = key_actions.add_parser("create", help="a new key, printed once, alone on the last line")
    key_create.add_argument("--tenant", required=True, help="the tenant the key writes for")
    key_list = key_actions.add_parser("list", help="keys (ids, never secrets), their tenant and state")
    key_list.add_argument("--tenant", help="only this tenant's keys")
    key_revoke = key_actions.add_parser("revoke", help="refuse a key from now on")
    key_revoke.add_argument("key", help="the key id (as `keys list` shows it) or the whole key")
    for action in (
        tenant_create,
        tenant_list,
        tenant_disable,
        tenant_enable,
        key_create,
        key_list,
        key_revoke,
    ):
        _postgres_command_flags(action)

    from collector.cli.catalog import add_parser as add_catalog_parser

    add_catalog_parser(sub, _postgres_command_flags)
    return parser


def _postgres_command_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the commands that use PostgreSQL only."""
    _config_flag(parser)
    parser.add_argument("--data-dir", type=Path, help="data directory (default ./data; ACTIVITY_DATA_DIR)")
    _postgres_flags(parser)


def _effective(args: argparse.Namespace) -> EffectiveSettings:
    overrides: dict[str, Any] = {
        "data_dir": getattr(args, "data_dir", None),
        "clickhouse_dsn": getattr(args, "clickhouse_dsn", None),
        "clickhouse_database": getattr(args, "clickhouse_database", None),
        "postgres_dsn": getattr(args, "postgres_dsn", None),
        "listen": getattr(args, "listen", None),
        "metrics_listen": getattr(args, "metrics_listen", None),
        "http_listen": getattr(args, "http_listen", None),
        "tls_cert_file": getattr(args, "tls_cert_file", None),
        "tls_key_file": getattr(args, "tls_key_file", None),
        "log_level": getattr(args, "log_level", None),
    }
    return load_config(overrides, config_file=getattr(args, "config", None))


def _settings(args: argparse.Namespace) -> Settings:
    return _effective(args).settings


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            from collector.cli.serve import serve

            return asyncio.run(serve(_settings(args)))
        if args.command == "config":
            return print_config(_effective(args), args.format)
        if args.command == "send":
            from collector.cli.send import send

            return send(args.file, args.target, args.batch_size, args.timeout, args.attempts, args.api_key)
        if args.command == "health":
            from collector.cli.healthcheck import check

            return check(
                args.target, timeout=args.timeout, ca_file=args.ca_file, server_name=args.server_name
            )
        if args.command == "sql":
            from collector.cli.sql import run_sql

            return run_sql(_settings(args), args.query, FORMATS[args.format])
        if args.command == "report":
            from collector.cli.report import run_report

            return run_report(_settings(args), args, FORMATS[args.format])
        if args.command == "schema":
            from workers.storage.migrations import migration_statements

            settings = _settings(args)
            statements = migration_statements(settings.clickhouse_database, settings.cluster)
            # The backfills fill aggregates from existing rows: the migrations' business, not a new node's.
            print("\n\n".join(s + ";" for s in statements if not s.startswith("INSERT")))
            return 0
        if args.command == "migrate":
            from collector.cli.admin import run_migrate

            return run_migrate(_settings(args))
        if args.command == "dead-letters":
            from collector.cli.admin import run_dead_letters

            return run_dead_letters(_settings(args), args)
        if args.command in ("tenants", "keys"):
            from collector.cli.admin import run_tenants

            return run_tenants(_settings(args), args)
        if args.command == "catalog":
            from collector.cli.catalog import run_catalog

            return run_catalog(_settings(args), args)
    except ConfigError as error:
        print(f"activity-collector: configuration error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
