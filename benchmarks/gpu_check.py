"""The device check: the engines' fast paths against plain eager, directly (no Ray, no HTTP), on
architecture-true random-weight SDXL base and MusicGen-melody built on the GPU, each through its
running batch (all requests admitted at once). MusicGen runs eager and with CUDA graphs.

    python -m benchmarks.gpu_check              # a GPU machine: full-size models, 1024², 10 s / 60 s
    python -m benchmarks.gpu_check --tiny       # anywhere: the tiny models, small sizes, same code

It needs none of Ray, FastAPI or the network, so it runs on a bare GPU machine with the carried
wheels (README: "GPU check"). Each section is skipped once --budget-s is spent, and the results are
written after every section (benchmarks/results/gpu_check.json, and $OUT when set), so a run cut
short still reports what it measured."""

import argparse
import gc
import json
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig

from benchmarks.common import RESULTS, machine, print_table
from benchmarks.compile_start import start
from benchmarks.musicgen_steps import prefill_rows, step_row
from leap_ray.api.musicgen import MusicGenRequest
from leap_ray.api.progress import AudioDelta
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.engines.contract import generate, run_to_end
from leap_ray.engines.musicgen import TEXT_TOKENS, WINDOW_S, MusicGenEngine
from leap_ray.engines.musicgen_memory import CacheShape, model_on_meta, weight_bytes
from leap_ray.engines.musicgen_memory import plan as memory_plan
from leap_ray.engines.musicgen_stream import snr_db
from leap_ray.engines.sdxl import SDXLEngine

# Sized from the H200 run of 2026-11-26 (benchmarks/recorded/) to about 7 minutes: compiling the
# SDXL UNet takes about 1.5 minutes per batch bucket on a fresh machine, and eager MusicGen's 60 s
# tracks took 2.6 minutes, so eager MusicGen runs the short tracks only (`short_durations`).
# --batches and --steps widen the SDXL grid.
FULL = {
    "size": 1024,
    "steps": [20, 50],
    "batches": [1, 4, 8],
    "durations": [10.0, 60.0],
    "short_durations": [10.0],
    "tracks": [1, 16, 64],
    "stream_s": 30.0,
}
TINY = {
    "size": 64,
    "steps": [4, 8],
    "batches": [1, 2, 4],
    "durations": [1.0, 3.0],
    "short_durations": [1.0],
    "tracks": [1, 4, 8],
    "stream_s": 3.0,
}


class Check:
    """The run's rows, its deadline, and its results file (rewritten after every section)."""

    def __init__(self, args: argparse.Namespace, plan: dict[str, Any]) -> None:
        self.plan, self.deadline = plan, time.monotonic() + args.budget_s
        self.results: dict[str, Any] = {"machine": machine(), "plan": plan, "sdxl": [], "musicgen": []}
        self.results["starts"] = []

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, section: str, row: dict[str, Any]) -> None:
        self.results[section].append(row)
        print(json.dumps(row), flush=True)
        self.save()

    def save(self) -> None:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / "gpu_check.json"
        path.write_text(json.dumps(self.results, indent=2))
        if os.environ.get("OUT"):
            shutil.copy(path, Path(os.environ["OUT"]) / path.name)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(work: Callable[[], Any]) -> tuple[Any, float]:
    synchronize()
    started = time.perf_counter()
    result = work()
    synchronize()
    return result, time.perf_counter() - started


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def free(*objects: Any) -> None:
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sdxl_batch(engine: SDXLEngine, images: int, steps: int, size: int) -> list[np.ndarray]:
    """`images` one-image requests run together through step batching, as a replica runs them."""
    requests = [
        SDXLRequest(prompt="a lighthouse", height=size, width=size, num_inference_steps=steps, seed=seed)
        for seed in range(images)
    ]
    return [result.images[0] for result in succeeded(generate(engine, requests))]


def succeeded(outcomes: list[Any]) -> list[Any]:
    """The outcomes, each a result: an error is raised."""
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
    return outcomes


def check_sdxl(check: Check, model: str, variant: str, options: dict[str, Any]) -> np.ndarray | None:
    """One engine variant over the plan's steps × batches; the first image of a seeded run (batch 1,
    the fewest steps) for comparing variants."""
    plan = check.plan
    engine, load_s = timed(lambda: SDXLEngine(model, **options))  # a compiled one warms up as it loads
    if engine.compiling is not None:  # timings only once no bucket compiles beside them
        engine.compiling.join()
    print(f"sdxl {variant}: loaded (and warmed up) in {load_s:.1f} s", flush=True)
    reference = None
    for images in plan["batches"]:
        for steps in plan["steps"]:
            if check.left_s() < 0:
                check.add("sdxl", {"variant": variant, "batch": images, "steps": steps, "skipped": "budget"})
                continue
            output, seconds = timed(lambda: sdxl_batch(engine, images, steps, plan["size"]))  # noqa: B023
            if reference is None:
                reference = output[0]
            check.add(
                "sdxl",
                {
                    "variant": variant,
                    "batch": images,
                    "steps": steps,
                    "seconds": seconds,
                    "s_per_image": seconds / images,
                    "images_per_s": images / seconds,
                    "finite": bool(all(np.isfinite(image).all() for image in output)),
                    "load_and_warm_up_s": load_s,
                    "peak_gib": peak_gib(),
                },
            )
    free(engine)
    return reference


