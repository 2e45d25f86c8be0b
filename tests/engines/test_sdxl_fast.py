"""The SDXL fast path (engine options for a GPU replica), checked on the CPU with the tiny model:
padding a step's batch up to a bucket cannot change anyone's image, batches of any size within the
buckets never recompile a warmed-up UNet, a replica serves while its bigger buckets compile, and the
compiled refiner refines as eager (a compiled engine's images against eager: test_compile_start.py)."""

import json
import shutil
import threading

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounter

from leap_ray.api.sdxl import SDXLRequest
from leap_ray.engines import sdxl_warm_up
from leap_ray.engines.sdxl import SDXLEngine
from leap_ray.engines.sdxl_fast import SDXLSpeed
from leap_ray.engines.sdxl_refiner import SDXLRefinerEngine
from leap_ray.engines.sdxl_warm_up import cache_key, compile_rest
from tests.helpers import run_steps, seeds_of, solo

TOLERANCE = 1e-3  # on 0-1 pixel values, CPU float32
SMALL = {"height": 64, "width": 64}


def unet_inputs(engine: SDXLEngine, rows: int, seed: int) -> list[torch.Tensor]:
    """Random UNet inputs: latents, timesteps, text, pooled text, time ids (6: SDXL base's)."""
    spec, generator = engine.spec(), torch.Generator().manual_seed(seed)
    return [
        torch.randn(rows, spec.latent_channels, 8, 8, generator=generator),
        torch.rand(rows, generator=generator) * 999,
        torch.randn(rows, spec.text_tokens, spec.text_embed_width, generator=generator),
        torch.randn(rows, spec.pooled_embed_width, generator=generator),
        torch.randn(rows, 6, generator=generator),
    ]


def test_padding_rows_cannot_change_the_real_rows(tiny_models):
    engine = SDXLEngine(str(tiny_models["sdxl"]), batch_buckets=[4])
    real = unet_inputs(engine, 3, seed=1)
    copies = engine.unet(*real)  # padded to 8 rows with copies of the last row
    assert engine.unet.padded_rows(3) == 8 and copies.shape[0] == 3
    noise = unet_inputs(engine, 5, seed=2)  # the same 8-row call, its padding now random
    sample, timesteps, text, pooled, time_ids = (torch.cat([r, n]) for r, n in zip(real, noise, strict=True))
    random_padding = engine.unet.unet(
        sample,
        timesteps,
        encoder_hidden_states=text,
        added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
        return_dict=False,
    )[0][:3]
    assert torch.equal(copies, random_padding)


def test_step_batches_padded_to_buckets_equal_solo_diffusers(tiny_models, reference):
    engine = SDXLEngine(str(tiny_models["sdxl"]), batch_buckets=[2, 4], channels_last=True)
    arrivals = {
        0: [SDXLRequest(prompt="a red fox", seed=1, num_inference_steps=4, **SMALL)],
        1: [SDXLRequest(prompt="no guidance", seed=2, num_inference_steps=3, guidance_scale=1.0, **SMALL)],
        2: [SDXLRequest(prompt="a tree", seed=3, num_inference_steps=3, scheduler="ddim", **SMALL)],
    }
    outcomes = run_steps(engine.running_batch(), arrivals)
    for request in (request for batch in arrivals.values() for request in batch):
        expected = solo(reference, request, seeds_of(request))
        assert np.abs(np.stack(outcomes[request.seed].images) - expected).max() < TOLERANCE


@pytest.mark.slow  # dynamo traces the UNet's blocks at three buckets
@pytest.mark.parametrize("regional", [True, False], ids=["regional", "whole-unet"])
def test_batches_of_any_size_within_the_buckets_never_recompile_after_warm_up(tiny_models, regional):
    counter = CompileCounter()  # counts the graphs dynamo compiles (and runs them eagerly)
    engine = SDXLEngine(
        str(tiny_models["sdxl"]),
        compile={"backend": counter},
        regional_compile=regional,
        batch_buckets=[1, 2, 4],
        warm_up_sizes=[[64, 64]],
    )
    engine.compiling.join(timeout=600)  # the buckets past the first compile after the engine is ready
    assert engine.unet.usable == [2, 4, 8] and engine.unet.shapes_seen is None  # kept in warm-up only
    warmed = counter.frame_count
    assert warmed >= 4  # the UNet at three buckets, the VAE decoder at one image
    arrivals = {
        0: [SDXLRequest(prompt="one", seed=1, num_inference_steps=1, **SMALL)],
        1: [
            SDXLRequest(prompt=f"three {i}", seed=10 + i, num_inference_steps=2, scheduler=s, **SMALL)
            for i, s in enumerate(["ddim", "euler", None])
        ],
    }
    outcomes = run_steps(engine.running_batch(), arrivals)
    assert len(outcomes) == 4 and {o.batch_size for o in outcomes.values()} == {1, 3}
    assert counter.frame_count == warmed


