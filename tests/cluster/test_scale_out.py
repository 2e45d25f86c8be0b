"""serve_config.yaml's deployment options, unchanged but for shorter autoscaling delays, on a 2-node
Ray cluster with 2 declared GPUs per node and simulated engines (leap_ray.testing.cluster): replicas
are placed one per GPU and spread over nodes, each model scales on its own load and back, the extra
replicas wait for a GPU when there is none, every node's proxy answers, and losing a node under load
loses no request and no job."""

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
import yaml
from ray import serve

from leap_ray.testing.cluster import (
    FAST_AUTOSCALING,
    FAST_AUTOSCALING_CONFIG,
    PRODUCTION_CONFIG,
    LocalCluster,
    deploy_and_wait,
    free_port,
    local_cluster,
    replicas,
    running_per_node,
    simulated_config,
)
from tests.helpers import pixels

pytestmark = [pytest.mark.integration, pytest.mark.cluster]
GPUS_PER_NODE = 2
# Model steps as on a GPU, only shorter: an SDXL image of 20 steps at 256² takes about 0.3 s.
ENGINES = {
    "sdxl": {"step_s": 0.012, "image_step_s": 0.02, "overhead_s": 0.05},
    "musicgen": {"token_s": 0.004, "track_token_s": 0.001, "overhead_s": 0.05},
}
IMAGE = {"prompt": "a lighthouse", "height": 256, "width": 256, "num_inference_steps": 20}
TRACK = {"prompt": "a drum loop", "duration": 1}
# The tests' clients share one address and stand for many clients: no per-client limits at the proxies.
MANY_CLIENTS = {"LEAP_RAY_RATE__REQUESTS_PER_S": "0", "LEAP_RAY_UPLOADS__PER_CLIENT": "10000"}


@dataclass
class Graph:
    cluster: LocalCluster
    url: str
    nodes: list[str]


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Graph]:
    with local_cluster(
        2, GPUS_PER_NODE, cpus_per_node=9, env={**FAST_AUTOSCALING, **MANY_CLIENTS}
    ) as cluster:
        port = free_port()
        config = simulated_config(
            port,
            tmp_path_factory.mktemp("cluster-jobs"),
            engine_kwargs=ENGINES,
            autoscaling=FAST_AUTOSCALING_CONFIG,
            jobs={"stale_after_s": 3.0},
        )
        deploy_and_wait(config)
        yield Graph(cluster, f"http://127.0.0.1:{port}", list(cluster.proxy_ports))


@dataclass
class Load:
    """Clients sending seeded requests in a loop until stopped, each retrying a 503 after its
    Retry-After as the README tells clients to; every status seen and every final answer is kept."""

    url: str
    path: str
    body: dict
    clients: int
    statuses: Counter = field(default_factory=Counter)
    answers: list[tuple[int, bytes]] = field(default_factory=list)  # (seed, content)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, client_index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as http:
            sent = 0
            while not self.stop.is_set():
                seed = (client_index * 1000 + sent) % 8
                self.answers.append((seed, self.send(http, seed)))
                sent += 1

    @property
    def accept(self) -> dict[str, str]:
        """The raw output: PNG of an image, WAV of a track."""
        return {"Accept": "image/png" if self.path == "/v1/sdxl" else "audio/wav"}

    def send(self, http: httpx.Client, seed: int) -> bytes:
        while True:
            response = http.post(self.path, json={**self.body, "seed": seed}, headers=self.accept)
            self.statuses[response.status_code] += 1
            if response.status_code == 200:
                return response.content
            if response.status_code != 503 or "retry-after" not in response.headers:
                self.failures.append(f"{response.status_code} {response.text[:200]}")
                return b""
            time.sleep(float(response.headers["retry-after"]))

    def __enter__(self) -> "Load":
        self.pool = ThreadPoolExecutor(self.clients)
        self.futures = [self.pool.submit(self.run, i) for i in range(self.clients)]
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for future in self.futures:
            future.result(timeout=180)
        self.pool.shutdown()


