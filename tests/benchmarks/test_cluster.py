"""The arithmetic of benchmarks/cluster.py: steady rates from batched completions, efficiency against
linear, the load plan, the scale-up times read from the timeline, the plot it writes, and the
start-up comparison's table (who served a burst, when the new replicas came up) and plot."""

from benchmarks.cluster import (
    WORK,
    Answer,
    burst_answers,
    capacity_table,
    draw,
    draw_side_by_side,
    more_than_one,
    most_up_after,
    offered_at,
    startup_table,
    steady_rate,
)


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


def timeline(replicas_at: dict[int, int], length: int = 40) -> list[dict]:
    """Samples a second apart; SDXL's RUNNING replicas change at the given times, MusicGen keeps one."""
    running, samples = 1, []
    for t in range(length):
        running = replicas_at.get(t, running)
        sample = {"t": float(t), "replicas": {"SDXL": running, "MusicGen": 1}, "p99_s": 1.0}
        samples.append({**sample, "wanted": sample["replicas"], "offered_per_s": 2.0})
    return samples


def test_the_last_replica_is_up_when_the_most_replicas_after_the_burst_first_run():
    samples = timeline({25: 2, 31: 4, 36: 3})
    assert most_up_after(samples, "SDXL", since=10.0) == 21.0
    assert most_up_after(samples, "MusicGen", since=10.0) is None


PLAN = [(10.0, {"SDXL": 0.1}), (20.0, {"SDXL": 1.0}), (10.0, {"SDXL": 0.1})]


def test_a_burst_counts_requests_sent_during_it_by_the_replicas_that_served_them():
    answers = [
        Answer(at=5.0, model="SDXL", latency=1.0, status=200, engine_up_at=-3.0),  # sent before
        Answer(at=14.0, model="SDXL", latency=2.0, status=200, engine_up_at=-3.0),  # old replica
        Answer(at=40.0, model="SDXL", latency=12.0, status=200, engine_up_at=25.0),  # new, sent at 28
        Answer(at=20.0, model="SDXL", latency=0.5, status=503, engine_up_at=None),
        Answer(at=35.0, model="SDXL", latency=1.0, status=200, engine_up_at=25.0),  # sent after
    ]
    burst = burst_answers(answers, PLAN)
    assert burst["SDXL"] == {"p50_s": 7.0, "p99_s": 11.9, "by_old": 1, "by_new": 1, "not_200": 1}
    assert burst["MusicGen"] == {"p50_s": None, "p99_s": None, "by_old": 0, "by_new": 0, "not_200": 0}


def test_the_startup_table_names_the_real_start_up_each_run_stands_for_and_replicas_never_up(tmp_path):
    run = {
        "plan": PLAN,
        "samples": timeline({}),
        "scaled_up_after_s": {"SDXL": None, "MusicGen": None},
        "all_up_after_s": {"SDXL": None, "MusicGen": None},
        "most_replicas": {"SDXL": 1, "MusicGen": 1},
        "burst": {
            name: {"p50_s": 1.0, "p99_s": 2.0, "by_old": 3, "by_new": 0, "not_200": 0} for name in WORK
        },
    }
    runs = [{**run, "startup_s": 108.0}, {**run, "startup_s": 6.0}]
    table = startup_table(runs, stands_for=[360.0, 20.0])
    assert [(row["start-up s"], row["stands for"], row["model"]) for row in table] == [
        ("108", "6 min", "SDXL"),
        ("108", "6 min", "MusicGen"),
        ("6", "20 s", "SDXL"),
        ("6", "20 s", "MusicGen"),
    ]
    assert table[0]["2nd RUNNING +s"] == "not in run" and table[0]["burst at s"] == 10.0
    assert table[0]["most wanted"] == table[0]["most running"] == 1
    draw_side_by_side(runs, ["slow", "quick"], tmp_path / "startup.png")
    assert (tmp_path / "startup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
