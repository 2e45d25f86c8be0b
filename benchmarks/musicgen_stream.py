"""MusicGen audio streamed while it is generated, over HTTP on an idle graph (`batching: step`, the
local config), one request at a time: the time to the first `audio.delta` event of a 30 s and of a
10 s track (`stream: true`), against the whole time of a 1 s track (plain JSON) and of the 30 s
track streamed to its `result` (and not streamed: what streaming adds); p50 and min of ROUNDS rounds
each, with the engine's own generate time from the answer's timings. Each streamed track is also
checked: its pieces, decoded and joined, are exactly as many samples as the final WAV holds (and
their SNR against it is stated). The target: first piece of a 30 s track / whole 1 s track <= 2.

    python -m benchmarks.musicgen_stream [--full-size]
"""

import base64
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import soundfile
from httpx_sse import connect_sse

from benchmarks.common import application, arguments, graph, models, print_table, write_results

ROUNDS = 5
PROMPT = "lo-fi beat with warm piano"
CASES = {  # name: (duration in seconds, streamed)
    "30 s streamed": (30.0, True),
    "10 s streamed": (10.0, True),
    "1 s plain": (1.0, False),
    "30 s plain": (30.0, False),  # what streaming adds to the whole time
}
TARGET_RATIO = 2.0  # first piece of the 30 s track / whole 1 s track, the target


@dataclass
class Run:
    """One request: when its first piece and its answer arrived, and whether its pieces join."""

    whole_s: float
    generate_s: float  # the engine's own time for the track (the answer's timings.generate_s)
    first_audio_s: float | None = None
    first_piece_s: float | None = None  # seconds of audio the first piece carries
    pieces: list[np.ndarray] = field(default_factory=list)
    final: np.ndarray | None = None  # the result's track, int16 samples

    @property
    def joins(self) -> bool:
        return self.final is not None and sum(len(p) for p in self.pieces) == len(self.final)

    def snr_db(self) -> float | None:
        """The pieces joined against the final track, in dB (inf when sample for sample equal); None
        when their lengths differ."""
        if not self.joins or self.final is None:
            return None
        joined = np.concatenate(self.pieces).astype(np.float64)
        final = self.final.astype(np.float64)
        noise = float(np.sum((joined - final) ** 2))
        return float("inf") if noise == 0 else float(10 * np.log10(np.sum(final**2) / noise))


def wav_samples(audio_base64: str) -> np.ndarray:
    samples, _ = soundfile.read(io.BytesIO(base64.b64decode(audio_base64)), dtype="int16")
    return samples


def plain(client: httpx.Client, url: str, body: dict[str, Any]) -> Run:
    started = time.perf_counter()
    response = client.post(url, json=body)
    response.raise_for_status()
    whole_s = time.perf_counter() - started
    return Run(whole_s=whole_s, generate_s=response.json()["timings"]["generate_s"])


def streamed(client: httpx.Client, url: str, body: dict[str, Any]) -> Run:
    """The events of a `stream: true` request, timed from before the request is sent."""
    started = time.perf_counter()
    run = Run(whole_s=float("nan"), generate_s=float("nan"))
    with connect_sse(client, "POST", url, json={**body, "stream": True}) as source:
        source.response.raise_for_status()
        for event in source.iter_sse():
            if event.event == "audio.delta":
                data = json.loads(event.data)
                piece = np.frombuffer(base64.b64decode(data["audio"]), dtype="<i2")
                if run.first_audio_s is None:
                    run.first_audio_s = time.perf_counter() - started
                    run.first_piece_s = len(piece) / data["sample_rate"]
                run.pieces.append(piece)
            elif event.event == "result":
                run.whole_s = time.perf_counter() - started
                result = json.loads(event.data)
                run.generate_s = result["timings"]["generate_s"]
                run.final = wav_samples(result["audio"])
            elif event.event == "error":
                raise RuntimeError(f"the stream failed: {event.data}")
    if run.final is None:
        raise RuntimeError("the stream ended without a result")
    return run


def ms(values: list[float], how: str) -> float | None:
    if not values:
        return None
    return float(np.median(values) if how == "p50" else np.min(values)) * 1000


def row(case: str, runs: list[Run]) -> dict[str, Any]:
    firsts = [r.first_audio_s for r in runs if r.first_audio_s is not None]
    wholes = [r.whole_s for r in runs]
    is_streamed = bool(firsts)
    return {
        "case": case,
        "first_audio_p50_ms": ms(firsts, "p50"),
        "first_audio_min_ms": ms(firsts, "min"),
        "whole_p50_ms": ms(wholes, "p50"),
        "whole_min_ms": ms(wholes, "min"),
        "engine_generate_p50_ms": ms([r.generate_s for r in runs], "p50"),
        "first_piece_s": runs[0].first_piece_s,
        "pieces": len(runs[0].pieces) if is_streamed else None,
        "pieces_join": all(r.joins for r in runs) if is_streamed else None,
        "join_snr_db_min": worst_snr(runs) if is_streamed else None,
    }


def worst_snr(runs: list[Run]) -> float | str | None:
    """The lowest SNR of the joined pieces over the runs: "exact" when every run's pieces are the
    final track's samples (JSON has no infinity), None when some run's lengths differ."""
    snrs = [r.snr_db() for r in runs]
    if any(s is None for s in snrs):
        return None
    worst = min(s for s in snrs if s is not None)
    return "exact" if worst == float("inf") else worst


def measure(client: httpx.Client, url: str) -> list[dict[str, Any]]:
    """Every case once to warm up, then ROUNDS rounds of each case in turn (seeds differ by round)."""
    runs: dict[str, list[Run]] = {case: [] for case in CASES}
    for seed in range(-1, ROUNDS):
        for case, (duration, stream) in CASES.items():
            body = {"prompt": PROMPT, "duration": duration, "seed": max(seed, 0)}
            run = streamed(client, url, body) if stream else plain(client, url, body)
            if seed >= 0:
                runs[case].append(run)
    return [row(case, case_runs) for case, case_runs in runs.items()]


def main() -> None:
    args = arguments(__doc__)
    folders = models(args)
    app = application("stream", folders, max_batch_size=4, batching="step")
    with graph(app) as base, httpx.Client(timeout=600) as client:
        rows = measure(client, f"{base}/stream/v1/musicgen")
    by_case = {r["case"]: r for r in rows}
    first_30, whole_1 = by_case["30 s streamed"], by_case["1 s plain"]
    ratio = {
        "p50": first_30["first_audio_p50_ms"] / whole_1["whole_p50_ms"],
        "min": first_30["first_audio_min_ms"] / whole_1["whole_min_ms"],
    }
    print_table("MusicGen streaming over HTTP, one request at a time (batching: step)", rows)
    verdict = "met" if ratio["p50"] <= TARGET_RATIO else "missed"
    print(
        f"\nfirst piece of 30 s / whole 1 s: {ratio['p50']:.3g} (p50), {ratio['min']:.3g} (min); "
        f"target <= {TARGET_RATIO:g}: {verdict}"
    )
    write_results(
        "musicgen_stream",
        {
            "rounds": ROUNDS,
            "batching": "step",
            "target_ratio": TARGET_RATIO,
            "first_audio_30s_over_whole_1s": ratio,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
