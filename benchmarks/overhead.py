"""What the serving layer adds to one request: p50/p95/p99 latency at concurrency 1 of the same
request as a direct engine call, a call to the model deployment's handle (one hop), a call to the
application's handle (ingress then model) and an HTTP call, interleaved so that noise hits all alike;
prints each p50 minus the direct p50 in ms. With --null-engine the model is a simulated engine that
takes no time (leap_ray.testing.simulated), so what is measured is the serving layer alone, and the
most requests/s that one proxy and one ingress sustain (closed loop, 32 clients) is measured too.

    python -m benchmarks.overhead [--full-size | --null-engine]
"""

import time

import httpx

from benchmarks.common import (
    MODEL_CPUS,
    SDXL_WORK,
    application,
    arguments,
    closed_loop,
    graph,
    models,
    print_table,
    write_results,
)
from leap_ray.loadtest import percentiles

ROUNDS = 40


NULL_SDXL = {
    "engine": "leap_ray.testing.simulated:SimulatedSDXLEngine",
    "engine_kwargs": {"step_s": 0.0, "image_step_s": 0.0, "overhead_s": 0.0},
}
SATURATION_CLIENTS, SATURATION_S = 32, 10.0


def main() -> None:
    from ray import serve

    from leap_ray.api.images import encode_image
    from leap_ray.api.sdxl import SDXLRequest

    args = arguments(__doc__, null_engine=True)
    folders = models(args)
    body = {**SDXL_WORK, "seed": 1}
    app = application("overhead", folders, 1)  # batching off: no batch wait, the serving layer alone
    if args.null_engine:
        from leap_ray.testing.simulated import SimulatedSDXLEngine

        app["args"]["sdxl"].update(NULL_SDXL)
        engine = SimulatedSDXLEngine(**NULL_SDXL["engine_kwargs"])
    else:
        from leap_ray.engines.contract import generate
        from leap_ray.engines.sdxl import SDXLEngine

        engine = SDXLEngine(folders["sdxl"], threads=MODEL_CPUS)
    with graph(app) as base, httpx.Client(timeout=120) as client:
        handle = serve.get_app_handle("overhead")
        model_handle = serve.get_deployment_handle("SDXL", "overhead")  # one hop: no ingress

        def direct() -> None:
            (result,) = generate(engine, [SDXLRequest(**body)])
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
        saturation = None
        if args.null_engine:
            url = f"{base}/overhead/v1/sdxl"
            saturation = closed_loop(url, body, 1.0, SATURATION_CLIENTS, SATURATION_S)
    rows = [{"path": name, **percentiles(values)} for name, values in latencies.items()]
    direct_p50 = rows[0]["p50_ms"]
    for row in rows:
        row["p50_over_direct_ms"] = row["p50_ms"] - direct_p50
    engine_name = "null engine" if args.null_engine else "SDXL"
    print_table(f"Latency of one request at concurrency 1 ({ROUNDS} rounds, {engine_name})", rows)
    results = {"workload": SDXL_WORK, "rounds": ROUNDS, "null_engine": args.null_engine, "latency": rows}
    if saturation is not None:
        rate, failures = saturation
        print(
            f"\nmost requests/s through one proxy and one ingress ({SATURATION_CLIENTS} clients): {rate:.0f}"
        )
        results["saturation"] = {"clients": SATURATION_CLIENTS, "requests_per_s": rate, "failures": failures}
    write_results("overhead", results)


if __name__ == "__main__":
    main()