class CountedCache:
    saves = 0

    def save(self) -> None:
        self.saves += 1


class GatedBackend(CompileCounter):
    """Counts graphs; one compiled on the buckets' background thread waits until `open` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.open, self.waiting = threading.Event(), threading.Event()

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list) -> object:
        if threading.current_thread().name == "compile-buckets":
            self.waiting.set()
            assert self.open.wait(timeout=120)
        return super().__call__(graph, example_inputs)


@pytest.mark.slow  # dynamo traces the UNet's blocks at two buckets
def test_a_replica_serves_while_its_bigger_buckets_compile(tiny_models, reference, monkeypatch):
    gate, cache = GatedBackend(), CountedCache()
    monkeypatch.setattr(sdxl_warm_up, "open_cache", lambda engine, name: cache)
    engine = SDXLEngine(
        str(tiny_models["sdxl"]), compile={"backend": gate}, batch_buckets=[1, 4], warm_up_sizes=[[64, 64]]
    )
    assert gate.waiting.wait(timeout=60)  # the background compile of bucket 4 is held
    assert engine.unet.usable == [2] and engine.compiling.is_alive()
    assert cache.saves == 1  # the first bucket is saved: a replica stopped now leaves it to new nodes
    requests = [SDXLRequest(prompt=f"fox {i}", seed=20 + i, num_inference_steps=2, **SMALL) for i in range(3)]
    outcomes = run_steps(engine.running_batch(), {0: requests})  # 6 rows: three calls of the 2-row bucket
    gate.open.set()
    engine.compiling.join(timeout=600)
    assert engine.unet.usable == [2, 8] and cache.saves == 2
    for request in requests:
        assert outcomes[request.seed].batch_size == 3
        expected = solo(reference, request, seeds_of(request))
        assert np.abs(np.stack(outcomes[request.seed].images) - expected).max() < TOLERANCE


class FlakyUNet:
    """A UNet runner whose 4-row bucket fails to compile."""

    def __init__(self) -> None:
        self.usable, self.compiled = [2], []

    def compile_bucket(self, rows: int, shapes: list) -> None:
        if rows == 4:
            raise RuntimeError("inductor failed")
        self.compiled.append((rows, len(shapes)))
        self.usable = sorted({*self.usable, rows})


def test_a_bucket_that_fails_to_compile_stays_unused_and_the_others_still_compile(caplog):
    unet, cache = FlakyUNet(), CountedCache()
    compile_rest(unet, [4, 8], [["a row"]], cache)
    assert unet.usable == [2, 8] and unet.compiled == [(8, 1)] and cache.saves == 1
    assert "compiling the UNet at 4 rows failed" in caplog.text


@pytest.mark.parametrize("buckets", [[0, 1], [1, -2], [1.5]], ids=["zero", "negative", "fraction"])
def test_batch_buckets_must_be_image_counts(tiny_models, buckets):
    with pytest.raises(ValueError, match="batch_buckets are image counts of at least 1"):
        SDXLEngine(str(tiny_models["sdxl"]), batch_buckets=buckets)


def test_repeated_buckets_count_once(tiny_models):
    assert SDXLEngine(str(tiny_models["sdxl"]), batch_buckets=[2, 1, 2]).unet.row_buckets == [2, 4]


def test_the_compile_cache_key_is_the_architecture_not_the_folder(tiny_models, tmp_path):
    copy = shutil.copytree(tiny_models["sdxl"], tmp_path / "elsewhere")
    keys = [
        cache_key(SDXLEngine(str(folder), batch_buckets=[2, 1])) for folder in (tiny_models["sdxl"], copy)
    ]
    assert keys[0] == keys[1] and json.loads(json.dumps(keys[0])) == keys[0]
    assert keys[0]["options"]["batch_buckets"] == [1, 2]


def test_rows_past_the_compiled_buckets_run_as_several_calls_with_the_same_rows(tiny_models):
    engine = SDXLEngine(str(tiny_models["sdxl"]), batch_buckets=[1, 4])
    inputs = unet_inputs(engine, 6, seed=3)
    whole = engine.unet(*inputs)  # one call padded to the 8-row bucket
    engine.unet.usable = [2]  # as while bucket 4 compiles
    calls = []
    forward = engine.unet.forward_padded
    engine.unet.forward_padded = lambda padded: calls.append(padded[0].shape[0]) or forward(padded)
    parts = engine.unet(*inputs)
    assert calls == [2, 2, 2] and engine.unet.padded_rows(6) == 2
    assert torch.allclose(parts, whole, atol=1e-5)


@pytest.mark.slow  # dynamo traces the refiner's blocks at two buckets
def test_the_refiner_takes_the_fast_path_and_refines_as_eager(tiny_models):
    counter = CompileCounter()
    options = {"batch_buckets": [1, 2], "warm_up_sizes": [[64, 64]], "channels_last": True}
    compiled = SDXLRefinerEngine(str(tiny_models["sdxl-refiner"]), compile={"backend": counter}, **options)
    compiled.compiling.join(timeout=600)
    assert counter.frame_count >= 3 and compiled.unet.usable == [2, 4]  # its UNet at two buckets, its VAE
    eager = SDXLRefinerEngine(str(tiny_models["sdxl-refiner"]))
    (job,) = eager.warm_up_requests(64, 64, images=1)
    job.latents = torch.randn(job.latents.shape, generator=torch.Generator().manual_seed(5))
    outcomes = [run_steps(engine.running_batch(), {0: [job]}) for engine in (compiled, eager)]
    refined = [outcome[None].images[0] for outcome in outcomes]  # keyed by seed: the warm-up has none
    assert np.abs(refined[0] - refined[1]).max() < TOLERANCE


@pytest.mark.integration  # inductor compiles the tiny refiner's blocks on the CPU: about 40 s
def test_a_compiled_refiner_refines_within_2_of_255_of_eager(tiny_models, tmp_path):
    options = {
        "batch_buckets": [1],
        "warm_up_sizes": [[64, 64]],
        "fuse_qkv": True,
        "compile_cache": str(tmp_path),
    }
    compiled = SDXLRefinerEngine(str(tiny_models["sdxl-refiner"]), compile=True, **options)
    assert len(list(tmp_path.glob("refiner-*.zip"))) == 1  # its compile cache, saved once all compiled
    eager = SDXLRefinerEngine(str(tiny_models["sdxl-refiner"]))
    (job,) = eager.warm_up_requests(64, 64, images=1)
    job.latents = torch.randn(job.latents.shape, generator=torch.Generator().manual_seed(6))
    outcomes = [run_steps(engine.running_batch(), {0: [job]}) for engine in (compiled, eager)]
    refined = [outcome[None].images[0] for outcome in outcomes]
    assert np.abs(refined[0] - refined[1]).max() <= 2 / 255


@pytest.mark.parametrize(
    ("kwargs", "graphs"),
    [
        ({}, False),
        ({"mode": "max-autotune-no-cudagraphs"}, False),
        ({"mode": "reduce-overhead"}, True),
        ({"mode": "max-autotune"}, True),
        ({"options": {"triton.cudagraphs": True}}, True),
    ],
    ids=["default", "no-cudagraphs", "reduce-overhead", "max-autotune", "triton-option"],
)
def test_cuda_graph_modes_compile_every_bucket_before_ready(kwargs, graphs):
    assert sdxl_warm_up.uses_cuda_graphs(kwargs) is graphs


def test_the_compile_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("LEAP_RAY_COMPILE_CACHE", str(tmp_path))
    assert SDXLSpeed(compile=True).cache_location == str(tmp_path)  # the default: the environment's
    assert SDXLSpeed(compile=True, compile_cache="s3://b/p").cache_location == "s3://b/p"
    assert SDXLSpeed(compile=True, compile_cache=False).cache_location is None
    assert SDXLSpeed(compile_cache="s3://b/p").cache_location is None  # nothing compiled: nothing cached


def test_compile_options_that_are_not_plain_data_get_no_compile_cache(tiny_models, caplog):
    engine = SDXLEngine(str(tiny_models["sdxl"]), compile={"backend": CompileCounter()}, warm_up_sizes=[])
    assert sdxl_warm_up.open_cache(engine, "sdxl") is None
    assert "no compile cache: the compile options are not plain data" in caplog.text