def check_starts(check: Check, model: str, options: dict[str, Any], cache: Path) -> None:
    """SDXL replica starts, each a fresh process with an empty inductor cache (a new node): regional
    compilation cold (it saves the compile cache to `cache`) and with the cache carried, then whole-UNet
    compilation cold at the first bucket only (what a bucket costs without regional compilation)."""
    plan, work = check.plan, Path(tempfile.mkdtemp(prefix="starts-"))
    fast = json.dumps({name: options[name] for name in ("channels_last", "fuse_qkv")})
    runs = [("regional", "cold", plan["batches"]), ("regional", "new node", plan["batches"])]
    runs.append(("whole", "cold", plan["batches"][:1]))
    for mode, node, buckets in runs:
        row = {"mode": mode, "node": node, "buckets": buckets}
        if check.left_s() < 0:
            check.add("starts", {**row, "skipped": "budget"})
            continue
        replica = argparse.Namespace(size=plan["size"], buckets=buckets)
        figures = start(mode, model, replica, cache if mode == "regional" else work, work / "image.npy", fast)
        check.add("starts", {**row, **figures})


def check_musicgen(
    check: Check, model: str, variant: str, options: dict[str, Any], durations: str
) -> np.ndarray | None:
    """One engine variant over the plan's `durations` × tracks, in its running batch (at most
    `max_load` tracks at once, the rest joining as others finish); a greedy 1 s track for comparing;
    with CUDA graphs also the streaming, host-sync and prefill rows."""
    engine, load_s = timed(lambda: MusicGenEngine(model, **options))
    print(f"musicgen {variant}: loaded (and warmed up) in {load_s:.1f} s", flush=True)
    greedy_request = MusicGenRequest(prompt="a", duration=1.0, seed=0, top_k=1)
    greedy, _ = timed(lambda: succeeded(generate(engine, [greedy_request])))
    max_load = max(options.get("batch_buckets") or check.plan["tracks"])
    for tracks in check.plan["tracks"]:
        for duration in check.plan[durations]:
            row = {"variant": variant, "tracks": tracks, "duration_s": duration}
            if check.left_s() < 0:
                check.add("musicgen", {**row, "skipped": "budget"})
                continue
            requests = [
                MusicGenRequest(prompt="lo-fi beat", duration=duration, seed=s) for s in range(tracks)
            ]
            batch = engine.running_batch(max_load)
            results, seconds = timed(lambda: succeeded(run_to_end(batch, requests)))  # noqa: B023
            check.add(
                "musicgen",
                {
                    **row,
                    "seconds": seconds,
                    "x_real_time": tracks * duration / seconds,
                    "finite": bool(all(np.isfinite(result.waveform).all() for result in results)),
                    "load_and_warm_up_s": load_s,
                    "peak_gib": peak_gib(),
                },
            )
    if variant == "cuda_graphs" and check.left_s() > 0:
        check.results["musicgen_stream"] = stream_row(engine, check.plan["stream_s"])
        check.results["musicgen_host_sync"] = host_sync_row(engine, max(check.plan["tracks"][:2]))
        check.results["musicgen_prefill"] = prefill_row(engine, max(check.plan["tracks"][:2]))
        check.results["musicgen_seeded_solo_vs_batched"] = seeded_row(engine, max(check.plan["tracks"][:2]))
        check.save()
    free(engine)
    return greedy[0].waveform


def stream_row(engine: MusicGenEngine, duration: float) -> dict[str, Any]:
    """A track streamed alone: when its first piece of audio came, and how its pieces join."""
    pieces: list[tuple[float, AudioDelta]] = []
    started = time.perf_counter()

    def keep(event: object) -> None:
        if isinstance(event, AudioDelta):
            pieces.append((time.perf_counter() - started, event))

    request = MusicGenRequest(prompt="lo-fi beat", duration=duration, seed=1, stream=True)
    (result,) = succeeded(generate(engine, [request], progress=[keep]))
    whole_s = time.perf_counter() - started
    joined = np.concatenate([np.frombuffer(piece.pcm, dtype="<i2") / 32768.0 for _, piece in pieces])
    final = np.clip(result.waveform, -1, 1)
    return {
        "duration_s": duration,
        "first_chunk_s": pieces[0][0],
        "whole_s": whole_s,
        "pieces": len(pieces),
        "same_length": joined.shape == final.shape,
        "snr_db": snr_db(final, joined) if joined.shape == final.shape else None,
    }


