"""How many MusicGen tracks one GPU holds (leap_ray.engines.musicgen_memory), in float16:

- the plan for the real checkpoints on an 80 GB H100 and a 141 GB H200, from their configs (written
  out below: the weights cannot be downloaded here; their bytes are counted on the meta device);
- measured: the plan against what the engine allocates for the tiny models on this CPU (cache and
  weights), the transients beside the cache counted at musicgen-melody's size on the meta device
  (EnCodec decoding a track, a track's prefill, a step of the full batch), and the recorded H200
  run's peaks against the plan.

serve_config.yaml's MusicGen `max_batch_size` and `batch_buckets` are the H100 plan for
facebook/musicgen-melody.

    python -m benchmarks.musicgen_memory [--no-transients]
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import transformers
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import (
    EncodecModel,
    PreTrainedConfig,
)

from benchmarks.common import print_table, write_results
from leap_ray.engines.musicgen import EXTEND_STRIDE_S, TEXT_TOKENS, WINDOW_S, MusicGenEngine
from leap_ray.engines.musicgen_decoder import StaticDecoder
from leap_ray.engines.musicgen_memory import (
    GIB,
    CacheShape,
    MemoryPlan,
    Reserve,
    decoder_bytes,
    model_on_meta,
    plan,
    weight_bytes,
)
from leap_ray.engines.musicgen_rows import TrackRows
from leap_ray.model_sources import tiny_model
from leap_ray.tiny.musicgen import MELODY, musicgen_config

MIB = 1 << 20
# Total memory as NVML (nvidia-smi) reports it: H100 SXM 80GB 81,559 MiB, H200 141GB 143,771 MiB.
GPUS = {"H100 80GB": 81_559 * MIB, "H200 141GB": 143_771 * MIB}
DTYPE = torch.float16  # what the engine loads on a GPU (leap_ray.engines.device)
# The decoders of the checkpoints (MusicGen paper, Copet et al. 2023: 300M 24 layers x 1024 wide x 16
# heads, 1.5B 48 x 1536 x 24, 3.3B 48 x 2048 x 32; the Hub's facebook/musicgen-*/config.json: a
# feed-forward 4x wide, 4 codebooks of 2048 codes, 2048 positions). Every checkpoint encodes text with
# t5-base and audio with the 32 kHz EnCodec (leap_ray.tiny.musicgen.MELODY's text and audio).
DECODERS = {
    "small": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "ffn_dim": 4096},
    "medium": {"hidden_size": 1536, "num_hidden_layers": 48, "num_attention_heads": 24, "ffn_dim": 6144},
    "large": {"hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 32, "ffn_dim": 8192},
}
MODELS = {  # model id: (decoder, melody); the melody checkpoints take 235 chroma frames (30 s, hop 4096)
    "facebook/musicgen-small": ("small", False),
    "facebook/musicgen-medium": ("medium", False),
    "facebook/musicgen-melody": ("medium", True),
    "facebook/musicgen-large": ("large", False),
    "facebook/musicgen-melody-large": ("large", True),
}
SERVED = "facebook/musicgen-melody"  # serve_config.yaml's MusicGen model
SERVED_ON = "H100 80GB"  # the GPU serve_config.yaml's batch is sized for
LONGEST_TRACK_S = 60.0  # the default request limit (LIMITS.musicgen.max_duration_s)
RECORDED = Path(__file__).parent / "recorded" / "gpu_check_h200_2026-11-26.json"


def real_config(model_id: str) -> PreTrainedConfig:
    """The checkpoint's config from the sizes above."""
    size, melody = MODELS[model_id]
    architecture = replace(MELODY, decoder={**MELODY.decoder, **DECODERS[size]})
    return musicgen_config(architecture, MELODY.text["vocab_size"], melody)


def shape_for(config: PreTrainedConfig, dtype: torch.dtype) -> CacheShape:
    """The cache the engine makes for this model (its window and prompt tokens)."""
    return CacheShape.from_config(config, window_s=WINDOW_S, text_tokens=TEXT_TOKENS, dtype=dtype)


def gib(count: int) -> float:
    return round(count / GIB, 2)


def served_plan() -> MemoryPlan:
    """The plan serve_config.yaml's MusicGen batch follows: its model on one 80 GB GPU."""
    config = real_config(SERVED)
    return plan(shape_for(config, DTYPE), weight_bytes(model_on_meta(config, DTYPE)), GPUS[SERVED_ON])


