"""What the serving layer adds to one request: p50/p95/p99 latency at concurrency 1 of the same
request as a direct engine call, a call to the model deployment's handle (one hop), a call to the
application's handle (ingress then model) and an HTTP call, interleaved so that noise hits all alike;
prints each p50 minus the direct p50 in ms.

    python -m benchmarks.overhead [--full-size]
"""

import time

import httpx

from benchmarks.common import (
    MODEL_CPUS,
    SDXL_WORK,
    application,
    arguments,
    graph,
    models,
    percentiles,
    print_table,
    write_results,
)

ROUNDS = 40


def main() -> None:
    from ray import serve

    from leap_ray.api.images import encode_image
    from leap_ray.api.sdxl import SDXLRequest
    from leap_ray.engines.sdxl import SDXLEngine

    args = arguments(__doc__)
    folders = models(args)
    body = {**SDXL_WORK, "seed": 1}
    # Batching off (max_batch_size 1): no batch wait, so the difference is the serving layer alone.
    with graph(application("overhead", folders, 1)) as base, httpx.Client(timeout=120) as client:
        engine = SDXLEngine(folders["sdxl"], threads=MODEL_CPUS)
        handle = serve.get_app_handle("overhead")
        model_handle = serve.get_deployment_handle("SDXL", "overhead")  # one hop: no ingress

        def direct() -> None:
            (result,) = engine.generate([SDXLRequest(**body)])
            encode_image(result.images[0], "png")  # the replica encodes too

        calls = {
            "direct": direct,
            "model_handle": lambda: model_handle.generate.remote(SDXLRequest(**body)).result(),
            "handle": lambda: handle.sdxl.remote(body).result(),
            "http": lambda: client.post(f"{base}/overhead/v1/sdxl", json=body).raise_for_status(),
        }
        latencies: dict[str, list[float]] = {name: [] for name in calls}
        for call in calls.values():
            call()  # warm up
        for _ in range(ROUNDS):
            for name, call in calls.items():
                started = time.perf_counter()
                call()
                latencies[name].append(time.perf_counter() - started)
    rows = [{"path": name, **percentiles(values)} for name, values in latencies.items()]
    direct_p50 = rows[0]["p50_ms"]
    for row in rows:
        row["p50_over_direct_ms"] = row["p50_ms"] - direct_p50
    print_table(f"Latency of one request at concurrency 1 ({ROUNDS} rounds)", rows)
    write_results("overhead", {"workload": SDXL_WORK, "rounds": ROUNDS, "latency": rows})


if __name__ == "__main__":
    main()
