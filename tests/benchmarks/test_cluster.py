"""The arithmetic of benchmarks/cluster.py: steady rates from batched completions, efficiency against
linear, the load plan, the scale-up times read from the timeline, and the plot it writes."""

from benchmarks.cluster import capacity_table, draw, more_than_one, offered_at, steady_rate


def test_a_steady_rate_counts_whole_batches_between_the_first_and_last_completion():
    # batches of 4 finishing every 2 s from t=1 on; the first 3 s are warm-up
    completions = [1.0 + 2 * batch for batch in range(10) for _ in range(4)]
    assert steady_rate(completions, warm_up_s=3.0, started=0.0) == 2.0  # images per second
    assert steady_rate([5.0], warm_up_s=0.0, started=0.0) == 0.0


def test_efficiency_is_throughput_over_linear_from_the_smallest_cluster():
    rows = [
        {"gpus": 1, "nodes": {"SDXL": 1, "MusicGen": 1}, "per_s": {"SDXL": 2.0, "MusicGen": 10.0}},
        {"gpus": 4, "nodes": {"SDXL": 2, "MusicGen": 2}, "per_s": {"SDXL": 7.2, "MusicGen": 40.0}},
    ]
    table = capacity_table(rows)
    assert [row["SDXL efficiency"] for row in table] == [1.0, 0.9]
    assert table[1]["MusicGen efficiency"] == 1.0 and table[1]["nodes (SDXL/MusicGen)"] == "2/2"


def test_the_plan_gives_the_rate_offered_at_any_time_and_none_after_it():
    plan = [(10.0, {"SDXL": 1.0}), (5.0, {"SDXL": 4.0})]
    assert offered_at(plan, 9.9) == {"SDXL": 1.0} and offered_at(plan, 12) == {"SDXL": 4.0}
    assert offered_at(plan, 15.0) == {}


def test_scale_up_time_is_from_the_burst_to_the_first_sample_with_a_second_replica(tmp_path):
    samples = [
        {
            "t": float(t),
            "replicas": {"SDXL": 1 + (t >= 30), "MusicGen": 1},
            "wanted": {"SDXL": 1 + (t >= 22), "MusicGen": 1},
            "p99_s": 1.0,
            "offered_per_s": 2.0,
        }
        for t in range(40)
    ]
    assert more_than_one(samples, "wanted", "SDXL", since=10.0) == 12.0
    assert more_than_one(samples, "replicas", "SDXL", since=10.0) == 20.0
    assert more_than_one(samples, "replicas", "MusicGen", since=10.0) is None
    draw({"samples": samples}, tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
