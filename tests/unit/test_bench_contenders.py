"""The drain benchmark's contenders (issue 16): choosing them, raw-defaults' variants,
and every contender's ratio to raw-defaults (what one guarantee costs in stock Celery).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

# The benchmarks' modules need the bench extra (celery-pubsub, psutil), which the
# README's test install leaves out.
pytest.importorskip("celery_pubsub", reason="the bench extra: pip install -e '.[bench]'")
psutil = pytest.importorskip("psutil")

from bench import defaults_app  # noqa: E402
from bench.bench_drain import (  # noqa: E402
    against_base,
    cpu_per_run,
    fmt_change,
    report_against_base,
    tree_cpu,
)
from bench.contenders import ALL, KNOWN, STOCK, choose  # noqa: E402


def test_the_default_set_is_unchanged() -> None:
    assert choose(None) == ["eventbus", "raw", "raw-defaults", "celery-pubsub", "dramatiq"]
    assert choose(None, with_dramatiq=False) == ["eventbus", "raw", "raw-defaults", "celery-pubsub"]


def test_contenders_keep_the_given_order_once_each() -> None:
    spec = "eventbus, raw-defaults,raw-late-acks,raw-events,raw,raw-defaults,"
    assert choose(spec) == ["eventbus", "raw-defaults", "raw-late-acks", "raw-events", "raw"]
    assert choose("dramatiq,raw-events", with_dramatiq=False) == ["raw-events"]


@pytest.mark.parametrize("spec", ["raw-late-ack", "", " , "])
def test_an_unknown_or_empty_choice_is_refused_naming_the_known_ones(spec: str) -> None:
    with pytest.raises(ValueError, match="known: eventbus, raw, raw-defaults"):
        choose(spec)


def test_every_variant_is_a_known_contender_on_a_queue_of_its_own() -> None:
    assert STOCK["raw-defaults"] == "defaults"
    assert set(STOCK) <= set(KNOWN) and set(ALL) <= set(KNOWN)
    queues = {defaults_app.queue_name("r1", v) for v in defaults_app.VARIANTS}
    assert len(queues) == len(defaults_app.VARIANTS)
    assert defaults_app.queue_name("r1") == "bench.r1.defaults"  # as before


def test_each_variant_adds_its_guarantee_to_celerys_defaults_only() -> None:
    def conf(variant: str) -> tuple[bool, bool, bool, bool]:
        c = defaults_app.build("redis://127.0.0.1:6379/14", "unit", variant).app.conf
        return (
            c.task_acks_late,
            c.task_reject_on_worker_lost is True,
            c.worker_send_task_events,
            c.task_send_sent_event,
        )

    assert conf("defaults") == (False, False, False, False)
    assert conf("late-acks") == (True, True, False, False)
    assert conf("events") == (False, False, True, False)
    assert conf("late-acks-events") == (True, True, True, False)
    with pytest.raises(KeyError):
        defaults_app.build("redis://127.0.0.1:6379/14", "unit", "late")


def _record(contender: str, runs: list[float], setting: str = "prefork c=2") -> dict[str, object]:
    ordered = sorted(runs)
    return {
        "bench": "drain",
        "broker": "rabbitmq",
        "setting": setting,
        "contender": contender,
        "runs": runs,
        "median": ordered[len(ordered) // 2],
    }


def test_each_contender_against_raw_defaults_is_a_paired_ratio_of_medians() -> None:
    by = {
        "eventbus": _record("eventbus", [900.0, 800.0, 1000.0]),
        "raw-defaults": _record("raw-defaults", [1000.0, 1000.0, 1000.0]),
        "raw-late-acks": _record("raw-late-acks", [700.0, 1000.0, 800.0]),
    }
    rows = against_base(by)  # type: ignore[arg-type]
    assert [(name, mid) for name, mid, _ in rows] == [("eventbus", 900.0), ("raw-late-acks", 800.0)]
    assert rows[1][2] == pytest.approx((0.8, 0.7, 1.0))
    assert fmt_change(rows[1][2]) == "-20%"
    assert fmt_change(None) == "n/a"
    assert against_base({"raw": by["eventbus"]}) == []  # type: ignore[dict-item]


def test_the_ratio_records_name_each_variant_and_leave_eventbus_to_its_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = [
        _record("eventbus", [900.0] * 5),
        {**_record("raw-defaults", [1000.0] * 5), "cpu_ms_per_run": [0.5] * 5},
        {**_record("raw-events", [850.0] * 5), "cpu_ms_per_run": [0.6] * 5},
        _record("eventbus", [500.0] * 5, "threads c=4"),  # no base there: no rows
    ]
    records = report_against_base(results, 400, 5)
    assert [(r["setting"], r["ratio"], r["value"]) for r in records] == [
        ("prefork c=2", "raw-events/raw-defaults", pytest.approx(0.85))
    ]
    out = capsys.readouterr().out
    assert "| raw-events " in out and "-15%" in out and "threads" not in out
    # the worker's CPU per run too, raw-events against raw-defaults' (eventbus had none)
    assert "| 0.600 " in out and "1.20 [1.20-1.20]" in out and "| 0.500 " in out


def test_cpu_per_run_is_the_cpu_between_two_samples_over_the_runs_between_them() -> None:
    assert cpu_per_run((1.0, 1.5), (100, 1100)) == pytest.approx(0.5)  # ms
    assert cpu_per_run((1.0, 1.5), (100, 100)) is None


def test_tree_cpu_counts_a_process_and_its_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", BURN_THEN_SLEEP])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the child has burnt its 0.3 s
            times = psutil.Process(child.pid).cpu_times()
            if times.user + times.system >= 0.3:
                break
            time.sleep(0.02)
        own = psutil.Process().cpu_times()
        # (1.22 - 0.92 is 0.29999999999999993 in floats: allow for it)
        assert tree_cpu(os.getpid()) - (own.user + own.system) >= 0.3 - 1e-6
    finally:
        child.kill()
        child.wait()
    assert tree_cpu(child.pid) == 0.0  # gone


BURN_THEN_SLEEP = """
import time
start = time.process_time()
while time.process_time() - start < 0.35:
    pass
time.sleep(30)
"""


def test_eventbus_without_task_events_drains_eventbus_queue_with_the_events_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench import apps
    from bench.contenders import Contenders

    assert choose("eventbus-no-task-events,raw-defaults") == [
        "eventbus-no-task-events",
        "raw-defaults",
    ]
    c = Contenders.build(
        "redis",
        "redis://127.0.0.1:6379/14",
        "unit",
        with_dramatiq=False,
        names=["eventbus", "eventbus-no-task-events"],
    )
    try:
        assert c.queue("eventbus-no-task-events") == c.queue("eventbus")
        worker = c.worker(["eventbus-no-task-events"], "threads", 4, "unit")
        assert worker.app_spec == "bench.apps:app"
        assert worker.env["BENCH_TASK_EVENTS"] == "0"
        assert "BENCH_TASK_EVENTS" not in c.worker(["eventbus"], "threads", 4, "unit").env
        # what the variant's worker builds from that environment
        url = "redis://127.0.0.1:6379/14"
        monkeypatch.setenv("BENCH_TASK_EVENTS", "0")
        assert apps.build(url, "unit2").app.conf.worker_send_task_events is False
        monkeypatch.delenv("BENCH_TASK_EVENTS")
        assert apps.build(url, "unit3").app.conf.worker_send_task_events is True
    finally:
        c.close()
