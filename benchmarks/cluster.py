"""Scaling out on a simulated cluster: serve_config.yaml's deployments on a multi-node Ray cluster of
this machine with declared GPUs, the models swapped for simulated engines whose steps take an H200's
measured time (leap_ray.testing.simulated). Three parts:

1. capacity vs GPUs: each model on 1, 2, 4, 8 GPUs (replicas fixed), closed-loop clients keeping
   every batch full; throughput and scaling efficiency against linear;
2. open-loop Poisson load at 70 % of the largest capacity measured: p50/p99 per model;
3. autoscaling: serve_config's own autoscaling (its downscale delay shortened to fit a run), a
   quiet - burst - quiet load, sampled every second: offered load, replicas per model, p99. Writes
   the timeline as JSON and draws it as a PNG.

With `--startup-s 360 20`, instead: the autoscaling timeline's burst once per replica start-up time
(the simulated engines' `startup_s`, a real replica's compile and warm-up: ~6 min on a cold compile
cache, ~20 s with a carried one), each on a fresh graph; a table of when the new replicas came up and
who served the burst, both timelines side by side in one PNG.

Run: `python -m benchmarks.cluster` (about 12 minutes; `--quick` for a short check: phases and
start-up times at 0.3 of their length)."""

import argparse
import asyncio
import random
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np
from ray import serve

from benchmarks.common import RESULTS, print_table, write_results
from leap_ray.loadtest import open_loop
from leap_ray.testing.cluster import (
    SIMULATED_ENGINES,
    deploy_and_wait,
    free_port,
    local_cluster,
    replicas,
    running_per_node,
    simulated_config,
)

GPUS_PER_NODE = 4
# Work whose batches fill a GPU: SDXL 1024², 20 steps, 4 images (two requests per batch of 8);
# MusicGen 10 s tracks, batches of 4. Units: images and seconds of audio.
WORK = {
    "SDXL": (
        "/v1/sdxl",
        {
            "prompt": "a lighthouse",
            "height": 1024,
            "width": 1024,
            "num_inference_steps": 20,
            "num_images_per_prompt": 4,
        },
        4.0,
    ),
    "MusicGen": ("/v1/musicgen", {"prompt": "a drum loop", "duration": 10.0}, 10.0),
}
CLIENTS_PER_GPU = {"SDXL": 4, "MusicGen": 8}  # a batch running and the next one queued
# The benchmark's one client address stands for many: no per-client limits at the proxies.
MANY_CLIENTS = {"LEAP_RAY_RATE__REQUESTS_PER_S": "0", "LEAP_RAY_UPLOADS__PER_CLIENT": "10000"}
APPLICATION = "leap_ray"
# How long after a burst begins, beyond a replica's start-up, its new replicas may take to run: the
# scale-up decision (~20 s: upscale_delay_s and the metrics' look-back) and Ray starting the actor.
STARTUP_WATCH_S = 60.0


def fixed_replicas(replicas: int) -> dict[str, dict[str, Any]]:
    autoscaling = {"min_replicas": replicas, "max_replicas": replicas, "initial_replicas": replicas}
    return {name: {"autoscaling_config": autoscaling} for name in WORK}


async def saturate(url: str, name: str, clients: int, seconds: float) -> list[float]:
    """Closed-loop clients, back to back; the completion times of the 200s."""
    path, body, _ = WORK[name]
    done: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client_loop(http: httpx.AsyncClient, index: int) -> None:
        while time.perf_counter() < deadline:
            response = await http.post(f"{url}{path}", json={**body, "seed": index})
            if response.status_code == 200:
                done.append(time.perf_counter())

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(*(client_loop(http, i) for i in range(clients)))
    return done


def steady_rate(completions: list[float], warm_up_s: float, started: float) -> float:
    """Completions per second after the warm-up, from the first completion to the last (those at the
    first instant not counted): batches end in groups, so counting in a fixed window would be off by
    up to a batch per replica."""
    times = sorted(t for t in completions if t >= started + warm_up_s)
    later = [t for t in times if t > times[0]] if times else []
    return len(later) / (times[-1] - times[0]) if later else 0.0