def host_sync_row(engine: MusicGenEngine, tracks: int) -> dict[str, Any]:
    """Steady-state token steps of `tracks` tracks under torch's sync debug mode "error": any wait
    for the device inside them raises. (Off CUDA there is no device to wait for.)"""
    if engine.device.type != "cuda":
        return {"tracks": tracks, "steps": 0, "host_syncs": "no CUDA device"}
    batch = engine.running_batch(tracks)
    for seed in range(tracks):
        batch.admit(MusicGenRequest(prompt="lo-fi beat", duration=10, seed=seed))
    batch.step()
    synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(40):  # tokens 2-41: inside the first window, between progress reports
            batch.step()
        outcome = "none"
    except RuntimeError as error:
        outcome = str(error).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
        batch.clear()
    return {"tracks": tracks, "steps": 40, "host_syncs": outcome}


def seeded_row(engine: MusicGenEngine, tracks: int) -> dict[str, Any]:
    """A seeded, sampled 2 s track alone and as one of `tracks`: on a GPU the same noise, but kernels
    chosen by the batch's shape may round logits differently and flip a near-tie draw."""
    request = MusicGenRequest(prompt="lo-fi beat", duration=2.0, seed=11)
    (alone,) = succeeded(generate(engine, [request]))
    others = [MusicGenRequest(prompt="a drum loop", duration=2.0, seed=100 + s) for s in range(tracks - 1)]
    together = succeeded(generate(engine, [request, *others]))[0]
    return {
        "tracks": tracks,
        "equal": bool(np.array_equal(alone.waveform, together.waveform)),
        "max_difference": float(np.abs(alone.waveform - together.waveform).max()),
    }


def prefill_row(engine: MusicGenEngine, tracks: int) -> dict[str, Any]:
    """A token step at `tracks` tracks, and the prefills that run between steps, in such steps."""
    with torch.inference_mode():
        steps = step_row(engine, tracks, steps=40)
        return {
            "tracks": tracks,
            "step_ms": steps["step_ms"],
            "prefills": prefill_rows(engine, steps["step_ms"]),
        }


def musicgen_fit(model: str, tracks: int) -> int:
    """The most of `tracks` one batch holds on this GPU by the memory plan (all of them off CUDA)."""
    if not torch.cuda.is_available():
        return tracks
    config = AutoConfig.from_pretrained(model)
    shape = CacheShape.from_config(config, window_s=WINDOW_S, text_tokens=TEXT_TOKENS, dtype=torch.float16)
    weights = weight_bytes(model_on_meta(config, torch.float16))
    return min(tracks, memory_plan(shape, weights, torch.cuda.mem_get_info()[1]).tracks)


def section(check: Check, model: str, variant: str, run: Callable[[], Any]) -> Any:
    """Runs one section; a failure is recorded (and printed) instead of ending the check."""
    try:
        return run()
    except Exception as error:
        check.add(
            model, {"variant": variant, "error": "".join(traceback.format_exception_only(error)).strip()}
        )
        traceback.print_exc()
        free()
        return None


