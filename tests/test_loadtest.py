"""The load test's parts: the mix it reads, Poisson arrivals that ramp, percentiles."""

import random

import pytest

from leap_ray.loadtest import arrival_times, parse_mix, percentiles


def test_the_mix_reads_sizes_steps_durations_and_weights():
    sdxl = parse_mix("sdxl:512x768:20=3")
    assert (sdxl.path, sdxl.weight) == ("/v1/sdxl", 3.0)
    assert (sdxl.body["width"], sdxl.body["height"], sdxl.body["num_inference_steps"]) == (512, 768, 20)
    music = parse_mix("musicgen:30")
    assert (music.path, music.body["duration"], music.weight) == ("/v1/musicgen", 30.0, 1.0)
    assert parse_mix("sdxl").body["width"] == 1024


@pytest.mark.parametrize("spec", ["foo", "sdxl:big", "musicgen:a=1", "sdxl:64x64:2:9", "musicgen=x"])
def test_a_mix_it_cannot_read_is_refused(spec):
    with pytest.raises(ValueError, match="cannot read the mix"):
        parse_mix(spec)


def test_arrivals_follow_the_rate_and_its_ramp():
    steady = arrival_times(20, 100, random.Random(1))
    assert 1800 < len(steady) < 2200 and steady == sorted(steady) and steady[-1] < 100
    ramp = arrival_times(10, 100, random.Random(1), ramp_to=30)  # 2000 expected: 500 then 1500
    first, second = sum(t < 50 for t in ramp), sum(t >= 50 for t in ramp)
    assert 1800 < first + second < 2200 and 1.3 < second / first < 2.2


def test_percentiles_are_in_milliseconds():
    values = percentiles([i / 1000 for i in range(1, 101)])
    assert values["p50_ms"] == pytest.approx(50.5) and values["p99_ms"] == pytest.approx(99.01)
    assert percentiles([]) == {} and percentiles([0.2])["p99_ms"] == 200
