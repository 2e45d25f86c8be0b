"""Jobs at cluster scale, on a simulated cluster: serve_config.yaml (its backlog autoscaling policy
included) on 2 nodes of 4 simulated GPUs, the models swapped for simulated H200 engines
(leap_ray.testing.simulated), the autoscaling delays shortened to fit a run. Three parts:

1. N jobs against N concurrent synchronous requests (SDXL 1024², 20 steps, one image each), each
   from one SDXL replica: SDXL replicas over time, their peak, and the drain time (from the first
   submission to the last answer, or the last job's `finished_at`);
2. fairness: key B's one job submitted behind key A's backlog; B's time to finish against the same
   job on an idle queue, in job run times;
3. job polling: GET /v1/jobs/{id} requests a second and p50/p99 through one proxy and ingress.

Run: `python -m benchmarks.jobs_scale` (N = 160 and 1,000, a backlog of 500; about 10 minutes);
`--quick`: N = 160 and a backlog of 100."""

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.common import print_table, write_results
from leap_ray.testing.cluster import (
    FAST_AUTOSCALING,
    FAST_AUTOSCALING_CONFIG,
    deploy_and_wait,
    free_port,
    local_cluster,
    running_per_node,
    simulated_config,
)

NODES, GPUS_PER_NODE = 2, 4
IMAGE = {"prompt": "a lighthouse", "height": 1024, "width": 1024, "num_inference_steps": 20}
KEYS = {"a": "sk-bench-tenant-a", "b": "sk-bench-tenant-b"}
CONNECTIONS = 64  # a client's connections for submitting and polling
# The per-client rate limit off (0): a benchmark's one client stands for many.
UNLIMITED = {"LEAP_RAY_RATE__REQUESTS_PER_S": "0"}


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def sdxl_replicas() -> int:
    return sum(running_per_node()["SDXL"].values())


