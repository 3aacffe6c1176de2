"""The collector's configuration: one typed, validated object, read from command-line flags over
environment variables over a TOML configuration file over the defaults.

Every setting has a documented default (see ``docs/configuration.md``); a bad value stops start-up with a
message that names the setting, and where it was set. Environment variables are named
``ACTIVITY_<SETTING>`` in upper case; an unknown ``ACTIVITY_*`` variable, or an unknown key in the file,
is refused, so that a misspelt setting never goes unnoticed. The file (``--config FILE`` or
``ACTIVITY_CONFIG``) holds the service settings at its top level and the grouped ones in
``[limits]``, ``[pipeline]`` and ``[processors]`` tables, named as everywhere else.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from core.dsn import mask_dsn
from core.limits import ConfigError as ConfigError
from core.limits import Limits
from workers.commit.settings import PipelineSettings
from workers.processors import ProcessorSettings
from workers.storage.schema import DEFAULT_SHARDING_KEY, Cluster

ENV_PREFIX = "ACTIVITY_"
CONFIG_ENV = "ACTIVITY_CONFIG"
"""The variable naming the configuration file, when no --config flag does."""

# Variables read by the command-line client, naming the file, or about the build (ACTIVITY_PURE_PYTHON
# forces the Python paths, ACTIVITY_NO_COMPILER tells the tests no compiler was there) rather than
# settings themselves.
CLIENT_ENV = frozenset(
    {"ACTIVITY_TARGET", "ACTIVITY_API_KEY", CONFIG_ENV, "ACTIVITY_PURE_PYTHON", "ACTIVITY_NO_COMPILER"}
)

SECRET: dict[str, Any] = {"secret": True}
"""Field metadata of settings that may carry a password: shown masked by `activity-collector config`."""


TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
TENANT_NAME_RULE = (
    "1 to 63 characters: lower-case letters, digits, '.', '_' and '-', starting with a letter or digit"
)


LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Settings:
    """Everything `activity-collector serve` needs. Defaults run the product on embedded engines."""

    listen: str = "127.0.0.1:50051"
    """Address of the gRPC service, HOST:PORT."""
    metrics_listen: str = "127.0.0.1:9464"
    """Address of the Prometheus metrics endpoint (`/metrics`), HOST:PORT. Empty: no metrics endpoint."""
    http_listen: str = "127.0.0.1:8080"
    """Address of the HTTP/JSON door (`POST /v1/activities`), HOST:PORT. Empty: no HTTP door."""
    http_cors_origins: str = ""
    """Origins whose browser pages may call the HTTP door, comma-separated (`https://shop.example`);
    `*` for any. Empty: no cross-origin calls."""
    tls_cert_file: str = ""
    """PEM certificate chain for TLS on the gRPC port and the HTTP door. Empty (with tls_key_file):
    plain text."""
    tls_key_file: str = ""
    """PEM private key of tls_cert_file."""
    data_dir: Path = Path("data")
    """Directory for local data: the embedded ClickHouse engine's files and the control socket."""
    clickhouse_dsn: str = field(default="", metadata=SECRET)
    """ClickHouse to store into: http(s)://user:pass@host:8123 for a server, chdb:///path for the
    embedded engine. Empty: the embedded engine under <data_dir>/clickhouse."""
    clickhouse_database: str = "activity"
    """ClickHouse database holding the product's tables; created when missing."""
    clickhouse_cluster: str = ""
    """Name of the ClickHouse cluster (its `remote_servers` entry) to create the tables on: replicated
    local tables on every node, Distributed tables in front. Empty: one ClickHouse node. Needs a server
    DSN; see docs/scaling.md."""
    clickhouse_sharding_key: str = DEFAULT_SHARDING_KEY
    """With clickhouse_cluster: the expression over `activities` columns that picks each activity's
    shard. Used when the Distributed table is created; it must give every copy of an activity the same
    shard (read only columns the client sends, never received_at)."""
    postgres_dsn: str = field(default="", metadata=SECRET)
    """PostgreSQL for the dead-letter store: postgresql://user:pass@host:5432/db for a server. Empty: an
    embedded PostgreSQL with its data under <data_dir>/postgres, started with the collector and stopped
    when the last process using it exits."""
    spool: bool = True
    """Acknowledge activities once written and fsynced to the local spool (<data_dir>/spool) and insert
    them into ClickHouse behind; a ClickHouse outage then only grows the spool. Off: acknowledge once
    committed to ClickHouse."""
    auth: bool = True
    """Require an API key (`authorization: Bearer <key>` metadata) on every call; the key decides the
    tenant. Off: no key is asked for and every activity belongs to default_tenant."""
    default_tenant: str = "default"
    """With auth on, the tenant (and key) a collector creates when PostgreSQL holds no tenant at all; with
    auth off, the tenant of every activity."""
    auth_cache_ttl_s: float = 5.0
    """How long a key's check (accepted, revoked, unknown) is reused before PostgreSQL is asked again: a
    revocation takes effect on every collector within this time."""
    auth_cache_size: int = 10_000
    """Most API keys whose checks are cached, least recently used dropped first."""
    read_concurrency: int = 2
    """Most ProfileService calls answered at once (each takes a thread of the store's reads); more
    wait in line."""
    read_queue: int = 32
    """Most ProfileService calls waiting in line; past it a call is refused with RESOURCE_EXHAUSTED and a
    retry delay, so that reads never starve ingest."""
    read_model: bool = True
    """Answer ProfileService from memory: the people asked about, held with their activities and kept
    current by tailing ClickHouse, and the tenants' recommendation lists. Off: every call reads ClickHouse."""
    read_model_max_activities: int = 500_000
    """Most activities the read model holds (about 400 bytes each); the least recently asked-about people
    are dropped first."""
    read_model_tail_interval_s: float = 0.5
    """How often the read model looks for rows other collectors wrote (at once after this collector's own
    inserts)."""
    read_model_lists_ttl_s: float = 60.0
    """How old the also_viewed, also_bought and for_you lists may get before they are computed again."""
    read_model_trending_ttl_s: float = 5.0
    """How old the trending list may get before it is computed again."""
    quota_rate: float = 0.0
    """Default quota of every tenant, in activities per second (a tenant's own, `activity-collector
    quotas set`, replaces it): a request past it is refused with RESOURCE_EXHAUSTED and a retry delay.
    0: no quota."""
    quota_burst: float = 0.0
    """Most activities a tenant may send at once under the default quota (the bucket's size); 0: one
    second of quota_rate."""
    quota_refusal_hold_ms: float = 250.0
    """Longest wait before a call refused over its tenant's quota is answered (the retry delay it is
    given, up to this): a flooding client's calls in flight then wait instead of spinning, and its call
    rate, which is what its neighbours pay for, falls. 0: refusals are answered at once."""
    quota_refusal_hold_max: int = 1000
    """Most refused calls held at once, across tenants (each keeps its request in memory, at most
    max_request_bytes); past it a refusal is answered at once."""
    enrichment: bool = True
    """Enrich activities from PostgreSQL: catalogue columns from the tenant's targets, resolved_user_id
    from identity links (and record new links). Off: those columns stay empty and PostgreSQL is never
    asked. User agents are parsed either way."""
    enrichment_cache_size: int = 100_000
    """Most entries of each enrichment cache (user agents, targets, identity links), the one set longest
    ago dropped first."""
    enrichment_cache_ttl_s: float = 60.0
    """How long a looked-up target or identity link (found or not) is reused before PostgreSQL is asked
    again: a catalogue import, or a link recorded by another collector, shows within this time."""
    enrichment_timeout_ms: float = 250.0
    """Longest wait for one batch's PostgreSQL lookups; past it (or on an error) the batch is stored
    without what was missing, counted as enrichment gaps, and PostgreSQL is left alone for a while."""
    clock_skew_tolerance_ms: float = 1000.0
    """Differences between the server's receive time and the client's sent_at up to this size are taken
    for network delay and not corrected; larger ones are the client's clock skew and shift occurred_at."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM or SIGINT, how long in-flight requests get to finish before they are cancelled."""
    background_niceness: int = 10
    """Scheduling niceness (0-19) of the process's threads off the request path: the embedded ClickHouse
    engine's inserts and merges above all, so that they take the CPU the request path leaves (Linux;
    see workers/priority.py). 0: every thread keeps the process's priority."""
    log_level: str = "info"
    """Least severe log events written: debug, info, warning or error."""
    health_interval_s: float = 5.0
    """How often the store's health is checked for the gRPC health service, in seconds; also the longest
    a probe query may take before the store counts as unreachable."""
    aggregates_refresh_s: float = 10.0
    """How often the aggregates' rollups take in the days that received activities, in seconds; 0: never
    (the aggregates then read those days from the activities, exact but slower)."""
    erasure_niceness: int = 19
    """Scheduling niceness (0-19) of the ClickHouse engine's threads while they run an erasure's queries
    (`os_thread_priority`; Linux, and a server needs CAP_SYS_NICE): at 19 an erasure takes the CPU that
    ingest and the engine's inserts leave, and on a saturated machine proceeds slowly. 0: the threads'
    own priority."""
    erasure_stale_s: float = 30.0
    """A collector whose drain mark (its heartbeat in PostgreSQL) is older than this, in seconds, counts
    as stopped: erasures stop waiting for it (docs/privacy.md). Longer than any insert takes."""
    limits: Limits = field(default_factory=Limits)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    processors: ProcessorSettings = field(default_factory=ProcessorSettings)

    @property
    def effective_clickhouse_dsn(self) -> str:
        if self.clickhouse_dsn:
            return self.clickhouse_dsn
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def cluster(self) -> Cluster:
        return Cluster(self.clickhouse_cluster, self.clickhouse_sharding_key)

    @property
    def tls(self) -> tuple[bytes, bytes] | None:
        """(certificate chain, private key) in PEM, read from their files; None without TLS."""
        if not self.tls_cert_file:
            return None
        return Path(self.tls_cert_file).read_bytes(), Path(self.tls_key_file).read_bytes()

    @property
    def spool_dir(self) -> Path:
        return self.data_dir.resolve() / "spool"

    @property
    def postgres_dir(self) -> Path:
        """Data of the embedded PostgreSQL, used when postgres_dsn is empty."""
        return self.data_dir.resolve() / "postgres"

    @property
    def control_socket(self) -> Path:
        """Unix socket on which a running server answers `activity-collector sql` for its data directory."""
        return self.data_dir.resolve() / "control.sock"

    def validate(self) -> Settings:
        parse_host_port(self.listen, "listen")
        if self.metrics_listen:
            parse_host_port(self.metrics_listen, "metrics_listen")
        if self.http_listen:
            parse_host_port(self.http_listen, "http_listen")
        for origin in filter(None, (o.strip() for o in self.http_cors_origins.split(","))):
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(
                    "http_cors_origins: each origin must be * or start with http:// or https://, "
                    f"got {origin!r}"
                )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            missing = "tls_key_file" if self.tls_cert_file else "tls_cert_file"
            raise ConfigError(f"{missing}: required when the other of tls_cert_file and tls_key_file is set")
        for name in ("tls_cert_file", "tls_key_file"):
            path = getattr(self, name)
            if path and not os.access(path, os.R_OK):
                raise ConfigError(f"{name}: cannot read {path!r}")
        if not self.clickhouse_database.replace("_", "").isalnum():
            raise ConfigError(
                f"clickhouse_database: letters, digits and '_' only, got {self.clickhouse_database!r}"
            )
        dsn = self.clickhouse_dsn
        if dsn and not dsn.startswith(("http://", "https://", "chdb://")):
            raise ConfigError(
                f"clickhouse_dsn: must start with http://, https:// or chdb://, got {mask_dsn(dsn)!r}"
            )
        if self.clickhouse_cluster:
            if not CLUSTER_NAME.match(self.clickhouse_cluster):
                raise ConfigError(
                    f"clickhouse_cluster: letters, digits, '_' and '-' only, got {self.clickhouse_cluster!r}"
                )
            if not dsn.startswith(("http://", "https://")):
                raise ConfigError(
                    "clickhouse_cluster: needs a ClickHouse server (clickhouse_dsn http:// or https://); "
                    "the embedded engine is one node"
                )
        key = self.clickhouse_sharding_key
        if not key.strip() or ";" in key or "`" in key or key.count("(") != key.count(")"):
            raise ConfigError(f"clickhouse_sharding_key: expected one ClickHouse expression, got {key!r}")
        if "received_at" in key or re.search(r"\b(rand\w*|generateUUID\w*|now\w*)\s*\(", key, re.IGNORECASE):
            raise ConfigError(
                "clickhouse_sharding_key: must give every copy of an activity the same shard; "
                f"received_at and random values differ between copies, got {key!r}"
            )
        pg = self.postgres_dsn
        if pg and not pg.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                "postgres_dsn: must start with postgresql:// or postgres://, "
                f"got {pg.partition('://')[0] + '://...' if '://' in pg else 'a value without a scheme'}"
            )
        if not TENANT_NAME.match(self.default_tenant):
            raise ConfigError(f"default_tenant: {TENANT_NAME_RULE}; got {self.default_tenant!r}")
        if not 0 < self.auth_cache_ttl_s < math.inf:
            raise ConfigError(f"auth_cache_ttl_s: must be greater than zero, got {self.auth_cache_ttl_s}")
        if self.auth_cache_size <= 0:
            raise ConfigError(f"auth_cache_size: must be greater than zero, got {self.auth_cache_size}")
        if self.read_concurrency <= 0:
            raise ConfigError(f"read_concurrency: must be greater than zero, got {self.read_concurrency}")
        if self.read_queue < 0:
            raise ConfigError(f"read_queue: must be zero or more, got {self.read_queue}")
        if self.read_model_max_activities <= 0:
            raise ConfigError(
                f"read_model_max_activities: must be greater than zero, got {self.read_model_max_activities}"
            )
        for name in ("read_model_tail_interval_s", "read_model_lists_ttl_s", "read_model_trending_ttl_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"{name}: must be greater than zero, got {getattr(self, name)}")
        for name in ("quota_rate", "quota_burst", "quota_refusal_hold_ms"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ConfigError(f"{name}: must be a finite number, zero or more, got {getattr(self, name)}")
        if self.quota_refusal_hold_max < 0:
            raise ConfigError(
                f"quota_refusal_hold_max: must be zero or more, got {self.quota_refusal_hold_max}"
            )
        if self.enrichment_cache_size <= 0:
            raise ConfigError(
                f"enrichment_cache_size: must be greater than zero, got {self.enrichment_cache_size}"
            )
        for name in ("enrichment_cache_ttl_s", "enrichment_timeout_ms"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise ConfigError(f"{name}: must be a finite number greater than zero, got {value}")
        if not 0 <= self.clock_skew_tolerance_ms < math.inf:
            raise ConfigError(
                "clock_skew_tolerance_ms: must be a finite number, zero or more, "
                f"got {self.clock_skew_tolerance_ms}"
            )
        if not 0 <= self.shutdown_grace_s < math.inf:
            raise ConfigError(
                f"shutdown_grace_s: must be a finite number, zero or more, got {self.shutdown_grace_s}"
            )
        for name in ("background_niceness", "erasure_niceness"):
            if not 0 <= getattr(self, name) <= 19:
                raise ConfigError(f"{name}: must be between 0 and 19, got {getattr(self, name)}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level: one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if not 0 <= self.aggregates_refresh_s < math.inf:
            raise ConfigError(
                f"aggregates_refresh_s: must be a finite number, zero or more, got "
                f"{self.aggregates_refresh_s}"
            )
        if not 0 < self.erasure_stale_s < math.inf:
            raise ConfigError(
                f"erasure_stale_s: must be a finite number greater than zero, got {self.erasure_stale_s}"
            )
        if not 0 < self.health_interval_s < math.inf:
            raise ConfigError(
                f"health_interval_s: must be a finite number greater than zero, got {self.health_interval_s}"
            )
        self.limits.validate()
        self.pipeline.validate()
        self.processors.validate()
        if self.pipeline.queue_capacity < self.limits.max_batch_activities:
            raise ConfigError(
                "queue_capacity: must be at least max_batch_activities "
                f"({self.limits.max_batch_activities}), "
                f"got {self.pipeline.queue_capacity}"
            )
        return self


def parse_host_port(value: str, setting: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{setting}: expected HOST:PORT, got {value!r}")
    return host, int(port)


GROUP_TYPES: dict[str, type[Any]] = {
    "limits": Limits,
    "pipeline": PipelineSettings,
    "processors": ProcessorSettings,
}
"""The settings held in a table of their own in the file (`[limits]`, ...), by table name."""


def _setting_names() -> dict[str, tuple[str | None, dataclasses.Field[Any]]]:
    """Flat setting name -> (group attribute or None, field). Names are unique across groups."""
    names: dict[str, tuple[str | None, dataclasses.Field[Any]]] = {}
    for f in fields(Settings):
        group_type = GROUP_TYPES.get(f.name)
        if group_type is not None:
            for sub in fields(group_type):
                names[sub.name] = (f.name, sub)
        else:
            names[f.name] = (None, f)
    return names


SETTING_NAMES = _setting_names()


GROUPS = tuple(GROUP_TYPES)

Source = Literal["default", "file", "env", "flag"]


@dataclass(frozen=True)
class Origin:
    """Where a setting's value came from: `where` is the file, the variable or the flag."""

    source: Source
    where: str = ""

    def __str__(self) -> str:
        if self.source == "file":
            return f"set in {self.where}"
        if self.source in ("env", "flag"):
            return f"set by {self.where}"
        return "default"


DEFAULT = Origin("default")


@dataclass(frozen=True)
class EffectiveSettings:
    """Validated settings, and where each of them came from."""

    settings: Settings
    origins: Mapping[str, Origin]

    def value(self, name: str) -> Any:
        group, _ = SETTING_NAMES[name]
        owner = getattr(self.settings, group) if group else self.settings
        return getattr(owner, name)

    def shown(self, name: str) -> Any:
        """The value as it may be printed: passwords in DSNs masked, paths as text."""
        value = self.value(name)
        if SETTING_NAMES[name][1].metadata.get("secret") and value:
            return mask_dsn(str(value))
        return str(value) if isinstance(value, Path) else value

    def origin(self, name: str) -> Origin:
        return self.origins.get(name, DEFAULT)


def _kind(f: dataclasses.Field[Any]) -> str:
    return f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")


def _convert(name: str, f: dataclasses.Field[Any], raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    kind = _kind(f)
    try:
        if kind == "int":
            return int(raw.replace("_", ""))
        if kind == "float":
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
            return value
        if kind == "Path":
            return Path(raw)
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
    except ValueError:
        expected = "boolean (true or false)" if kind == "bool" else kind
        raise ConfigError(f"{name}: expected a {expected}, got {raw!r}") from None
    return raw


_TOML_KINDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean (true or false)",
    "str": "a string",
    "Path": "a string (a path)",
}


def _from_toml(name: str, f: dataclasses.Field[Any], value: Any, path: Path) -> Any:
    """A value of the file, typed as TOML types it; a value of another type is refused, not converted."""
    kind = _kind(f)
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "Path": isinstance(value, str),
    }.get(kind, False)
    if not ok:
        got = type(value).__name__
        shown = "a table" if isinstance(value, dict) else f"{got} {value!r}"
        raise ConfigError(f"{name}: expected {_TOML_KINDS.get(kind, kind)}, got {shown} (in {path})")
    if kind == "float":
        if not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number, got {value!r} (in {path})")
        return float(value)
    return Path(value) if kind == "Path" else value


def _unknown(key: str, table: str | None, path: Path) -> ConfigError:
    shown = f"{table}.{key}" if table else key
    entry = SETTING_NAMES.get(key)
    if entry is not None:
        place = f"the [{entry[0]}] table" if entry[0] else "the top level, before any table"
        hint = f": {key} belongs at {place}"
    else:
        candidates = [n for n, (g, _) in SETTING_NAMES.items() if g == table] + (
            [] if table else list(GROUPS)
        )
        close = difflib.get_close_matches(key, candidates, n=1)
        hint = f": did you mean {close[0]}?" if close else ""
    return ConfigError(f"{shown}: unknown setting in {path}{hint}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a TOML configuration file, typed; unknown keys and ill-typed values refused,
    naming the key and the file."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"config: cannot read {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config: {path} is not valid TOML: {error}") from None
    values: dict[str, Any] = {}
    for key, value in document.items():
        if key in GROUPS:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a table ([{key}]), got {value!r} (in {path})")
            for name, item in value.items():
                entry = SETTING_NAMES.get(name)
                if entry is None or entry[0] != key:
                    raise _unknown(name, key, path)
                values[name] = _from_toml(name, entry[1], item, path)
            continue
        entry = SETTING_NAMES.get(key)
        if entry is None or entry[0] is not None:
            raise _unknown(key, None, path)
        values[key] = _from_toml(key, entry[1], value, path)
    return values


def load_config(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> EffectiveSettings:
    """Validated settings and their origins: `overrides` (from flags; None values ignored) over
    ACTIVITY_* variables over the file (`config_file`, else ACTIVITY_CONFIG; none when both are unset or
    empty) over the defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origins: dict[str, Origin] = {}
    path = config_file if config_file is not None else environ.get(CONFIG_ENV)
    if path:
        for name, value in read_config_file(path).items():
            values[name] = value
            origins[name] = Origin("file", str(path))
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key in CLIENT_ENV:
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in SETTING_NAMES:
            raise ConfigError(f"{key}: unknown setting (known: {', '.join(sorted(SETTING_NAMES))})")
        values[name] = raw
        origins[name] = Origin("env", key)
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in SETTING_NAMES:
            raise ConfigError(f"{name}: unknown setting")
        values[name] = value
        origins[name] = Origin("flag", "--" + name.replace("_", "-"))

    try:
        top: dict[str, Any] = {}
        groups: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
        for name, raw in values.items():
            group, f = SETTING_NAMES[name]
            value = _convert(name, f, raw)
            (groups[group] if group else top)[name] = value
        grouped = {group: GROUP_TYPES[group](**values) for group, values in groups.items()}
        settings = Settings(**top, **grouped).validate()
    except ConfigError as error:
        # The messages start with the setting's name; say where its value came from.
        origin = origins.get(str(error).partition(":")[0])
        if origin is None:
            raise
        raise ConfigError(f"{error} ({origin})") from None
    return EffectiveSettings(settings, origins)


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Validated settings: flags over ACTIVITY_* variables over the configuration file over defaults."""
    return load_config(overrides, environ, config_file).settings