def wait_for_replicas(wanted: Callable[[dict[str, int]], bool], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not wanted({name: sum(running_per_node()[name].values()) for name in WORK}):
        if time.monotonic() > deadline:
            raise TimeoutError(f"replicas: {running_per_node()}")
        time.sleep(1)


def capacity(port: int, jobs: Path, gpus: int, seconds: float) -> dict[str, Any]:
    deploy_and_wait(simulated_config(port, jobs, deployments=fixed_replicas(gpus)))
    wait_for_replicas(lambda running: all(count == gpus for count in running.values()))
    url = f"http://127.0.0.1:{port}"
    nodes = {name: len(counts) for name, counts in running_per_node().items() if name in WORK}

    async def both() -> list[list[float]]:
        return await asyncio.gather(*(saturate(url, n, CLIENTS_PER_GPU[n] * gpus, seconds) for n in WORK))

    started = time.perf_counter()
    completions = dict(zip(WORK, asyncio.run(both()), strict=True))
    warm_up = min(seconds / 3, 20.0)
    return {
        "gpus": gpus,
        "nodes": nodes,
        "per_s": {
            name: steady_rate(done, warm_up, started) * WORK[name][2] for name, done in completions.items()
        },
    }


def capacity_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = rows[0]
    table = []
    for row in rows:
        scale = row["gpus"] / base["gpus"]
        table.append(
            {
                "GPUs per model": row["gpus"],
                "nodes (SDXL/MusicGen)": f"{row['nodes']['SDXL']}/{row['nodes']['MusicGen']}",
                "SDXL images/s": row["per_s"]["SDXL"],
                "SDXL efficiency": row["per_s"]["SDXL"] / (scale * base["per_s"]["SDXL"]),
                "MusicGen audio s/s": row["per_s"]["MusicGen"],
                "MusicGen efficiency": row["per_s"]["MusicGen"] / (scale * base["per_s"]["MusicGen"]),
            }
        )
    return table


def mixed_requests(share: dict[str, float]):
    names, weights = list(share), list(share.values())

    def next_request(rng: random.Random, index: int) -> tuple[str, dict, str]:
        name = rng.choices(names, weights)[0]
        path, body, _ = WORK[name]
        return path, {**body, "seed": index}, name

    return next_request


def poisson(url: str, request_rates: dict[str, float], seconds: float) -> dict[str, Any]:
    """Open-loop Poisson arrivals of both models at the given request rates."""
    total = sum(request_rates.values())
    share = {name: rate / total for name, rate in request_rates.items()}
    return asyncio.run(open_loop(url, total, seconds, random.Random(7), mixed_requests(share), drain_s=300))


class Answer(NamedTuple):
    """A request's answer; times in seconds from the timeline's start."""

    at: float
    model: str
    latency: float
    status: int
    engine_up_at: float | None  # when the engine that answered (a 200) had come up


class Timeline:
    """Samples, every second: per model the replicas RUNNING and those wanted (RUNNING or STARTING),
    and the requests answered since."""

    def __init__(self) -> None:
        self.samples: list[dict[str, Any]] = []
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self.started = time.perf_counter()

    def sample(self) -> None:
        while not self.stop.wait(1.0):
            found = replicas()
            states = {name: [r["state"] for r in found[name]] for name in WORK}
            self.samples.append(
                {
                    "t": time.perf_counter() - self.started,
                    "replicas": {name: states[name].count("RUNNING") for name in WORK},
                    "wanted": {
                        name: sum(s in ("RUNNING", "STARTING") for s in states[name]) for name in WORK
                    },
                }
            )


async def phases(url: str, plan: list[tuple[float, dict[str, float]]], timeline: Timeline) -> dict[str, Any]:
    """Poisson arrivals following `plan` (seconds, request rate per model); records each answer."""
    statuses: dict[str, int] = defaultdict(int)
    rng = random.Random(11)

    async def one(http: httpx.AsyncClient, name: str, index: int) -> None:
        path, body, _ = WORK[name]
        sent = time.perf_counter()
        response = await http.post(f"{url}{path}", json={**body, "seed": index})
        statuses[str(response.status_code)] += 1
        at = time.perf_counter() - timeline.started
        # The simulated engines say how long they have been up: which replicas served the burst.
        up_s = response.json()["timings"]["engine_up_s"] if response.status_code == 200 else None
        up_at = at - up_s if up_s is not None else None
        timeline.answers.append(Answer(at, name, time.perf_counter() - sent, response.status_code, up_at))

    tasks = []
    async with httpx.AsyncClient(timeout=900, limits=httpx.Limits(max_connections=None)) as http:
        phase_start = time.perf_counter()
        for seconds, rates in plan:
            total = sum(rates.values())
            next_at = rng.expovariate(total)
            while next_at < seconds:
                await asyncio.sleep(max(0.0, next_at - (time.perf_counter() - phase_start)))
                name = rng.choices(list(rates), list(rates.values()))[0]
                tasks.append(asyncio.create_task(one(http, name, len(tasks))))
                next_at += rng.expovariate(total)
            phase_start += seconds
        await asyncio.wait(tasks, timeout=600)
    return dict(statuses)


def autoscaling(
    port: int, jobs: Path, one_gpu: dict[str, float], scale: float, startup_s: float = 0.0
) -> dict[str, Any]:
    """serve_config's autoscaling as is, but for a 30 s downscale delay (300 s in the file); every
    replica (the first ones too) takes `startup_s` to start."""
    engines = {part: {"startup_s": startup_s} for part in SIMULATED_ENGINES}
    config = simulated_config(port, jobs, engine_kwargs=engines, autoscaling={"downscale_delay_s": 30})
    deploy_and_wait(config, timeout_s=300 + startup_s)
    wait_for_replicas(lambda running: all(count == 1 for count in running.values()))
    request_rate = {name: per_s / WORK[name][2] for name, per_s in one_gpu.items()}  # of one GPU
    quiet = {name: 0.3 * rate for name, rate in request_rate.items()}
    burst = {name: 4 * rate for name, rate in request_rate.items()}
    plan = [(20 * scale, quiet), (90 * scale, burst), (90 * scale, quiet)]
    timeline = Timeline()
    sampler = threading.Thread(target=timeline.sample, daemon=True)
    sampler.start()
    statuses = asyncio.run(phases(f"http://127.0.0.1:{port}", plan, timeline))
    burst_at = plan[0][0]
    # A long start-up can outlast the burst's answers: watch on until its replicas could be up.
    watch_until = burst_at + startup_s + STARTUP_WATCH_S
    time.sleep(max(0.0, watch_until - (time.perf_counter() - timeline.started)))
    timeline.stop.set()
    sampler.join()
    answered = [a for a in timeline.answers if a.status == 200]
    for sample in timeline.samples:
        window = [a.latency for a in answered if sample["t"] - 5 < a.at <= sample["t"]]
        sample["p99_s"] = float(np.percentile(window, 99)) if window else None
        sample["offered_per_s"] = sum(offered_at(plan, sample["t"]).values())
    decided = {name: more_than_one(timeline.samples, "wanted", name, burst_at) for name in WORK}
    scaled_up = {name: more_than_one(timeline.samples, "replicas", name, burst_at) for name in WORK}
    return {
        "plan": plan,
        "startup_s": startup_s,
        "statuses": statuses,
        "samples": timeline.samples,
        "scaled_up_after_s": scaled_up,
        "all_up_after_s": {name: most_up_after(timeline.samples, name, burst_at) for name in WORK},
        "decided_after_s": decided,
        "upscale_delay_s": 10,
        "most_replicas": {name: max(s["replicas"][name] for s in timeline.samples) for name in WORK},
        "burst": burst_answers(timeline.answers, plan),
    }


def more_than_one(samples: list[dict[str, Any]], key: str, name: str, since: float) -> float | None:
    """Seconds after `since` until a sample had more than one replica (of `key`) of model `name`."""
    return next((s["t"] - since for s in samples if s["t"] > since and s[key][name] > 1), None)


def most_up_after(samples: list[dict[str, Any]], name: str, since: float) -> float | None:
    """Seconds after `since` until model `name` first had the most replicas RUNNING it had after
    `since` (its last new replica up); None if it never had more than one."""
    later = [s for s in samples if s["t"] > since]
    most = max((s["replicas"][name] for s in later), default=0)
    return next(s["t"] - since for s in later if s["replicas"][name] == most) if most > 1 else None


def burst_answers(answers: list[Answer], plan: list[tuple[float, dict[str, float]]]) -> dict[str, Any]:
    """Per model, the requests sent during the burst (the plan's second phase): latency of the 200s,
    how many of them replicas up before the burst (old) and after its start (new) served, the others."""
    start, end = plan[0][0], plan[0][0] + plan[1][0]
    summary = {}
    for name in WORK:
        sent = [a for a in answers if a.model == name and start <= a.at - a.latency < end]
        served = [a for a in sent if a.status == 200]
        latencies = [a.latency for a in served]
        summary[name] = {
            "p50_s": float(np.percentile(latencies, 50)) if served else None,
            "p99_s": float(np.percentile(latencies, 99)) if served else None,
            "by_old": sum(a.engine_up_at is not None and a.engine_up_at <= start for a in served),
            "by_new": sum(a.engine_up_at is not None and a.engine_up_at > start for a in served),
            "not_200": len(sent) - len(served),
        }
    return summary


def startup_table(runs: list[dict[str, Any]], stands_for: list[float]) -> list[dict[str, Any]]:
    """One row per start-up time and model; `stands_for`: the real start-up each run's was scaled from."""
    rows = []
    for run, real_s in zip(runs, stands_for, strict=True):
        for name in WORK:
            burst, not_in_run = run["burst"][name], "not in run"
            second, last = run["scaled_up_after_s"][name], run["all_up_after_s"][name]
            rows.append(
                {
                    "start-up s": f"{run['startup_s']:g}",
                    "stands for": real(real_s),
                    "model": name,
                    "burst at s": run["plan"][0][0],
                    "2nd RUNNING +s": not_in_run if second is None else second,
                    "last RUNNING +s": not_in_run if last is None else last,
                    "most wanted": max(sample["wanted"][name] for sample in run["samples"]),
                    "most running": run["most_replicas"][name],
                    "burst p50 s": burst["p50_s"],
                    "burst p99 s": burst["p99_s"],
                    "by old": burst["by_old"],
                    "by new": burst["by_new"],
                    "not 200": burst["not_200"],
                }
            )
    return rows


def real(seconds: float) -> str:
    """A real start-up time as people say it: 6 min, 20 s."""
    return f"{seconds / 60:g} min" if seconds >= 120 else f"{seconds:g} s"


def offered_at(plan: list[tuple[float, dict[str, float]]], t: float) -> dict[str, float]:
    for seconds, rates in plan:
        if t < seconds:
            return rates
        t -= seconds
    return {}


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def draw(result: dict[str, Any], path: Path) -> None:
    figure, axes = pyplot().subplots(3, 1, sharex=True, figsize=(8, 7))
    plot_timeline(axes, result)
    figure.suptitle("Autoscaling on a simulated cluster (serve_config.yaml, simulated H200 engines)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"wrote {path}")


def draw_side_by_side(results: list[dict[str, Any]], titles: list[str], path: Path) -> None:
    """One column per run, on shared axes: the same burst under different replica start-ups."""
    figure, axes = pyplot().subplots(3, len(results), sharex=True, sharey="row", squeeze=False)
    figure.set_size_inches(6 * len(results), 7)
    for column, result, title in zip(axes.T, results, titles, strict=True):
        plot_timeline(column, result)
        column[0].set_title(title)
    figure.suptitle("The same burst, replicas starting slowly and quickly (simulated cluster)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"wrote {path}")


def plot_timeline(axes: Any, result: dict[str, Any]) -> None:
    """Offered load, replicas running (and wanted) per model and p99 latency over time, on three axes."""
    samples = result["samples"]
    t = [s["t"] for s in samples]
    load, replicas, latency = axes
    if "plan" in result:  # the burst, shaded
        burst_at, burst_s = result["plan"][0][0], result["plan"][1][0]
        for axis in axes:
            axis.axvspan(burst_at, burst_at + burst_s, color="tab:red", alpha=0.08)
    load.step(t, [s["offered_per_s"] for s in samples], where="post")
    load.set_ylabel("offered requests/s")
    for name in WORK:
        (running,) = replicas.step(t, [s["replicas"][name] for s in samples], where="post", label=name)
        wanted = [s["wanted"][name] for s in samples]  # dashed: asked for, still starting
        replicas.step(t, wanted, where="post", linestyle="--", color=running.get_color(), alpha=0.6)
    replicas.set_ylabel("replicas running (--: wanted)")
    replicas.legend()
    latency.plot(t, [s["p99_s"] for s in samples])
    latency.set_ylabel("p99 latency, s (5 s window)")
    latency.set_xlabel("seconds")


def scaling_benchmark(
    port: int, jobs: Path, nodes: int, gpus: list[int], seconds: float, scale: float
) -> None:
    """Parts 1-3: capacity vs GPUs, Poisson at 70 %, the autoscaling timeline."""
    rows = [capacity(port, jobs, n, seconds) for n in gpus]
    table = capacity_table(rows)
    print_table(f"Capacity vs GPUs ({nodes} nodes of {GPUS_PER_NODE} simulated GPUs)", table)
    largest = rows[-1]
    deploy_and_wait(simulated_config(port, jobs, deployments=fixed_replicas(largest["gpus"])))
    rates = {name: 0.7 * per_s / WORK[name][2] for name, per_s in largest["per_s"].items()}
    loaded = poisson(f"http://127.0.0.1:{port}", rates, seconds * 1.5)
    print_table(
        f"Poisson arrivals at 70 % of capacity, {largest['gpus']} GPUs per model",
        [{"model": name, "requests/s": rates[name], **loaded["latency"].get(name, {})} for name in WORK],
    )
    print("statuses:", loaded["statuses"])
    scaling = autoscaling(port, jobs, rows[0]["per_s"], scale)
    print(
        "autoscaling:",
        {k: scaling[k] for k in ("decided_after_s", "scaled_up_after_s", "most_replicas", "statuses")},
    )
    write_results(
        "cluster",
        {
            "nodes": nodes,
            "gpus_per_node": GPUS_PER_NODE,
            "capacity": rows,
            "table": table,
            "poisson_70": {"rates": rates, **loaded},
            "autoscaling": scaling,
        },
    )
    draw(scaling, RESULTS / "cluster_autoscaling.png")


def delete_graph(timeout_s: float) -> None:
    """Deletes the application and waits until it is gone: a replica still in its engine's constructor
    stops only once that returns, later than serve.delete's own wait (60 s) may allow."""
    serve.delete(APPLICATION, _blocking=False)
    deadline = time.monotonic() + timeout_s
    while APPLICATION in serve.status().applications:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{APPLICATION} was not deleted in {timeout_s:g} s")
        time.sleep(1)


def startup_benchmark(
    port: int, jobs: Path, nodes: int, stands_for: list[float], seconds: float, scale: float
) -> None:
    """The autoscaling timeline once per replica start-up time (each `stands_for` × `scale`), each
    on a fresh graph, so that every run starts from one replica a model."""
    one_gpu = capacity(port, jobs, 1, seconds)  # the burst's rate: 4 × one GPU's capacity
    runs = []
    for real_s in stands_for:
        delete_graph(timeout_s=max(stands_for) * scale + 120)  # the last run's replicas gone: a fresh graph
        runs.append(autoscaling(port, jobs, one_gpu["per_s"], scale, startup_s=real_s * scale))
    table = startup_table(runs, stands_for)
    print_table(f"The same burst, replica start-ups of {stands_for} s at scale {scale}", table)
    write_results(
        "cluster_startup",
        {
            "nodes": nodes,
            "gpus_per_node": GPUS_PER_NODE,
            "scale": scale,
            "stands_for_s": stands_for,
            "one_gpu": one_gpu,
            "table": table,
            "runs": runs,
        },
    )
    titles = [f"start-up {run['startup_s']:g} s ({real(s)})" for run, s in zip(runs, stands_for, strict=True)]
    draw_side_by_side(runs, titles, RESULTS / "cluster_startup.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8], help="GPUs per model")
    parser.add_argument("--seconds", type=float, default=60, help="each capacity measurement")
    parser.add_argument("--quick", action="store_true", help="a short check: 1 and 2 GPUs, short phases")
    parser.add_argument(
        "--startup-s",
        type=float,
        nargs="+",
        help="replica start-up times to compare under one burst, e.g. 360 20 (scaled as the phases are)",
    )
    args = parser.parse_args()
    gpus, seconds, scale = (args.gpus, args.seconds, 1.0) if not args.quick else ([1, 2], 20.0, 0.3)
    nodes = max(2, -(-2 * max(gpus) // GPUS_PER_NODE))  # both models at the most GPUs, 2 nodes at least
    jobs = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    port = free_port()
    RESULTS.mkdir(exist_ok=True)
    with local_cluster(nodes, GPUS_PER_NODE, cpus_per_node=4 * GPUS_PER_NODE + 2, env=MANY_CLIENTS):
        if args.startup_s:
            startup_benchmark(port, jobs, nodes, args.startup_s, seconds, scale)
        else:
            scaling_benchmark(port, jobs, nodes, gpus, seconds, scale)


if __name__ == "__main__":
    main()
