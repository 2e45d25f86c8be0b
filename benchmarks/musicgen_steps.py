"""What one MusicGen token step costs as the running batch grows, in-process (no Ray): torch
operations per step (counted with a TorchDispatchMode around `step()`; the decoder's own share
counted around a decoder step of the same rows) and milliseconds per step at 1, 4 and 16 tracks;
what a prefill between two steps costs in ordinary steps at 16 tracks (a joining melody track's
prefix; a long track's next window, 12 s of carried codes); and token-level against whole-request
batching on the same tracks, in-process, so the HTTP path's noise stays out of the ratio.

It uses only the running-batch contract and the decoder's public step, so it runs unchanged on an
older checkout (PYTHONPATH=<worktree>) for a side-by-side comparison.

    python -m benchmarks.musicgen_steps [--full-size]
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.common import MODEL_CPUS, arguments, models, print_table, write_results

if TYPE_CHECKING:  # the models load inside main(), after the arguments are read
    from leap_ray.engines.contract import RunningBatch
    from leap_ray.engines.musicgen import MusicGenEngine

TRACKS = (1, 4, 16)
MAX_LOAD = 8  # the benchmarks' max_batch_size (benchmarks.throughput's)
CARRIED_S = 12.0  # audiocraft's window minus its stride: the codes a next window prefills


class OperationCount(TorchDispatchMode):
    """Counts the torch operations dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def running(engine: MusicGenEngine, tracks: int) -> RunningBatch:
    """A running batch of `tracks` 30 s tracks, past their first tokens."""
    from leap_ray.api.musicgen import MusicGenRequest

    batch = engine.running_batch(max_load=max(TRACKS))
    for seed in range(tracks):
        request = MusicGenRequest(prompt="lo-fi beat", duration=30, seed=seed, top_k=250 - seed)
        assert batch.admit(request) is None
    for _ in range(3):
        batch.step()
    return batch


def synchronize(engine: MusicGenEngine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize()


def step_row(engine: MusicGenEngine, tracks: int, steps: int) -> dict:
    batch = running(engine, tracks)
    with OperationCount() as whole:
        batch.step()
    rows = 2 * tracks
    tokens = torch.zeros(rows, engine.codebooks, dtype=torch.long, device=engine.device)
    with OperationCount() as decoder:
        engine.decoder.step(tokens, torch.full((rows,), 10, device=engine.device))
    synchronize(engine)
    started = time.perf_counter()
    for _ in range(steps):
        batch.step()
    synchronize(engine)
    step_ms = (time.perf_counter() - started) / steps * 1000
    batch.clear()
    return {
        "tracks": tracks,
        "ops_per_step": whole.count,
        "decoder_ops": decoder.count,
        "ops_outside_decoder": whole.count - decoder.count,
        "step_ms": step_ms,
        "tokens_per_s": tracks * 1000 / step_ms,
    }


def prefill_rows(engine: MusicGenEngine, step_ms: float) -> list[dict]:
    """Prefills into one track's two rows, in steps of `step_ms` (ordinary token steps)."""
    hidden = engine.decoder.positions.shape[1]
    carried = round(CARRIED_S * engine.frame_rate)
    prefix = engine.prefix_tokens(16) if engine.has_melody else 0  # chroma + a 16-token prompt
    rows = []
    for name, positions in (
        ("join (conditioning prefix)", prefix),
        ("next window (12 s carried)", prefix + carried),
    ):
        if positions == 0:
            continue
        embeds = torch.zeros(2, positions, hidden, device=engine.device, dtype=engine.dtype)
        engine.decoder.prefill(embeds, first_row=0)
        synchronize(engine)
        started = time.perf_counter()
        engine.decoder.prefill(embeds, first_row=0)
        synchronize(engine)
        prefill_ms = (time.perf_counter() - started) * 1000
        rows.append(
            {
                "prefill": name,
                "positions": positions,
                "ms": prefill_ms,
                "in_steps": prefill_ms / step_ms,
            }
        )
    return rows


def token_batching(engine: MusicGenEngine, requests: list, places: int) -> None:
    """A track joins as soon as a place frees (`batching: step`)."""
    from leap_ray.engines.contract import run_to_end

    run_to_end(engine.running_batch(max_load=places), requests)


def whole_request_batching(engine: MusicGenEngine, requests: list, places: int) -> None:
    """A batch is admitted only once the last one is done (`batching: request`)."""
    from leap_ray.engines.contract import generate

    for first in range(0, len(requests), places):
        generate(engine, requests[first : first + places])


def token_vs_whole(engine: MusicGenEngine, rounds: int = 3) -> list[dict]:
    """Audio seconds per second in-process, token-level against whole-request batching, for the same
    tracks of 1, 2 and 3 s, up to MAX_LOAD at once; the modes alternate, best of `rounds`."""
    from leap_ray.api.musicgen import MusicGenRequest

    rows = []
    for concurrency in (1, 2, 4, 8, 16):
        places = min(concurrency, MAX_LOAD)
        requests = [
            MusicGenRequest(prompt="lo-fi beat", duration=1 + i % 3, seed=i) for i in range(4 * places)
        ]
        audio = sum(request.duration for request in requests)
        best = {token_batching: 0.0, whole_request_batching: 0.0}
        for _ in range(rounds):
            for run in best:
                started = time.perf_counter()
                run(engine, requests, places)
                best[run] = max(best[run], audio / (time.perf_counter() - started))
        token, whole = best[token_batching], best[whole_request_batching]
        rows.append(
            {
                "concurrency": concurrency,
                "token_audio_s_per_s": token,
                "whole_audio_s_per_s": whole,
                "token_over_whole": token / whole,
            }
        )
    return rows


def main() -> None:
    from leap_ray.engines.musicgen import MusicGenEngine

    args = arguments(__doc__)
    engine = MusicGenEngine(models(args)["musicgen-melody"], threads=MODEL_CPUS)
    with torch.inference_mode():
        steps = [step_row(engine, tracks, steps=40) for tracks in TRACKS]
        prefills = prefill_rows(engine, steps[-1]["step_ms"])
        batching = token_vs_whole(engine)
    first, last = steps[0], steps[-1]
    ratios = {
        "ops_16_over_1": last["ops_per_step"] / first["ops_per_step"],
        "step_ms_16_over_1": last["step_ms"] / first["step_ms"],
    }
    print_table("MusicGen token step by running tracks", steps)
    print_table("Prefill between steps, in 16-track steps", prefills)
    print_table("Token vs whole-request batching, in-process (audio s/s, best of 3)", batching)
    print(" ".join(f"{name} {value:.2f}" for name, value in ratios.items()))
    write_results("musicgen_steps", {"steps": steps, "prefills": prefills, "batching": batching, **ratios})


if __name__ == "__main__":
    main()