def proxy_ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
    except httpx.TransportError:
        return False


def quiet() -> bool:
    """Each model at one replica, and no replica starting or stopping."""
    found = replicas()
    settled = all(r["state"] == "RUNNING" for name in ("SDXL", "MusicGen") for r in found[name])
    return settled and running("SDXL") == 1 and running("MusicGen") == 1


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f} s; replicas: {running_per_node()}")
        time.sleep(0.25)


def running(deployment: str) -> int:
    return sum(running_per_node()[deployment].values())


def model_replicas_per_node() -> Counter[str]:
    placed = running_per_node()
    return placed["SDXL"] + placed["MusicGen"]


def deployments() -> list:
    return list(serve.status().applications["leap_ray"].deployments.values())


def test_replicas_are_spread_one_per_gpu_and_every_node_proxy_answers(graph: Graph) -> None:
    per_node = model_replicas_per_node()
    assert sum(per_node.values()) == 2 and len(per_node) == 2, per_node  # one model on each node
    for port in graph.cluster.proxy_ports.values():  # a worker node's proxy may start after the head's
        wait_for(lambda port=port: proxy_ready(port), 60, f"the proxy on port {port}")
    answer = httpx.post(f"{graph.url}/v1/sdxl", json={**IMAGE, "seed": 1}, timeout=60)
    assert answer.status_code == 200 and answer.json()["images"][0]["seed"] == 1


def burst_scales_alone(
    graph: Graph, deployment: str, other: str, path: str, body: dict, clients: int
) -> None:
    """A burst on one model: it gets every free GPU and asks for more (they wait, PENDING, with no
    node), the other model stays at one replica, every answer is 200, then it returns to one."""
    gpus = GPUS_PER_NODE * len(graph.nodes)
    with Load(graph.url, path, body, clients) as load:
        wait_for(lambda: running(deployment) == gpus - 1, 90, f"{deployment} on every free GPU")
        waiting = [r for r in replicas()[deployment] if r["state"] == "STARTING" and not r.get("node_id")]
        assert waiting, "the replica wanted beyond the GPUs should wait for one"
        assert running(other) == 1
        assert all(count <= GPUS_PER_NODE for count in model_replicas_per_node().values())
        time.sleep(2)  # requests now spread over every replica
    assert load.failures == [] and set(load.statuses) == {200}, (load.statuses, load.failures[:3])
    wait_for(lambda: running(deployment) == 1 and len(replicas()[deployment]) == 1, 60, "back to one replica")
    assert running(other) == 1


def clients_for_replicas(deployment: str, replicas: int) -> int:
    """Clients that keep `replicas` replicas of the deployment at its autoscaling target."""
    (app,) = yaml.safe_load(PRODUCTION_CONFIG.read_text())["applications"]
    (options,) = [each for each in app["deployments"] if each["name"] == deployment]
    return replicas * options["autoscaling_config"]["target_ongoing_requests"]


def test_a_burst_scales_each_model_on_its_own_and_back(graph: Graph) -> None:
    # Each burst wants 5 replicas, one more than the GPUs left beside the other model's replica.
    burst_scales_alone(graph, "SDXL", "MusicGen", "/v1/sdxl", IMAGE, clients_for_replicas("SDXL", 5))
    burst_scales_alone(graph, "MusicGen", "SDXL", "/v1/musicgen", TRACK, clients_for_replicas("MusicGen", 5))


def submit_jobs(url: str, job_input: dict, seeds: list[int]) -> dict[str, int]:
    """A job per seed: {job id: seed}."""
    jobs = {}
    with httpx.Client(base_url=url, timeout=30) as http:
        for seed in seeds:
            job = http.post("/v1/jobs", json={"service": "sdxl", "input": {**job_input, "seed": seed}})
            assert job.status_code == 202, job.text
            jobs[job.json()["id"]] = seed
    return jobs


