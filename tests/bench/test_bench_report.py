"""The benchmark's choice of servers, its summaries and its report (`bench/`), on results documents
built here: running the benchmark itself takes minutes and two idle cores, so it is not part of the
suite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.cli import choose_targets, finish, main
from bench.report import fmt, render
from bench.runner import plans_in_force
from bench.tracking_plan import RULES_PER_ACTION, count_rules, ten_rule_plan
from bench.workload import ACTIONS, make_activities
from workers.processors.plan import parse_plan


def _run(acked: float, committed: float | None = None) -> dict[str, Any]:
    figures: dict[str, Any] = {"acked_per_s": acked, "latency_p50_ms": 10.0, "latency_p99_ms": 20.0}
    if committed is not None:
        figures["committed_rows_per_s"] = committed
    return {"figures": figures, "check_ok": True, "problems": []}


def _results(targets: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "version": 1,
        "meta": {"started": "2026-11-29T00:00:00+0000", "commit": "abc", "cpus": 2},
        "config": {"runs": 3, "warmup_s": 2, "duration_s": 6, "insert_rows": 50_000},
        "scenarios": {
            "batch-500": {
                "description": "TrackActivities, 500 activities per call",
                "targets": {name: {"runs": runs} for name, runs in targets.items()},
            }
        },
        "storage": {"runs": []},
        "errors": [],
    }


def test_the_collector_runs_with_the_spool_on_and_off_by_default() -> None:
    assert choose_targets("both", transport=True) == ["collector", "collector-nospool", "transport"]
    assert choose_targets("on", transport=True) == ["collector", "transport"]
    assert choose_targets("off", transport=False) == ["collector-nospool"]


def test_the_spool_is_not_chosen_through_server_settings() -> None:
    with pytest.raises(SystemExit, match="--spool"):
        main(["--server-env", "spool=false", "--quick"])


def test_each_collector_run_gets_its_ratio_to_the_same_transport_ceiling() -> None:
    results = _results(
        {
            "collector": [_run(100_000, 80_000), _run(120_000, 90_000), _run(110_000, 85_000)],
            "collector-nospool": [_run(20_000, 20_000), _run(30_000, 29_000), _run(25_000, 24_000)],
            "transport": [_run(500_000), _run(400_000), _run(450_000)],
        }
    )
    finish(results)
    scenario = results["scenarios"]["batch-500"]
    assert scenario["ratios"]["collector_vs_transport"] == pytest.approx(110_000 / 450_000)
    assert scenario["ratios"]["collector_nospool_vs_transport"] == pytest.approx(25_000 / 450_000)
    assert scenario["targets"]["collector-nospool"]["summary"]["acked_per_s"] == {
        "median": 25_000,
        "min": 20_000,
        "max": 30_000,
        "n": 3,
    }
    assert results["ok"]

    report = render(results)
    summary_rows = [line.split() for line in report.splitlines() if line.startswith("batch-500  ")]
    assert [(row[1], row[2], row[3]) for row in summary_rows] == [
        ("on", "110.0k", "85.0k"),
        ("off", "25.0k", "24.0k"),
    ]
    assert "collector (serve, spool on)" in report and "collector (serve, spool off)" in report
    assert "batch-500, collector with the spool off: / transport ceiling = 0.056" in report


def test_a_failed_check_of_either_collector_run_fails_the_benchmark() -> None:
    failed = _run(25_000, 24_000)
    failed["check_ok"] = False
    failed["problems"] = ["rows in ClickHouse: 99 of 100 acknowledged"]
    results = _results({"collector": [_run(100_000, 80_000)], "collector-nospool": [failed]})
    finish(results)
    assert not results["ok"]
    report = render(results)
    assert "collector-nospool: run 1: rows in ClickHouse: 99 of 100 acknowledged" in report
    assert report.endswith("SOME CHECKS FAILED (see above)")


def test_a_reading_of_zero_within_rounding_shows_as_zero() -> None:
    assert fmt(-0.001, 2) == "0.00"
    assert fmt(-0.02, 2) == "-0.02"
    assert fmt(123_456) == "123.5k"


def test_the_group_commit_baseline_is_chosen_on_request_and_gets_its_ratios() -> None:
    assert choose_targets("on", transport=True, commit_baseline=True) == [
        "collector",
        "transport",
        "transport-commit",
    ]
    results = _results(
        {
            "collector": [_run(1_000), _run(1_200), _run(1_100)],
            "transport": [_run(4_000), _run(4_000), _run(4_000)],
            "transport-commit": [_run(3_000), _run(2_800), _run(2_900)],
        }
    )
    finish(results)
    ratios = results["scenarios"]["batch-500"]["ratios"]
    assert ratios["collector_vs_transport"] == pytest.approx(1_100 / 4_000)
    assert ratios["collector_vs_transport_commit"] == pytest.approx(1_100 / 2_900)
    assert ratios["transport_commit_vs_transport"] == pytest.approx(2_900 / 4_000)
    report = render(results)
    assert "no-op + group-commit hop" in report
    assert "/ no-op with a group-commit hop = 0.379" in report
    assert "batch-500, no-op server with a group-commit hop: / transport ceiling = 0.725" in report


def test_the_tracking_plan_target_runs_only_on_request_and_gets_its_ratio_to_the_collector() -> None:
    assert "collector-plan" not in choose_targets("both", transport=True)
    assert choose_targets("both", transport=True, with_plan=True) == [
        "collector",
        "collector-nospool",
        "collector-plan",
        "transport",
    ]
    assert choose_targets("on", transport=False, with_plan=True) == ["collector", "collector-plan"]
    with pytest.raises(SystemExit, match="--spool on or both"):
        main(["--with-plan", "--spool", "off", "--quick"])

    def run(acked: float, cpu: float) -> dict[str, Any]:
        record = _run(acked)
        record["figures"]["server_cpu_us_per_activity"] = cpu
        return record

    results = _results(
        {
            "collector": [run(100_000, 14.0), run(110_000, 13.0), run(90_000, 15.0)],
            "collector-plan": [run(95_000, 15.0), run(85_000, 16.0), run(99_000, 14.5)],
            "transport": [run(400_000, 2.0)],
        }
    )
    results["config"]["plan"] = "built-in, 10 rules per action"
    finish(results)
    ratios = results["scenarios"]["batch-500"]["ratios"]
    assert ratios["collector_plan_vs_collector"] == pytest.approx(95_000 / 100_000)
    assert ratios["collector_plan_cpu_vs_collector"] == pytest.approx(15.0 / 14.0)
    assert ratios["collector_plan_vs_transport"] == pytest.approx(95_000 / 400_000)
    assert results["ok"]
    report = render(results)
    summary_rows = [line.split() for line in report.splitlines() if line.startswith("batch-500  ")]
    assert [(row[1], row[2]) for row in summary_rows] == [("on", "100.0k"), ("on+plan", "95.0k")]
    assert "collector + tracking plan" in report
    assert "batch-500, collector with the tracking plan (spool on): / transport ceiling = 0.237" in report
    assert "tracking plan (built-in, 10 rules per action): collector-plan / collector" in report
    assert "  batch-500: activities/s acknowledged 0.950, server CPU per activity 1.071" in report


def test_a_plan_file_the_collector_would_refuse_stops_the_benchmark_before_any_run(tmp_path: Path) -> None:
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps({"actions": {"view": {"required": ["metadata.nope"]}}}), encoding="utf-8")
    with pytest.raises(SystemExit, match=r"--plan .*actions\.view\.required\[0\]"):
        main(["--plan", str(bad), "--quick"])


def test_the_built_in_plan_has_ten_rules_on_every_action_and_the_workload_satisfies_them() -> None:
    document = ten_rule_plan()
    plan = parse_plan(document)
    assert set(plan.actions) == {action for action, _ in ACTIONS}
    assert {count_rules(rules) for rules in document["actions"].values()} == {RULES_PER_ACTION} == {10}
    activities = make_activities(5_000, seed=7)
    # Every action, the old SDK's spellings and the rules on fields only some carry are exercised.
    assert {a.action for a in activities} >= {"view", "purchase", "Add-To-Cart", "Remove From Cart"}
    assert any(a.metadata.HasField("quantity") for a in activities)
    assert [(a.action, plan.violations(a)) for a in activities if plan.violations(a)] == []
    # And a plan it checks: an activity that breaks a rule is caught.
    broken = activities[0]
    broken.user.session_id = "not-hex"
    assert [v.rule for v in plan.violations(broken)] == ["pattern:user.session_id"]


def test_the_plans_in_force_are_read_from_the_collectors_metrics_page() -> None:
    page = (
        "# HELP activity_collector_tracking_plans Tenants with a tracking plan in force on this collector.\n"
        "# TYPE activity_collector_tracking_plans gauge\n"
        "activity_collector_tracking_plans 1.0\n"
        "activity_collector_tracking_plans_other 7.0\n"
    )
    assert plans_in_force(page) == 1
    assert plans_in_force(page.replace(" 1.0\n", " 0.0\n")) == 0
    assert plans_in_force("activity_collector_up 1.0\n") is None