def max_difference(first: np.ndarray | None, second: np.ndarray | None) -> float | None:
    if first is None or second is None or first.shape != second.shape:
        return None
    return float(np.abs(first.astype(np.float64) - second.astype(np.float64)).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny models at small sizes (any machine)")
    parser.add_argument("--models", default="models/full-size", help="folder for the full-size models")
    parser.add_argument("--budget-s", type=float, default=420.0, help="sections after this are skipped")
    parser.add_argument("--only", default="", help="comma-separated sections, e.g. sdxl:compiled")
    parser.add_argument("--batches", default="", help="SDXL batch sizes instead of the plan's, e.g. 1,8")
    parser.add_argument("--steps", default="", help="SDXL step counts instead of the plan's, e.g. 20,50")
    args = parser.parse_args()
    plan = dict(TINY if args.tiny else FULL)
    for name in ("batches", "steps"):
        if getattr(args, name):
            plan[name] = [int(value) for value in getattr(args, name).split(",")]
    check = Check(args, plan)
    if args.tiny:
        from leap_ray.model_sources import tiny_model

        models = {name: str(tiny_model(name)) for name in ("sdxl", "musicgen-melody")}
    else:
        from leap_ray.tiny.full_size import write_full_size_models

        folders, build_s = timed(lambda: write_full_size_models(Path(args.models)))
        models = {name: str(folder) for name, folder in folders.items()}
        print(f"full-size models ready in {build_s:.1f} s", flush=True)
    buckets = {"batch_buckets": plan["batches"]}
    # The compiled engine loads the compile cache the starts saved: it is ready in seconds.
    cache = Path(tempfile.mkdtemp(prefix="compile-cache-"))
    fast = {**buckets, "compile": True, "channels_last": True, "fuse_qkv": True, "compile_cache": str(cache)}
    fast["warm_up_sizes"] = [[plan["size"], plan["size"]]]
    # Replica starts first (issue 27's figures), then the compiled SDXL with their cache, then the
    # rest; each section past the budget is skipped. A section that fails is recorded and the next runs.
    only = [name for name in args.only.split(",") if name]
    melody = models["musicgen-melody"]
    fit = musicgen_fit(melody, max(plan["tracks"]))
    eager = {"batch_buckets": [min(tracks, fit) for tracks in plan["tracks"]]}  # eager: the most at once
    graphs = {"cuda_graphs": True, **eager}
    sections = [
        ("sdxl", "starts", lambda: check_starts(check, models["sdxl"], fast, cache)),
        ("sdxl", "compiled", lambda: check_sdxl(check, models["sdxl"], "compiled", fast)),
        ("sdxl", "eager", lambda: check_sdxl(check, models["sdxl"], "eager", {})),
        ("musicgen", "eager", lambda: check_musicgen(check, melody, "eager", eager, "short_durations")),
        (
            "musicgen",
            "cuda_graphs",
            lambda: check_musicgen(check, melody, "cuda_graphs", graphs, "durations"),
        ),
    ]
    outputs = {}
    for model, variant, run in sections:
        if not only or f"{model}:{variant}" in only:
            outputs[model, variant] = section(check, model, variant, run)
    check.results["sdxl_compiled_vs_eager_max_diff"] = max_difference(
        outputs.get(("sdxl", "eager")), outputs.get(("sdxl", "compiled"))
    )
    check.results["musicgen_cuda_graphs_vs_eager_greedy_max_diff"] = max_difference(
        outputs.get(("musicgen", "eager")), outputs.get(("musicgen", "cuda_graphs"))
    )
    check.save()
    report(check.results)


def report(results: dict[str, Any]) -> None:
    starts = [row for row in results.get("starts", []) if "ready_s" in row]
    if starts:
        columns = ("mode", "node", "buckets", "ready_s", "all_buckets_s", "cache_loaded")
        rows = [{name: row[name] for name in columns} for row in starts]
        for row, start_row in zip(rows, starts, strict=True):
            row["graphs compiled"] = start_row["inductor"].get("fxgraph_cache_miss", 0)
        print_table("SDXL replica starts (fresh process, empty inductor cache)", rows)
    done = [row for row in results["sdxl"] if "seconds" in row]
    if done:
        device = results["machine"]["gpu"] or "CPU"
        print_table(
            f"SDXL {results['plan']['size']}², direct engine (step batching), {device}",
            [
                {
                    k: row[k]
                    for k in (
                        "variant",
                        "batch",
                        "steps",
                        "s_per_image",
                        "images_per_s",
                        "finite",
                        "peak_gib",
                    )
                }
                for row in done
            ],
        )
    done = [row for row in results["musicgen"] if "seconds" in row]
    if done:
        print_table(
            "MusicGen-melody, direct engine",
            [
                {
                    k: row[k]
                    for k in (
                        "variant",
                        "tracks",
                        "duration_s",
                        "seconds",
                        "x_real_time",
                        "finite",
                        "peak_gib",
                    )
                }
                for row in done
            ],
        )
    if stream := results.get("musicgen_stream"):
        print_table("MusicGen, a track streamed alone (CUDA graphs)", [stream])
    if sync := results.get("musicgen_host_sync"):
        print_table("MusicGen, steady-state steps under sync debug mode 'error'", [sync])
    if seeded := results.get("musicgen_seeded_solo_vs_batched"):
        print_table("MusicGen, a seeded sampled track alone vs in a batch", [seeded])
    if prefill := results.get("musicgen_prefill"):
        print_table(
            f"MusicGen prefills, in {prefill['tracks']}-track steps of {prefill['step_ms']:.2f} ms",
            prefill["prefills"],
        )
    print(
        "\nSDXL compiled vs eager, max |difference| (0-1 pixels):",
        results.get("sdxl_compiled_vs_eager_max_diff"),
    )
    print(
        "MusicGen cuda_graphs vs eager, greedy 1 s, max |difference|:",
        results.get("musicgen_cuda_graphs_vs_eager_greedy_max_diff"),
    )


if __name__ == "__main__":
    main()