class ReplicaTimeline:
    """SDXL's running replicas, sampled every half second while a case runs."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.stop.wait(0.5):
            self.samples.append((round(time.monotonic() - self.started, 1), sdxl_replicas()))

    def __enter__(self) -> "ReplicaTimeline":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def peak(self) -> int:
        return max((count for _, count in self.samples), default=0)


def wait_for_one_replica(timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while sdxl_replicas() != 1:
        if time.monotonic() > deadline:
            raise TimeoutError(f"SDXL did not scale back to one replica: {running_per_node()}")
        time.sleep(1)


async def send_until_answered(
    http: httpx.AsyncClient, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    """The request, again after its Retry-After while it gets 503 or 429 (as the README tells clients)."""
    while True:
        response = await http.request(method, path, **kwargs)
        if response.status_code not in (429, 503):
            return response
        await asyncio.sleep(float(response.headers.get("retry-after", "1")))


def client(url: str, tenant: str, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, headers=auth(tenant), timeout=900, limits=limits)


async def synchronous_burst(url: str, n: int) -> dict[str, Any]:
    started = time.time()
    async with client(url, "a", n) as http:
        answers = await asyncio.gather(
            *(send_until_answered(http, "POST", "/v1/sdxl", json={**IMAGE, "seed": i}) for i in range(n))
        )
    failed = [answer.status_code for answer in answers if answer.status_code != 200]
    return {"drain_s": time.time() - started, "failed": failed}


async def submit(http: httpx.AsyncClient, n: int, seed_from: int = 0) -> list[str]:
    async def one(seed: int) -> str:
        body = {"service": "sdxl", "input": {**IMAGE, "seed": seed}}
        response = await send_until_answered(http, "POST", "/v1/jobs", json=body)
        response.raise_for_status()
        return response.json()["id"]

    return await asyncio.gather(*(one(seed_from + i) for i in range(n)))


async def finished(http: httpx.AsyncClient, job_ids: list[str]) -> list[dict[str, Any]]:
    """The jobs once every one has finished (their records: status, created_at, finished_at...)."""
    while True:
        pending = [
            (await http.get("/v1/jobs", params={"status": s, "limit": 1})).json()
            for s in ("queued", "running")
        ]
        if not any(pending):
            break
        await asyncio.sleep(0.5)
    return list(await asyncio.gather(*(http.get(f"/v1/jobs/{job_id}") for job_id in job_ids)))


async def job_burst(url: str, n: int) -> dict[str, Any]:
    started = time.time()
    async with client(url, "a", CONNECTIONS) as http:
        job_ids = await submit(http, n)
        jobs = [response.json() for response in await finished(http, job_ids)]
    failed = [job["status"] for job in jobs if job["status"] != "succeeded"]
    return {"drain_s": max(job["finished_at"] for job in jobs) - started, "failed": failed}


def scale_case(url: str, n: int) -> dict[str, Any]:
    """N synchronous requests, then N jobs, each from one SDXL replica."""
    result = {}
    for mode, burst in (("synchronous", synchronous_burst), ("jobs", job_burst)):
        wait_for_one_replica()
        with ReplicaTimeline() as timeline:
            outcome = asyncio.run(burst(url, n))
        result[mode] = {**outcome, "peak_replicas": timeline.peak, "replicas": timeline.samples}
        print(f"N={n} {mode}: drain {outcome['drain_s']:.1f} s, peak {timeline.peak} SDXL replicas")
    return result


async def lone_job(http: httpx.AsyncClient, seed: int) -> dict[str, Any]:
    (job_id,) = await submit(http, 1, seed)
    (response,) = await finished(http, [job_id])
    return response.json()


async def fairness(url: str, backlog: int) -> dict[str, Any]:
    """Key B's one job, on an idle queue and then submitted behind key A's `backlog` jobs."""
    async with client(url, "a", CONNECTIONS) as tenant_a, client(url, "b", 4) as tenant_b:
        idle = await lone_job(tenant_b, seed=10_000)
        flood = await submit(tenant_a, backlog)
        behind = await lone_job(tenant_b, seed=10_001)
        flooded = [response.json() for response in await finished(tenant_a, flood)]
    loaded_run_s = float(np.median([job["timings"]["run_s"] for job in flooded]))
    idle_s = idle["finished_at"] - idle["created_at"]
    behind_s = behind["finished_at"] - behind["created_at"]
    return {
        "backlog": backlog,
        "idle_job_s": idle_s,
        "job_behind_backlog_s": behind_s,
        "job_run_s_under_load": loaded_run_s,
        "extra_in_run_times": (behind_s - idle_s) / loaded_run_s,
        "a_jobs_finished_before_b": sum(job["finished_at"] < behind["finished_at"] for job in flooded),
    }


async def polling(url: str, seconds: float, connections: int) -> dict[str, Any]:
    """Clients polling one finished job as fast as they can, over `connections` connections."""
    async with client(url, "a", connections) as http:
        (job_id,) = await submit(http, 1)
        await finished(http, [job_id])
        latencies: list[float] = []
        deadline = time.monotonic() + seconds

        async def poll() -> None:
            while time.monotonic() < deadline:
                sent = time.perf_counter()
                response = await http.get(f"/v1/jobs/{job_id}")
                response.raise_for_status()
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(poll() for _ in range(connections)))
    return {
        "connections": connections,
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
    }


def deploy(port: int, folder: Path) -> str:
    keys = folder / "keys.txt"
    keys.write_text("\n".join(KEYS.values()) + "\n")
    config = simulated_config(port, folder, autoscaling=FAST_AUTOSCALING_CONFIG)
    config.applications[0].args["ingress"]["api_keys_file"] = str(keys)
    deploy_and_wait(config)
    return f"http://127.0.0.1:{port}"


def scale_table(cases: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "N": n,
            "sync peak replicas": case["synchronous"]["peak_replicas"],
            "jobs peak replicas": case["jobs"]["peak_replicas"],
            "sync drain s": case["synchronous"]["drain_s"],
            "jobs drain s": case["jobs"]["drain_s"],
            "jobs / sync drain": case["jobs"]["drain_s"] / case["synchronous"]["drain_s"],
        }
        for n, case in cases.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="N = 160 only and a backlog of 100")
    args = parser.parse_args()
    sizes, backlog = ([160], 100) if args.quick else ([160, 1000], 500)
    folder = Path(tempfile.mkdtemp(prefix="jobs-scale-"))
    env = {**FAST_AUTOSCALING, **UNLIMITED}
    with local_cluster(NODES, GPUS_PER_NODE, cpus_per_node=4 * GPUS_PER_NODE + 2, env=env):
        url = deploy(free_port(), folder)
        cases = {n: scale_case(url, n) for n in sizes}
        title = f"N jobs vs N synchronous requests ({NODES} nodes x {GPUS_PER_NODE} simulated GPUs)"
        print_table(title, scale_table(cases))
        wait_for_one_replica()
        fair = asyncio.run(fairness(url, backlog))
        print_table("Fairness: key B's one job behind key A's backlog", [fair])
        polled = asyncio.run(polling(url, seconds=10, connections=32))
        print_table("Polling GET /v1/jobs/{id} through one proxy and ingress", [polled])
    write_results("jobs_scale", {"cases": cases, "fairness": fair, "polling": polled, "image": IMAGE})


if __name__ == "__main__":
    main()
