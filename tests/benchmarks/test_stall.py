"""The stall benchmark's measurement runs on the tiny model (its numbers are the README's)."""

import pytest

from benchmarks.stall import stall_rows


@pytest.mark.integration  # two engines and a few timed requests: seconds, the benchmarks' tier
def test_the_stall_benchmark_measures_one_lane_and_the_own_lane_side_by_side(tiny_models):
    rows = stall_rows(str(tiny_models["sdxl"]), big_side=256, rounds=1, own_lane_above=128 * 128)
    assert [row["lanes"] for row in rows] == ["one", "own above 16384 px"]
    for row in rows:
        assert row["small_alone_s"] > 0 and row["big_s"] > 0
        assert row["ratio"] == row["small_behind_big_s"] / row["small_alone_s"]