def plan_rows() -> list[dict[str, Any]]:
    """Every checkpoint on every GPU."""
    rows = []
    for model_id in MODELS:
        config = real_config(model_id)
        shape, weights = shape_for(config, DTYPE), weight_bytes(model_on_meta(config, DTYPE))
        for gpu, total in GPUS.items():
            memory = plan(shape, weights, total)
            rows.append(
                {
                    "model": model_id.removeprefix("facebook/"),
                    "gpu": gpu,
                    "gpu_gib": gib(total),
                    "weights_gib": gib(weights),
                    "reserve_gib": gib(memory.reserve_bytes),
                    "positions": shape.capacity,
                    "cross": shape.cross_capacity,
                    "track_mib": round(shape.track_bytes / MIB, 1),
                    "tracks": memory.tracks,
                    "buckets": list(memory.buckets),
                    "cache_gib": gib(memory.cache_bytes),
                    "spare_gib": gib(memory.spare_bytes),
                    "prompt_tokens_held": shape.prompt_tokens_held,
                }
            )
    return rows


def tiny_rows() -> list[dict[str, Any]]:
    """The plan against the engine's own decoder and loaded weights, tiny models on this CPU."""
    rows = []
    for name in ("musicgen", "musicgen-melody"):
        for dtype in ("float32", "float16"):
            engine = MusicGenEngine(str(tiny_model(name)), device="cpu", dtype=dtype, threads=1)
            shape = shape_for(engine.model.config, engine.dtype)
            weights = weight_bytes(model_on_meta(engine.model.config, engine.dtype))
            for tracks in (1, 4, 16):  # growing: the engine keeps a bigger decoder than it is asked for
                decoder = engine.decoder_for(2 * tracks)
                rows.append(
                    {
                        "model": f"tiny:{name}",
                        "dtype": dtype,
                        "tracks": tracks,
                        "planned_cache_bytes": tracks * shape.track_bytes,
                        "allocated_cache_bytes": decoder_bytes(decoder, engine.model),
                        "planned_weight_bytes": weights,
                        "loaded_weight_bytes": weight_bytes(engine.model),
                    }
                )
    return rows


def tensors_in(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [tensor for item in value for tensor in tensors_in(item)]
    if isinstance(value, dict):
        return tensors_in(list(value.values()))
    return []


class LiveBytes(TorchDispatchMode):
    """The peak bytes of the tensors made inside it and alive at once: what PyTorch's allocator must
    hold for them (before its rounding, and without libraries' workspaces). Views and in-place
    results of tensors made outside it (weights, the cache) do not count."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {StorageWeakRef(t.untyped_storage()).cdata for t in tensors_in([args, kwargs or {}])}
        self.live = {key: entry for key, entry in self.live.items() if not entry[0].expired()}
        for tensor in tensors_in(out):
            storage = StorageWeakRef(tensor.untyped_storage())
            if storage.cdata not in inputs:
                self.live.setdefault(storage.cdata, (storage, tensor.untyped_storage().nbytes()))
        self.peak = max(self.peak, sum(size for _, size in self.live.values()))
        return out


def encodec_on_meta(config: PreTrainedConfig) -> EncodecModel:
    """The model's EnCodec with its float weights on the meta device; its integer buffers (the convs'
    strides and paddings, which its forward reads as numbers) stay real."""
    model = EncodecModel(config.audio_encoder).to(DTYPE).eval()
    integers = {name: buffer for name, buffer in model.named_buffers() if not buffer.is_floating_point()}
    model.to("meta")
    for name, buffer in integers.items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner).register_buffer(leaf, buffer)
    return model


def decode_peak(codec: EncodecModel, seconds: float) -> int:
    """Live bytes of EnCodec decoding one track of `seconds`, as the engine decodes a finished track."""
    frames = round(seconds * codec.config.frame_rate)
    codes = torch.zeros(1, 1, codec.config.num_quantizers, frames, dtype=torch.long, device="meta")
    with torch.inference_mode(), LiveBytes() as counted:
        codec.decode(codes, audio_scales=[None])
    return counted.peak


def prefill_peak(config: PreTrainedConfig) -> tuple[int, int]:
    """Live bytes of a track's longest prefill (its prefix, then a next window's carried codes), and
    its positions."""
    shape = shape_for(config, DTYPE)
    decoder = StaticDecoder(model_on_meta(config, DTYPE), rows=2, capacity=shape.capacity)
    carried = shape.window_frames - round(EXTEND_STRIDE_S * config.audio_encoder.frame_rate)
    positions = shape.prefix_tokens + carried
    embeds = torch.zeros(2, positions, config.decoder.hidden_size, dtype=DTYPE, device="meta")
    with torch.inference_mode(), LiveBytes() as counted:
        decoder.prefill(embeds)
    return counted.peak, positions


def step_peak(config: PreTrainedConfig, tracks: int) -> int:
    """Live bytes of one token step of `tracks` tracks (decoder, guidance, sampling) over the whole
    cache, as a replica's running batch steps (and its CUDA graphs capture)."""
    shape = shape_for(config, DTYPE)
    decoder = StaticDecoder(model_on_meta(config, DTYPE), rows=2 * tracks, capacity=shape.capacity)
    pad_token = config.decoder.pad_token_id
    rows = TrackRows(decoder, pad_token, shape.window_frames + shape.codebooks, buckets=[])
    with torch.inference_mode(), LiveBytes() as counted:
        rows.step(0, tracks, shape.capacity, whole=False)
    return counted.peak


