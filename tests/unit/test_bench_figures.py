"""The benchmarks' figures: medians and paired ratios (bench/common.py), no best-of.

Issue 16: a result is a median of interleaved reps, a comparison the ratio of
medians with the min-max of the paired ratios (rep i of A / rep i of B).
"""

from __future__ import annotations

import pytest

from bench.common import fmt_paired, paired, paired_result


def test_paired_is_the_ratio_of_medians_with_the_paired_spread() -> None:
    a = [100.0, 300.0, 200.0]  # median 200
    b = [50.0, 200.0, 400.0]  # median 200
    mid, lo, hi = paired(a, b) or (0.0, 0.0, 0.0)
    assert mid == pytest.approx(1.0)  # not the ratio of the best runs (300/400)
    assert (lo, hi) == pytest.approx((0.5, 2.0))  # 200/400 and 100/50


def test_paired_without_figures_is_none() -> None:
    assert paired([], [1.0]) is None
    assert paired([1.0], [0.0]) is None
    assert fmt_paired(None) == "n/a"


def test_fmt_paired() -> None:
    assert fmt_paired((1.234, 0.9, 1.4)) == "1.23 [0.90-1.40]"


def test_paired_result_carries_the_spread_and_the_verdict() -> None:
    record = paired_result("drain", "redis", "prefork c=2", "eventbus/raw", (0.8, 0.7, 1.1), 1.0)
    assert record["value"] == 0.8
    assert (record["paired_min"], record["paired_max"]) == (0.7, 1.1)
    assert (record["target"], record["ok"]) == (">= 1.0", "MISS")
    assert paired_result("e2e", "redis", "x", "eventbus/dramatiq", None)["ok"] == "-"


def test_dramatiq_reads_kombus_default_vhost() -> None:
    pytest.importorskip("dramatiq")
    from bench.dramatiq_app import pika_url

    assert pika_url("amqp://guest:guest@127.0.0.1:5672//").endswith(":5672/%2F")
    assert pika_url("amqp://g:g@h:5672/vh") == "amqp://g:g@h:5672/vh"
