"""Settings: defaults, flags over ACTIVITY_* variables, and refusal of bad values naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.config import (
    SETTING_NAMES,
    ConfigError,
    Limits,
    PipelineSettings,
    Settings,
    load_settings,
    parse_host_port,
)
from workers.storage.schema import DEFAULT_SHARDING_KEY


def test_defaults_validate() -> None:
    settings = Settings()
    assert settings.validate() is settings
    assert load_settings({}, environ={}) == Settings()


def test_load_settings_without_anything_gives_the_documented_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.listen == "127.0.0.1:50051"
    assert settings.data_dir == Path("data")
    assert settings.clickhouse_dsn == ""
    assert settings.clickhouse_database == "activity"
    assert settings.limits == Limits()
    assert settings.pipeline == PipelineSettings()


def test_setting_names_are_flat_and_cover_every_group_field() -> None:
    assert "listen" in SETTING_NAMES
    assert SETTING_NAMES["max_batch_activities"][0] == "limits"
    assert SETTING_NAMES["queue_capacity"][0] == "pipeline"
    assert SETTING_NAMES["listen"][0] is None
    assert "limits" not in SETTING_NAMES
    assert "pipeline" not in SETTING_NAMES


def test_environment_variables_set_top_level_and_grouped_settings() -> None:
    settings = load_settings(
        environ={
            "ACTIVITY_LISTEN": "0.0.0.0:6000",
            "ACTIVITY_DATA_DIR": "/var/lib/activity",
            "ACTIVITY_MAX_BATCH_ACTIVITIES": "500",
            "ACTIVITY_INSERT_WORKERS": "4",
            "ACTIVITY_CLOCK_SKEW_TOLERANCE_MS": "250.5",
            "ACTIVITY_MAX_FUTURE_SKEW_S": "60",
        }
    )
    assert settings.listen == "0.0.0.0:6000"
    assert settings.data_dir == Path("/var/lib/activity")
    assert isinstance(settings.data_dir, Path)
    assert settings.limits.max_batch_activities == 500
    assert settings.pipeline.insert_workers == 4
    assert settings.clock_skew_tolerance_ms == 250.5
    assert settings.limits.max_future_skew_s == 60.0
    assert isinstance(settings.limits.max_future_skew_s, float)


def test_int_settings_accept_underscores_as_digit_separators() -> None:
    settings = load_settings(environ={"ACTIVITY_QUEUE_CAPACITY": "300_000"})
    assert settings.pipeline.queue_capacity == 300_000


def test_flags_override_environment_variables() -> None:
    settings = load_settings(
        {"listen": "127.0.0.1:7000", "max_batch_activities": 20},
        environ={"ACTIVITY_LISTEN": "127.0.0.1:6000", "ACTIVITY_MAX_BATCH_ACTIVITIES": "10"},
    )
    assert settings.listen == "127.0.0.1:7000"
    assert settings.limits.max_batch_activities == 20


def test_none_flags_leave_environment_variables_in_place() -> None:
    settings = load_settings(
        {"listen": None, "max_batch_activities": None},
        environ={"ACTIVITY_LISTEN": "127.0.0.1:6000", "ACTIVITY_MAX_BATCH_ACTIVITIES": "10"},
    )
    assert settings.listen == "127.0.0.1:6000"
    assert settings.limits.max_batch_activities == 10


def test_string_flags_are_converted_like_environment_variables() -> None:
    settings = load_settings({"insert_attempts": "7", "retry_delay_ms": "12.5"}, environ={})
    assert settings.pipeline.insert_attempts == 7
    assert settings.pipeline.retry_delay_ms == 12.5


def test_unknown_activity_variable_is_refused_and_named() -> None:
    with pytest.raises(ConfigError, match="ACTIVITY_MAX_BATCH_ACTIVITES"):
        load_settings(environ={"ACTIVITY_MAX_BATCH_ACTIVITES": "10"})


def test_unknown_flag_is_refused_and_named() -> None:
    with pytest.raises(ConfigError, match="max_batch_activites"):
        load_settings({"max_batch_activites": 10}, environ={})


def test_client_target_variable_is_allowed() -> None:
    settings = load_settings(environ={"ACTIVITY_TARGET": "localhost:50051"})
    assert settings == Settings()


def test_unrelated_variables_are_ignored() -> None:
    settings = load_settings(environ={"PATH": "/usr/bin", "HOME": "/root", "activity_listen": "x"})
    assert settings == Settings()


@pytest.mark.parametrize(
    ("variable", "value", "setting"),
    [
        ("ACTIVITY_MAX_BATCH_ACTIVITIES", "many", "max_batch_activities"),
        ("ACTIVITY_QUEUE_CAPACITY", "1e6", "queue_capacity"),
        ("ACTIVITY_INSERT_WORKERS", "2.5", "insert_workers"),
        ("ACTIVITY_FLUSH_INTERVAL_MS", "soon", "flush_interval_ms"),
        ("ACTIVITY_MAX_FUTURE_SKEW_S", "", "max_future_skew_s"),
    ],
)
def test_non_numeric_values_are_refused_and_named(variable: str, value: str, setting: str) -> None:
    with pytest.raises(ConfigError, match=f"^{setting}:"):
        load_settings(environ={variable: value})


@pytest.mark.parametrize(
    "setting",
    [
        "max_request_bytes",
        "max_batch_activities",
        "max_activity_bytes",
        "max_id_chars",
        "max_name_chars",
        "max_text_chars",
        "max_map_entries",
        "max_segments",
        "max_stream_in_flight",
        "max_future_skew_s",
        "queue_capacity",
        "enrich_workers",
        "insert_workers",
        "insert_max_rows",
        "flush_interval_ms",
        "insert_attempts",
        "retry_delay_ms",
    ],
)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_zero_or_negative_limits_are_refused_and_named(setting: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{setting}: must be greater than zero"):
        load_settings(environ={f"ACTIVITY_{setting.upper()}": value})


@pytest.mark.parametrize(
    "listen", ["localhost", "localhost:", ":50051", "host:port", "host:65536", "host:-1"]
)
def test_bad_listen_address_is_refused_and_named(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"^listen: expected HOST:PORT"):
        load_settings({"listen": listen}, environ={})


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("[::1]:50051", ("[::1]", 50051)),
        ("localhost:8080", ("localhost", 8080)),
    ],
)
def test_good_listen_addresses_parse(listen: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(listen, "listen") == expected
    assert load_settings({"listen": listen}, environ={}).listen == listen


def test_parse_host_port_names_the_setting_it_was_given() -> None:
    with pytest.raises(ConfigError, match=r"^target: expected HOST:PORT, got 'nowhere'"):
        parse_host_port("nowhere", "target")


@pytest.mark.parametrize("dsn", ["postgres://db:5432", "clickhouse://host", "localhost:8123", "chdb:/x"])
def test_bad_dsn_scheme_is_refused_and_named(dsn: str) -> None:
    with pytest.raises(ConfigError, match=r"^clickhouse_dsn:"):
        load_settings({"clickhouse_dsn": dsn}, environ={})


@pytest.mark.parametrize(
    "dsn", ["http://default:@localhost:8123", "https://user:pass@ch.example:8443", "chdb:///srv/ch"]
)
def test_good_dsn_schemes_are_accepted(dsn: str) -> None:
    settings = load_settings(environ={"ACTIVITY_CLICKHOUSE_DSN": dsn})
    assert settings.clickhouse_dsn == dsn
    assert settings.effective_clickhouse_dsn == dsn


@pytest.mark.parametrize("database", ["", "my-db", "db;drop", "a b"])
def test_bad_database_name_is_refused_and_named(database: str) -> None:
    with pytest.raises(ConfigError, match=r"^clickhouse_database:"):
        load_settings({"clickhouse_database": database}, environ={})


def test_database_name_with_underscores_is_accepted() -> None:
    assert load_settings({"clickhouse_database": "my_db_2"}, environ={}).clickhouse_database == "my_db_2"


@pytest.mark.parametrize("tenant", ["", "Shop", "-x", "a b", "x" * 64])
def test_a_default_tenant_that_is_no_tenant_name_is_refused_and_named(tenant: str) -> None:
    with pytest.raises(ConfigError, match=r"^default_tenant: 1 to 63 characters"):
        load_settings({"default_tenant": tenant}, environ={})


@pytest.mark.parametrize(("setting", "value"), [("auth_cache_ttl_s", "0"), ("auth_cache_size", "0")])
def test_auth_cache_bounds_are_refused_and_named(setting: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{setting}: must be greater than zero"):
        load_settings({setting: value}, environ={})


def test_the_client_variables_are_not_settings() -> None:
    environ = {"ACTIVITY_API_KEY": "ak_x", "ACTIVITY_TARGET": "h:1", "ACTIVITY_AUTH": "false"}
    assert load_settings(environ=environ).auth is False


@pytest.mark.parametrize("setting", ["clock_skew_tolerance_ms", "shutdown_grace_s"])
def test_negative_durations_are_refused_and_named(setting: str) -> None:
    with pytest.raises(ConfigError, match=f"^{setting}: must be a finite number, zero or more"):
        load_settings({setting: -1.0}, environ={})
    assert getattr(load_settings({setting: 0.0}, environ={}), setting) == 0.0


def test_queue_capacity_below_max_batch_activities_is_refused_and_named() -> None:
    with pytest.raises(ConfigError, match=r"^queue_capacity:.*max_batch_activities"):
        load_settings({"queue_capacity": 99, "max_batch_activities": 100}, environ={})
    settings = load_settings({"queue_capacity": 100, "max_batch_activities": 100}, environ={})
    assert settings.pipeline.queue_capacity == 100


def test_max_activity_bytes_above_max_request_bytes_is_refused_and_named() -> None:
    with pytest.raises(ConfigError, match=r"^max_activity_bytes:.*max_request_bytes"):
        load_settings({"max_activity_bytes": 2049, "max_request_bytes": 2048}, environ={})
    settings = load_settings({"max_activity_bytes": 2048, "max_request_bytes": 2048}, environ={})
    assert settings.limits.max_activity_bytes == settings.limits.max_request_bytes == 2048


def test_effective_dsn_defaults_to_the_embedded_engine_under_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": tmp_path / "data"}, environ={})
    assert settings.effective_clickhouse_dsn == f"chdb://{(tmp_path / 'data' / 'clickhouse').resolve()}"


def test_effective_dsn_of_a_relative_data_dir_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={"ACTIVITY_DATA_DIR": "rel/data"})
    dsn = settings.effective_clickhouse_dsn
    assert dsn.startswith("chdb:///")
    assert Path(dsn.removeprefix("chdb://")) == (tmp_path / "rel" / "data" / "clickhouse").resolve()


def test_control_socket_is_in_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": tmp_path}, environ={})
    assert settings.control_socket == tmp_path.resolve() / "control.sock"


@pytest.mark.parametrize(
    "setting",
    [
        "clock_skew_tolerance_ms",
        "max_future_skew_s",
        "flush_interval_ms",
        "retry_delay_ms",
        "shutdown_grace_s",
    ],
)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused_and_named(setting: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{setting}: "):
        load_settings(environ={f"ACTIVITY_{setting.upper()}": value})


def test_log_level_is_one_of_the_known_levels() -> None:
    assert load_settings(environ={"ACTIVITY_LOG_LEVEL": "debug"}).log_level == "debug"
    with pytest.raises(ConfigError, match=r"^log_level: one of debug, info, warning, error, got 'loud'"):
        load_settings({"log_level": "loud"}, environ={})


def test_cluster_settings_are_validated() -> None:
    dsn = "http://collector:secret@clickhouse-01:8123"
    settings = load_settings({"clickhouse_cluster": "activity", "clickhouse_dsn": dsn}, environ={})
    assert settings.cluster.enabled and settings.cluster.sharding_key == DEFAULT_SHARDING_KEY
    assert not load_settings({}, environ={}).cluster.enabled
    env = {
        "ACTIVITY_CLICKHOUSE_CLUSTER": "activity",
        "ACTIVITY_CLICKHOUSE_DSN": dsn,
        "ACTIVITY_CLICKHOUSE_SHARDING_KEY": "cityHash64(tenant_id, toString(id))",
    }
    assert load_settings(environ=env).cluster.sharding_key == "cityHash64(tenant_id, toString(id))"
    with pytest.raises(ConfigError, match=r"^clickhouse_cluster: needs a ClickHouse server"):
        load_settings({"clickhouse_cluster": "activity"}, environ={})
    with pytest.raises(ConfigError, match=r"^clickhouse_cluster: letters"):
        load_settings({"clickhouse_cluster": "a b", "clickhouse_dsn": dsn}, environ={})
    for bad in ("rand()", "cityHash64(received_at)", "now() % 2", "cityHash64(id); DROP TABLE x", ""):
        with pytest.raises(ConfigError, match=r"^clickhouse_sharding_key: "):
            load_settings(
                {"clickhouse_sharding_key": bad, "clickhouse_cluster": "c", "clickhouse_dsn": dsn}, environ={}
            )


@pytest.mark.parametrize("setting", ["background_niceness", "erasure_niceness"])
@pytest.mark.parametrize("value", ["-1", "20"])
def test_a_niceness_outside_0_to_19_is_refused_and_named(setting: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{setting}: must be between 0 and 19, got {value}"):
        load_settings(environ={f"ACTIVITY_{setting.upper()}": value})
    assert getattr(load_settings(environ={f"ACTIVITY_{setting.upper()}": "7"}), setting) == 7
