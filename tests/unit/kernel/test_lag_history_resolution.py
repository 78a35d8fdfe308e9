"""The end-offset table keeps its time span when refreshes come faster than its resolution.

The lag tracker refreshes as soon as the consumer moves (at most every ``min_interval``), so under steady
load samples arrive every half second instead of every ``interval``; the table must still cover
``capacity * resolution`` seconds, or the lag-in-seconds of a consumer far behind is extrapolated from a
few minutes of history instead of half an hour.
"""

from __future__ import annotations

import itertools

import pytest

from services.kernel.lag import OffsetHistory, estimate_lag_seconds


def steady(history: OffsetHistory, seconds: float, step: float, rate: float) -> None:
    """``rate`` records/s appended for ``seconds``, the end offset sampled every ``step`` seconds."""
    t = 0.0
    while t <= seconds:
        history.add(int(t * rate), t)
        t += step


def test_frequent_samples_still_span_capacity_times_resolution() -> None:
    history = OffsetHistory(capacity=10, resolution=5.0)

    steady(history, seconds=200.0, step=0.5, rate=10.0)

    samples = history.samples
    assert samples[-1] == (2000, 200.0)  # the newest end offset is always there
    assert samples[-1][1] - samples[0][1] >= 9 * 5.0
    # Every retained gap but the newest (which is replaced until it has grown to the resolution).
    gaps = [b[1] - a[1] for a, b in itertools.pairwise(samples[:-1])]
    assert gaps
    assert all(gap >= 5.0 for gap in gaps)


def test_estimate_from_a_thinned_table_stays_within_the_resolution() -> None:
    history = OffsetHistory(capacity=10, resolution=5.0)
    steady(history, seconds=60.0, step=0.5, rate=10.0)

    # The record at offset 299 was appended at t=29.9 (10 records/s from t=0).
    assert estimate_lag_seconds(history.samples, 299, now=60.0) == pytest.approx(30.1, abs=5.0)


def test_an_idle_run_still_keeps_its_two_ends_with_a_resolution() -> None:
    history = OffsetHistory(capacity=10, resolution=5.0)
    history.add(0, 0.0)
    history.add(100, 10.0)
    for t in range(11, 60):
        history.add(100, float(t))
    history.add(110, 60.0)

    assert history.samples == [(0, 0.0), (100, 10.0), (100, 59.0), (110, 60.0)]
