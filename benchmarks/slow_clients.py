"""Slow clients that reconnect, over HTTP on the local graph: /healthz and a valid SDXL request (64²,
4 steps) idle, then while `--clients` (550) connections each send the headers of a 1,000-byte body
and one byte, then nothing, and open a new connection as soon as theirs is answered (408, 429 or
503). The attackers come from `--addresses` loopback addresses (127.0.0.2, ...), so per-address limits
alone cannot stop them. Targets: /healthz <= 100 ms and the valid request <= 2x its idle latency.

    python -m benchmarks.slow_clients [--clients 550] [--addresses 200] [--seconds 20]
"""

import argparse
import asyncio
import statistics
import threading
import time
from collections import Counter
from typing import Any

import httpx

from benchmarks.common import application, graph, models, print_table, write_results

VALID = {"prompt": "a lighthouse", "height": 64, "width": 64, "num_inference_steps": 4}
HEAD = (
    "POST /slow/v1/sdxl HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    "Content-Length: 1000\r\n\r\n{"
)


async def slow_client(port: int, address: str, stop: threading.Event, answers: Counter) -> None:
    """Opens a connection, sends a body's first byte, waits for the answer; again, until stopped."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
            writer.write(HEAD.encode())
            await writer.drain()
            status = (await reader.readline()).split(b" ")[1:2]
            answers[status[0].decode() if status else "closed"] += 1
            writer.close()
        except OSError:
            answers["refused"] += 1
            await asyncio.sleep(0.01)


def attack(port: int, clients: int, addresses: int, stop: threading.Event, answers: Counter) -> None:
    async def run() -> None:
        sources = [f"127.0.0.{2 + index % addresses}" for index in range(clients)]
        tasks = [asyncio.ensure_future(slow_client(port, source, stop, answers)) for source in sources]
        while not stop.is_set():
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())


def latencies(client: httpx.Client, base: str, healthz_rounds: int, valid_rounds: int) -> dict[str, float]:
    def timed(call: Any) -> float:
        started = time.perf_counter()
        response = call()
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.text}")
        return (time.perf_counter() - started) * 1000

    health = [timed(lambda: client.get(f"{base}/healthz")) for _ in range(healthz_rounds)]
    valid = [
        timed(lambda seed=seed: client.post(f"{base}/v1/sdxl", json={**VALID, "seed": seed}))
        for seed in range(valid_rounds)
    ]
    return {
        "healthz_p50_ms": statistics.median(health),
        "healthz_max_ms": max(health),
        "valid_p50_ms": statistics.median(valid),
        "valid_max_ms": max(valid),
    }


def under_attack(client: httpx.Client, base: str, clients: int, addresses: int, seconds: float) -> dict:
    """The latencies while the slow clients attack, and what the attackers were answered."""
    stop, answers = threading.Event(), Counter()
    port = int(base.rsplit(":", 1)[1])
    attacker = threading.Thread(target=attack, args=(port, clients, addresses, stop, answers))
    attacker.start()
    time.sleep(seconds)  # every attacker connected, many answered and back
    try:
        measured = latencies(client, f"{base}/slow", 20, 5)
    finally:
        stop.set()
        attacker.join()
    answered = " ".join(f"{status}: {count}" for status, count in sorted(answers.items()))
    return {"phase": f"{clients} slow clients from {addresses} addresses", **measured, "answered": answered}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=550)
    parser.add_argument("--addresses", default="200,1", help="loopback addresses the attackers use, per run")
    parser.add_argument("--seconds", type=float, default=20.0, help="attack time before measuring")
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--models", default=None)
    args = parser.parse_args()
    folders = models(args)
    with graph(application("slow", folders, max_batch_size=8, batching="step")) as base:
        with httpx.Client(timeout=120) as client:
            latencies(client, f"{base}/slow", 3, 2)  # warm up
            rows = [{"phase": "idle", **latencies(client, f"{base}/slow", 20, 5)}]
            for addresses in (int(count) for count in args.addresses.split(",")):
                rows.append(under_attack(client, base, args.clients, addresses, args.seconds))
    for row in rows:
        row["valid_vs_idle"] = row["valid_p50_ms"] / rows[0]["valid_p50_ms"]
    print_table("Slow reconnecting clients, local graph, tiny SDXL (ms)", rows)
    write_results("slow_clients", {"clients": args.clients, "seconds": args.seconds, "rows": rows})


if __name__ == "__main__":
    main()
