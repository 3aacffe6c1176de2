"""The configuration file: good and bad fixtures under tests/testdata/config, precedence of flags over
variables over the file over defaults, and the origin of every setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.config import (
    CONFIG_ENV,
    SETTING_NAMES,
    ConfigError,
    Origin,
    Settings,
    load_config,
    load_settings,
    mask_dsn,
)

ROOT = Path(__file__).resolve().parents[2]
TESTDATA = ROOT / "tests" / "testdata" / "config"


def test_good_file_sets_top_level_and_grouped_settings() -> None:
    path = TESTDATA / "good.toml"
    settings = load_settings(environ={}, config_file=path)
    assert settings.listen == "127.0.0.1:6000"
    assert settings.data_dir == Path("/srv/activity")
    assert settings.clickhouse_dsn == "http://writer:s3cret@clickhouse:8123"
    assert settings.spool is False
    assert settings.clock_skew_tolerance_ms == 250.0
    assert isinstance(settings.clock_skew_tolerance_ms, float)
    assert settings.shutdown_grace_s == 2.5
    assert settings.log_level == "warning"
    assert settings.limits.max_batch_activities == 500
    assert settings.limits.max_future_skew_s == 60.0
    assert settings.pipeline.queue_capacity == 300_000
    assert settings.pipeline.insert_workers == 4
    # What the file does not set keeps its default.
    assert settings.http_listen == Settings().http_listen
    assert settings.pipeline.insert_max_rows == Settings().pipeline.insert_max_rows


def test_empty_file_gives_the_defaults() -> None:
    assert load_settings(environ={}, config_file=TESTDATA / "empty.toml") == Settings()


def test_the_example_file_is_valid(tmp_path: Path) -> None:
    effective = load_config(environ={}, config_file=ROOT / "examples" / "collector.toml")
    assert effective.settings.listen == "0.0.0.0:50051"
    assert effective.settings.pipeline.queue_capacity == 500_000
    assert effective.origin("queue_capacity") == Origin("file", str(ROOT / "examples" / "collector.toml"))


def test_the_file_is_named_by_the_environment_when_no_flag_names_it() -> None:
    settings = load_settings(environ={CONFIG_ENV: str(TESTDATA / "good.toml")})
    assert settings.listen == "127.0.0.1:6000"
    # An explicit file wins over the variable's.
    settings = load_settings(
        environ={CONFIG_ENV: str(TESTDATA / "good.toml")}, config_file=TESTDATA / "empty.toml"
    )
    assert settings.listen == Settings().listen


def test_an_empty_config_variable_means_no_file() -> None:
    assert load_settings(environ={CONFIG_ENV: ""}) == Settings()


def test_flags_override_variables_which_override_the_file() -> None:
    effective = load_config(
        {"listen": "127.0.0.1:8000", "max_batch_activities": None},
        environ={"ACTIVITY_LISTEN": "127.0.0.1:7000", "ACTIVITY_MAX_BATCH_ACTIVITIES": "600"},
        config_file=TESTDATA / "good.toml",
    )
    settings = effective.settings
    assert settings.listen == "127.0.0.1:8000"
    assert settings.limits.max_batch_activities == 600
    assert settings.pipeline.insert_workers == 4
    assert settings.http_listen == Settings().http_listen
    assert effective.origin("listen") == Origin("flag", "--listen")
    assert effective.origin("max_batch_activities") == Origin("env", "ACTIVITY_MAX_BATCH_ACTIVITIES")
    assert effective.origin("insert_workers") == Origin("file", str(TESTDATA / "good.toml"))
    assert effective.origin("http_listen") == Origin("default")


def test_every_setting_has_a_value_and_an_origin() -> None:
    effective = load_config(environ={}, config_file=TESTDATA / "good.toml")
    for name in SETTING_NAMES:
        effective.value(name)
        assert effective.origin(name).source in ("default", "file")


BAD_FILES = [
    ("bad-unknown-key.toml", r"^max_batch_activites: unknown setting in .*bad-unknown-key\.toml"),
    (
        "bad-unknown-key-in-table.toml",
        r"^limits\.max_batch_activites: unknown setting in .*bad-unknown-key-in-table\.toml: "
        "did you mean max_batch_activities\\?",
    ),
    (
        "bad-grouped-key-at-top-level.toml",
        r"^queue_capacity: unknown setting in .*\.toml: queue_capacity belongs at the \[pipeline\] table",
    ),
    (
        "bad-top-level-key-in-table.toml",
        r"^pipeline\.listen: unknown setting in .*\.toml: listen belongs at the top level",
    ),
    ("bad-unknown-table.toml", r"^storage: unknown setting in .*bad-unknown-table\.toml"),
    (
        "bad-type.toml",
        r"^insert_workers: expected an integer, got str 'four' \(in .*bad-type\.toml\)",
    ),
    ("bad-bool.toml", r"^spool: expected a boolean \(true or false\), got str 'yes' \(in .*\.toml\)"),
    ("bad-float-for-int.toml", r"^max_batch_activities: expected an integer, got float 2\.5"),
    (
        "bad-value.toml",
        r"^max_batch_activities: must be greater than zero, got 0 \(set in .*bad-value\.toml\)",
    ),
    ("bad-listen.toml", r"^listen: expected HOST:PORT, got 'localhost' \(set in .*bad-listen\.toml\)"),
    (
        "bad-cross-setting.toml",
        r"^queue_capacity: must be at least max_batch_activities \(100\), got 10 \(set in .*\.toml\)",
    ),
    ("bad-group-not-a-table.toml", r"^limits: expected a table \(\[limits\]\), got 5"),
    ("bad-log-level.toml", r"^log_level: one of debug, .*, got 'verbose' \(set in .*bad-log-level\.toml\)"),
    ("bad-syntax.toml", r"^config: .*bad-syntax\.toml is not valid TOML"),
    ("bad-dsn.toml", r"^clickhouse_dsn: must start with .* \(set in .*bad-dsn\.toml\)"),
]


@pytest.mark.parametrize(("fixture", "message"), BAD_FILES)
def test_bad_files_are_refused_naming_the_setting_and_the_file(fixture: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={}, config_file=TESTDATA / fixture)


def test_every_bad_fixture_is_tested() -> None:
    assert sorted(fixture for fixture, _ in BAD_FILES) == sorted(p.name for p in TESTDATA.glob("bad-*.toml"))


def test_a_refused_dsn_does_not_show_its_password() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(environ={}, config_file=TESTDATA / "bad-dsn.toml")
    assert "s3cret" not in str(refused.value)


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match=r"^config: cannot read .*nowhere\.toml"):
        load_settings(environ={}, config_file=missing)


def test_environment_errors_say_which_variable_set_the_value() -> None:
    with pytest.raises(ConfigError, match=r"^queue_capacity: .* \(set by ACTIVITY_QUEUE_CAPACITY\)$"):
        load_settings(environ={"ACTIVITY_QUEUE_CAPACITY": "10"})


def test_a_bad_file_value_fixed_by_a_variable_is_no_error() -> None:
    settings = load_settings(
        environ={"ACTIVITY_MAX_BATCH_ACTIVITIES": "10"}, config_file=TESTDATA / "bad-value.toml"
    )
    assert settings.limits.max_batch_activities == 10


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("http://writer:s3cret@clickhouse:8123", "http://writer:***@clickhouse:8123"),
        ("https://writer:s3cret@ch.example:8443/db", "https://writer:***@ch.example:8443/db"),
        ("http://default:@localhost:8123", "http://default:***@localhost:8123"),
        ("http://reader@localhost:8123", "http://reader@localhost:8123"),
        ("chdb:///srv/ch", "chdb:///srv/ch"),
        (
            "postgresql://app:p%40ss@db:5432/activity?sslmode=require",
            "postgresql://app:***@db:5432/activity?sslmode=require",
        ),
        (
            "postgresql://db/activity?user=app&password=hunter2",
            "postgresql://db/activity?user=app&password=***",
        ),
        ("postgres://app:x@db?password=y", "postgres://app:***@db?password=***"),
        ("not a dsn", "***"),
    ],
)
def test_mask_dsn_hides_passwords_only(dsn: str, masked: str) -> None:
    assert mask_dsn(dsn) == masked
