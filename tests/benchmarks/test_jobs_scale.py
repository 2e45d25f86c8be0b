"""The arithmetic of benchmarks/jobs_scale.py: the table of N jobs against N requests."""

from benchmarks.jobs_scale import ReplicaTimeline, scale_table


def test_the_table_compares_peaks_and_drain_times_side_by_side():
    case = {
        "synchronous": {"peak_replicas": 6, "drain_s": 40.0},
        "jobs": {"peak_replicas": 7, "drain_s": 44.0},
    }
    (row,) = scale_table({160: case})
    assert (row["N"], row["sync peak replicas"], row["jobs peak replicas"]) == (160, 6, 7)
    assert row["jobs / sync drain"] == 1.1


def test_a_timelines_peak_is_its_most_replicas_and_zero_when_empty():
    timeline = ReplicaTimeline()
    assert timeline.peak == 0
    timeline.samples = [(0.5, 1), (1.0, 4), (1.5, 3)]
    assert timeline.peak == 4
