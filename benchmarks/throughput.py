"""Throughput, side by side in one run: the engines called in-process at batch sizes 1-8 (the
ceiling), then the same work over HTTP from a closed-loop load generator at concurrency 1-16,
with batches of whole requests ("batched", `batching: request`), with max_batch_size 1 ("unbatched")
and with step-level batching ("step": SDXL denoising steps, MusicGen tokens). Prints served / ceiling,
the ceiling being the better of two measurements, before and after the served rows.

    python -m benchmarks.throughput [--full-size]
"""

import time
from collections.abc import Callable

from benchmarks.common import (
    MODEL_CPUS,
    MUSIC_WORK,
    SDXL_WORK,
    application,
    arguments,
    closed_loop,
    graph,
    models,
    print_table,
    write_results,
)

BATCHES = (1, 2, 4, 8)
CONCURRENCY = (1, 2, 4, 8, 16)
SECONDS = 5.0


def timed(run: Callable[[], float], seconds: float) -> float:
    """Units of work per second from calling `run` (which returns the units it did) for `seconds`."""
    done, started = 0.0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += run()
    return done / (time.perf_counter() - started)


def direct_ceiling(folders: dict[str, str]) -> dict[str, list[dict]]:
    from leap_ray.api.audio import encode_audio
    from leap_ray.api.images import encode_image
    from leap_ray.api.musicgen import MusicGenRequest
    from leap_ray.api.sdxl import SDXLRequest
    from leap_ray.engines.contract import generate
    from leap_ray.engines.musicgen import MusicGenEngine
    from leap_ray.engines.sdxl import SDXLEngine

    sdxl = SDXLEngine(folders["sdxl"], threads=MODEL_CPUS)
    music = MusicGenEngine(folders["musicgen-melody"], threads=MODEL_CPUS)

    def images(batch: int) -> float:
        requests = [SDXLRequest(**SDXL_WORK, seed=i) for i in range(batch)]
        for result in generate(sdxl, requests):  # encoded, as the service does
            [encode_image(pixels, "png") for pixels in result.images]
        return float(batch)

    def audio_seconds(batch: int) -> float:
        requests = [MusicGenRequest(**MUSIC_WORK, seed=i) for i in range(batch)]
        for result in generate(music, requests):
            encode_audio(result.waveform, result.sample_rate, "wav")
        return batch * MUSIC_WORK["duration"]

    rows: dict[str, list[dict]] = {"sdxl": [], "musicgen": []}
    for batch in BATCHES:
        images(batch), audio_seconds(batch)  # warm up this shape
        rows["sdxl"].append({"batch": batch, "images_per_s": timed(lambda b=batch: images(b), SECONDS)})
        rows["musicgen"].append(
            {"batch": batch, "audio_s_per_s": timed(lambda b=batch: audio_seconds(b), SECONDS)}
        )
    return rows


def served(base: str) -> dict[str, list[dict]]:
    workloads = {
        "sdxl": ("/v1/sdxl", SDXL_WORK, 1.0),
        "musicgen": ("/v1/musicgen", MUSIC_WORK, MUSIC_WORK["duration"]),
    }
    apps = {model: ("batched", "unbatched", "step") for model in workloads}
    rows: dict[str, list[dict]] = {"sdxl": [], "musicgen": []}
    for model, (path, body, units) in workloads.items():
        for app in apps[model]:
            closed_loop(f"{base}/{app}{path}", body, units, 2, SECONDS)  # warm up
        for concurrency in CONCURRENCY:
            rates = {
                app: closed_loop(f"{base}/{app}{path}", body, units, concurrency, SECONDS)
                for app in apps[model]
            }
            row: dict = {"concurrency": concurrency}
            row.update({f"{app}_per_s": rate for app, (rate, _) in rates.items()})
            row["batched_over_unbatched"] = rates["batched"][0] / rates["unbatched"][0]
            row["failures"] = sum(failed for _, failed in rates.values())
            rows[model].append(row)
    return rows


def pair_rows(before: dict[str, list[dict]], after: dict[str, list[dict]], model: str) -> list[dict]:
    """The ceiling measured before and after the served rows, side by side per batch size."""
    return [
        {**first, **{f"{key}_after": value for key, value in second.items() if key != "batch"}}
        for first, second in zip(before[model], after[model], strict=True)
    ]


def best(ceiling_rows: dict[str, list[dict]]) -> dict[str, float]:
    return {
        "sdxl": max(row["images_per_s"] for row in ceiling_rows["sdxl"]),
        "musicgen": max(row["audio_s_per_s"] for row in ceiling_rows["musicgen"]),
    }


def main() -> None:
    args = arguments(__doc__)
    folders = models(args)
    ceiling_rows = direct_ceiling(folders)
    with graph(
        application("batched", folders, 8),
        application("unbatched", folders, 1, batch_wait_s=0.0),
        application("step", folders, 8, batching="step"),
    ) as base:
        served_rows = served(base)
        # The ceiling again, once the served rows are done (the replicas idle): on a shared machine the
        # load can change within a run, and a served / ceiling ratio is only as good as its ceiling.
        after_rows = direct_ceiling(folders)
    before, after = best(ceiling_rows), best(after_rows)
    ceiling = {model: max(before[model], after[model]) for model in before}
    for model, rows in served_rows.items():
        for row in rows:
            row.update(
                {f"{app}_over_ceiling": row[f"{app}_per_s"] / ceiling[model] for app in ("batched", "step")}
            )
    print_table(
        "Direct ceiling, SDXL (images/s), before / after", pair_rows(ceiling_rows, after_rows, "sdxl")
    )
    print_table(
        "Direct ceiling, MusicGen (audio seconds/s), before / after",
        pair_rows(ceiling_rows, after_rows, "musicgen"),
    )
    print_table("Served over HTTP, SDXL (images/s)", served_rows["sdxl"])
    print_table("Served over HTTP, MusicGen (audio seconds/s)", served_rows["musicgen"])
    summary = {
        model: {
            "ceiling_per_s": ceiling[model],
            "best_batched_over_ceiling": max(row["batched_over_ceiling"] for row in served_rows[model]),
            "best_step_over_ceiling": max(
                row.get("step_over_ceiling", float("nan")) for row in served_rows[model]
            ),
            "batched_within_5pct_of_unbatched_or_faster": all(
                row["batched_over_unbatched"] >= 0.95 for row in served_rows[model]
            ),
        }
        for model in ceiling
    }
    print_table("Summary", [{"model": model, **values} for model, values in summary.items()])
    write_results(
        "throughput",
        {
            "workloads": {"sdxl": SDXL_WORK, "musicgen": MUSIC_WORK},
            "direct": ceiling_rows,
            "direct_after": after_rows,
            "served": served_rows,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
