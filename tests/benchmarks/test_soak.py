"""The soak benchmark's mix gets what each kind expects from the ingress (its valid requests 200, each
bomb its refusal), so that the soak measures memory under the traffic it claims; and its growth figure."""

import asyncio

import httpx
import pytest

from benchmarks.soak import MIX, Sample, growth
from leap_ray.config import UploadLimits
from tests.helpers import make_app, served

# Seeds that reach the variants of the kinds that take turns: each hostile family on each route.
SEEDS = {"bomb-hostile-image": [0, 8, 16, 3, 11, 19, 6]}
EXPECTED = {kind.name: kind.expected for kind in MIX}


@pytest.mark.integration  # 16 MB bombs through the ingress's app in-process: seconds, the benchmarks' tier
def test_every_kind_of_the_mix_gets_the_answer_it_expects(tmp_path):
    app, _ = make_app(tmp_path, uploads=UploadLimits(idle_timeout_s=1.0))  # slow bodies: 408 in a second

    async def outcomes(url: str) -> dict[str, list[str]]:
        async with httpx.AsyncClient(timeout=60) as client:
            return {
                kind.name: [await kind.send(client, url, seed) for seed in SEEDS.get(kind.name, [0, 1])]
                for kind in MIX
            }

    with served(app) as url:
        answers = asyncio.run(outcomes(url))
    assert {name: got for name, got in answers.items() if not set(got) <= EXPECTED[name]} == {}


def sample(t_s: float, ingress_mb: float) -> Sample:
    return Sample(t_s, ingress_mb, 0.0, 0.0, 1.0, [1], 0, {})


def test_growth_compares_the_last_quarter_with_the_first_after_warm_up():
    warm_up = [sample(t, 100.0) for t in range(3)]  # left out
    after = [sample(3 + t, mb) for t, mb in enumerate([200, 210, 190, 205, 999, 220, 215, 225])]
    figures = growth(warm_up + after, warm_up_s=3)
    assert figures["start_mb"] == 100
    assert figures["first_mb"] == 205  # median of 200 and 210
    assert figures["last_mb"] == 220  # median of 215 and 225
    assert figures["growth"] == pytest.approx(15 / 205)