def transient_rows(tracks: int) -> list[dict[str, Any]]:
    """musicgen-melody's transients beside the cache, each alone (the replica's one thread runs them
    in turn). EnCodec's grow with the track: counted at 5 and 10 s, where its LSTM on the meta
    device is still quick, and carried on to the longest track."""
    config = real_config(SERVED)
    codec = encodec_on_meta(config)
    short, long = decode_peak(codec, 5.0), decode_peak(codec, 10.0)
    per_second = (long - short) / 5.0
    longest = round(long + per_second * (LONGEST_TRACK_S - 10.0))
    prefill, positions = prefill_peak(config)
    return [
        {"transient": "EnCodec decode, 5 s track", "gib": gib(short)},
        {"transient": "EnCodec decode, 10 s track", "gib": gib(long)},
        {"transient": f"EnCodec decode, {LONGEST_TRACK_S:.0f} s track (carried on)", "gib": gib(longest)},
        {"transient": f"prefill of one track, {positions} positions", "gib": gib(prefill)},
        {
            "transient": f"a step of {tracks} tracks over the whole cache",
            "gib": gib(step_peak(config, tracks)),
        },
        {"transient": "Reserve.working_bytes", "gib": gib(Reserve().working_bytes)},
    ]


def recorded_rows() -> list[dict[str, Any]]:
    """The recorded H200 run of musicgen-melody (an older engine; max_memory_allocated, a peak over
    the engine's life so far) against the plan's weights and cache: eager, a cache for the batch's
    tracks; CUDA graphs, a cache for the largest bucket (16). What is left is the working share."""
    recorded = json.loads(RECORDED.read_text())
    config = real_config(SERVED)
    shape, weights = shape_for(config, DTYPE), weight_bytes(model_on_meta(config, DTYPE))
    rows = []
    for run in recorded["runs"]:
        for row in (row for row in run.get("musicgen", []) if "peak_gib" in row):
            cached = 16 if row["variant"] == "cuda_graphs" else row["tracks"]
            planned = (weights + cached * shape.track_bytes) / GIB
            rows.append(
                {
                    "variant": row["variant"],
                    "tracks": row["tracks"],
                    "duration_s": row["duration_s"],
                    "cache_for": cached,
                    "recorded_peak_gib": round(row["peak_gib"], 2),
                    "planned_gib": round(planned, 2),
                    "above_plan_gib": round(row["peak_gib"] - planned, 2),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-transients", action="store_true", help="skip counting on the meta device")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    plans, tiny = plan_rows(), tiny_rows()
    served = next(
        row for row in plans if row["model"] == SERVED.removeprefix("facebook/") and row["gpu"] == "H100 80GB"
    )
    print_table(f"MusicGen memory plan, float16, reserve {Reserve()}", plans)
    print_table("Measured: the plan against the engine's allocations (tiny models, CPU)", tiny)
    transients = [] if args.no_transients else transient_rows(served["tracks"])
    if transients:
        print_table("Counted at musicgen-melody's size (meta device, float16): transients", transients)
    recorded = recorded_rows()
    print_table(f"Recorded H200 peaks ({RECORDED.name}) against the plan", recorded)
    batch = served_plan()
    print(
        f"\nserve_config.yaml, MusicGen ({SERVED}, {SERVED_ON}): max_batch_size {batch.tracks}, "
        f"batch_buckets {list(batch.buckets)}"
    )
    write_results(
        "musicgen_memory",
        {
            "reserve": vars(Reserve()),
            "plans": plans,
            "tiny": tiny,
            "transients": transients,
            "recorded": recorded,
            "served": served,
        },
    )


if __name__ == "__main__":
    main()
