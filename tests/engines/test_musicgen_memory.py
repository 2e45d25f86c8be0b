"""The MusicGen memory plan: its cache bytes are the bytes the engine's decoder allocates (text and
melody model), its weights the loaded model's, its track count grows with the GPU and never
overfills it, its batch buckets end at that count, and serve_config.yaml's MusicGen batch is it."""

from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.musicgen_memory import SERVED, served_plan
from leap_ray.api.musicgen import MusicGenRequest
from leap_ray.engines.musicgen import TEXT_TOKENS, WINDOW_S, MusicGenEngine
from leap_ray.engines.musicgen_memory import (
    GIB,
    CacheShape,
    batch_buckets,
    decoder_bytes,
    model_on_meta,
    plan,
    weight_bytes,
)

MODELS = ["musicgen", "musicgen-melody"]
PRODUCTION = Path(__file__).parents[2] / "serve_config.yaml"
# A musicgen-melody-sized cache: 48 layers, 24 heads of 64, 4 codebooks, 235 chroma frames, fp16.
MEDIUM = CacheShape(
    layers=48,
    heads=24,
    head_dim=64,
    codebooks=4,
    window_frames=1500,
    text_tokens=TEXT_TOKENS,
    chroma_length=235,
    dtype_bytes=2,
)


def shape_of(engine: MusicGenEngine) -> CacheShape:
    return CacheShape.from_config(
        engine.model.config, window_s=WINDOW_S, text_tokens=TEXT_TOKENS, dtype=engine.dtype
    )


@pytest.mark.parametrize("name", MODELS)
def test_the_planned_cache_is_what_the_engines_decoder_allocates(tiny_models, name):
    engine = MusicGenEngine(str(tiny_models[name]))
    shape = shape_of(engine)
    for tracks in (1, 3):  # growing: the engine keeps a bigger decoder than it is asked for
        decoder = engine.decoder_for(2 * tracks)
        assert (decoder.capacity, decoder.cross_capacity) == (shape.capacity, shape.cross_capacity)
        assert decoder_bytes(decoder, engine.model) == tracks * shape.track_bytes


@pytest.mark.parametrize("name", MODELS)
def test_the_shape_reads_the_engines_window_and_prefix(tiny_models, name):
    engine = MusicGenEngine(str(tiny_models[name]))
    shape = shape_of(engine)
    assert shape.window_frames == engine.window_frames and shape.codebooks == engine.codebooks
    assert shape.prefix_tokens == engine.prefix_tokens(TEXT_TOKENS)
    assert shape.melody == engine.has_melody


@pytest.mark.parametrize("name", MODELS)
def test_the_engine_holds_the_prompts_the_plan_holds_and_keeps_its_decoder(tiny_models, name):
    engine = MusicGenEngine(str(tiny_models[name]))
    held = shape_of(engine).prompt_tokens_held
    assert held >= TEXT_TOKENS
    batch = engine.running_batch(max_load=2)
    decoders = []
    for seed in range(3):  # each admitted into an empty batch, as a quiet replica admits
        assert batch.admit(MusicGenRequest(prompt="lo-fi beat", duration=0.1, seed=seed)) is None
        decoders.append(engine.decoder)
        batch.clear()
    assert decoders[0] is decoders[1] is decoders[2]
    decoder = decoders[0]  # it holds a whole window behind a prompt of `held` tokens
    if engine.has_melody:
        assert decoder.capacity >= engine.prefix_tokens(held) + engine.window_frames + engine.codebooks + 1
    else:
        assert decoder.cross_capacity >= held


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", MODELS)
def test_weights_counted_from_the_config_equal_the_loaded_models(tiny_models, name, dtype):
    engine = MusicGenEngine(str(tiny_models[name]), dtype=dtype)
    assert weight_bytes(model_on_meta(engine.model.config, engine.dtype)) == weight_bytes(engine.model)


def test_tracks_grow_with_the_gpu_and_never_overfill_it():
    weights = 3 * GIB
    plans = [plan(MEDIUM, weights, gib * GIB) for gib in range(8, 200, 4)]
    tracks = [p.tracks for p in plans]
    assert tracks == sorted(tracks) and tracks[0] == 0 and tracks[-1] > 100
    for p in plans:
        assert 0 <= p.spare_bytes or p.tracks == 0
        assert p.spare_bytes < p.track_bytes or p.tracks == 0
        assert p.weight_bytes + p.reserve_bytes + p.cache_bytes <= p.gpu_bytes or p.tracks == 0


def test_a_gpu_that_holds_no_track_plans_no_buckets():
    nothing = plan(MEDIUM, 3 * GIB, 4 * GIB)
    assert (nothing.tracks, nothing.buckets) == (0, ())


@pytest.mark.parametrize("tracks", [1, 2, 3, 8, 16, 17, 61, 112])
def test_buckets_are_powers_of_two_ending_at_the_most_tracks(tracks):
    buckets = batch_buckets(tracks)
    assert buckets[-1] == tracks and list(buckets) == sorted(set(buckets))
    assert all(bucket & (bucket - 1) == 0 for bucket in buckets[:-1])
    for batch in range(2, tracks + 1):  # padded to the next bucket: fewer than twice its rows
        assert next(bucket for bucket in buckets if bucket >= batch) < 2 * batch


def test_a_track_takes_two_rows_of_keys_and_values_per_layer_over_the_rounded_window():
    # chroma 235 + prompt 256 + window 1500 + 4 codebooks + 1 = 1996 positions: 2048 rounded.
    assert MEDIUM.capacity == 2048 and MEDIUM.cross_capacity == 0
    assert MEDIUM.track_bytes == 2 * 48 * 2 * 24 * 64 * 2048 * 2
    assert MEDIUM.prompt_tokens_held == 2048 - (235 + 1500 + 4 + 1)
    text_only = CacheShape(**{**vars(MEDIUM), "chroma_length": None})
    assert text_only.capacity == 1536 and text_only.cross_capacity == TEXT_TOKENS
    per_position = 48 * 2 * 24 * 64 * 2
    assert text_only.track_bytes == 2 * (per_position * (1536 + TEXT_TOKENS) + TEXT_TOKENS * 2)


def test_half_precision_halves_the_cache():
    single = CacheShape(**{**vars(MEDIUM), "dtype_bytes": torch.float32.itemsize})
    assert single.track_bytes == 2 * MEDIUM.track_bytes


def test_the_production_config_batches_as_the_80_gb_plan_for_its_model():
    (application,) = yaml.safe_load(PRODUCTION.read_text())["applications"]
    musicgen = application["args"]["musicgen"]
    deployment = next(d for d in application["deployments"] if d["name"] == "MusicGen")
    planned = served_plan()
    assert musicgen["model"] == SERVED
    assert deployment["user_config"]["max_batch_size"] == planned.tracks
    assert musicgen["engine_kwargs"]["batch_buckets"] == list(planned.buckets)
    assert deployment["max_ongoing_requests"] >= planned.tracks  # a replica can fill its batch