def test_a_backlog_of_jobs_raises_the_replicas_it_needs_and_drains(graph: Graph) -> None:
    """Jobs run only as many at once as the running replicas batch; the rest wait in the store, and
    the autoscaling policy counts them: SDXL takes every free GPU, as as many requests would make it,
    every job succeeds, and SDXL returns to one replica."""
    gpus = GPUS_PER_NODE * len(graph.nodes)
    wait_for(quiet, 240, "the graph quiet after the bursts")  # their replicas gone, GPUs free
    jobs = submit_jobs(graph.url, IMAGE, list(range(120)))
    wait_for(lambda: running("SDXL") == gpus - 1, 90, "SDXL on every free GPU for the backlog")
    assert running("MusicGen") == 1
    outputs = job_outputs(graph.url, list(jobs), timeout_s=180)
    assert set(outputs) == set(jobs)
    wait_for(lambda: running("SDXL") == 1 and len(replicas()["SDXL"]) == 1, 60, "back to one replica")


def expected_images(url: str) -> dict[int, bytes]:
    with httpx.Client(base_url=url, timeout=60) as http:
        return {
            seed: http.post("/v1/sdxl", json={**IMAGE, "seed": seed}, headers={"Accept": "image/png"}).content
            for seed in range(8)
        }


def job_outputs(url: str, job_ids: list[str], timeout_s: float = 120) -> dict[str, bytes]:
    """Each job's image once it succeeded (waiting for every job to finish)."""
    outputs = {}
    with httpx.Client(base_url=url, timeout=60) as http:
        deadline = time.monotonic() + timeout_s
        while len(outputs) < len(job_ids) and time.monotonic() < deadline:
            for job_id in set(job_ids) - set(outputs):
                job = http.get(f"/v1/jobs/{job_id}").json()
                assert job["status"] in ("queued", "running", "succeeded"), job
                if job["status"] == "succeeded":
                    outputs[job_id] = http.get(f"/v1/jobs/{job_id}/outputs/0").content
            time.sleep(0.5)
    return outputs


def test_losing_a_node_under_load_loses_no_request_and_no_job(graph: Graph) -> None:
    expected = expected_images(graph.url)
    (ingress,) = replicas()["Ingress"]
    doomed = ingress["node_id"]  # the node running the ingress, and so its jobs
    with Load(graph.url, "/v1/sdxl", IMAGE, clients=12) as load:
        # A backlog: more jobs than the running replicas batch, most of them still queued in the store.
        jobs = submit_jobs(graph.url, {**IMAGE, "num_inference_steps": 60}, [n % 8 for n in range(40)])
        time.sleep(1)
        graph.cluster.kill_node(doomed)
        wait_for(lambda: running("Ingress") == 1 and running("SDXL") >= 1, 90, "the graph back on one node")
        time.sleep(3)
        graph.cluster.add_node(gpus=GPUS_PER_NODE, cpus=9)
        time.sleep(3)
    assert load.failures == [], load.failures[:3]
    assert set(load.statuses) <= {200, 503}, load.statuses  # 503s came with Retry-After, and were retried
    print(f"node loss under load: {dict(load.statuses)} over {len(load.answers)} requests")
    wrong = [seed for seed, image in load.answers if image != expected[seed]]
    assert len(load.answers) > 20 and wrong == []
    outputs = job_outputs(graph.url, list(jobs), timeout_s=240)
    assert set(outputs) == set(jobs)
    # The seed's image (the jobs ran 60 steps: their files' records say so, their pixels do not differ).
    assert all(
        np.array_equal(pixels(outputs[job_id]), pixels(expected[seed])) for job_id, seed in jobs.items()
    )
    # the cluster recovered: every deployment healthy, the new node's proxy answering
    wait_for(lambda: all(d.status == "HEALTHY" for d in deployments()), 60, "every deployment healthy")
    (new_port,) = [port for node, port in graph.cluster.proxy_ports.items() if node not in graph.nodes]
    wait_for(
        lambda: httpx.get(f"http://127.0.0.1:{new_port}/readyz", timeout=10).status_code == 200,
        60,
        "the returned node's proxy",
    )
