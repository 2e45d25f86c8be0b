import time

import httpx

SLOW = {"engine": "leap_ray.testing.fakes:SlowStartSDXLEngine", "engine_kwargs": {"load_delay_s": 8}}


def test_readyz_is_false_while_a_model_loads_and_true_after(graph):
    graph.deploy_with(graph.variant("slow", sdxl=SLOW), wait=False)
    try:
        answers = []
        deadline = time.monotonic() + 240
        with httpx.Client(base_url=graph.url, timeout=30) as client:
            while time.monotonic() < deadline and not (answers and answers[-1] == 200):
                response = client.get("/slow/readyz")
                if response.status_code in (200, 503) and "ready" in response.text:
                    answers.append(response.status_code)
                    if response.status_code == 503:
                        assert response.json()["models"]["sdxl"]["running_replicas"] == 0
                time.sleep(0.5)
        assert answers[0] == 503 and answers[-1] == 200
    finally:
        graph.deploy_with()  # back to the main application alone
