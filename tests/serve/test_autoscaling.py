"""The application's autoscaling policy: Serve's default, a model's queued jobs counted as its ongoing
requests (as the ingress replicas report them)."""

from ray.serve._private.common import DeploymentID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from leap_ray.serve.autoscaling import QUEUED_JOBS, backlog_policy

TARGET = 8


def context(name: str, replicas: int, ongoing: float, metrics: dict | None = None) -> AutoscalingContext:
    return AutoscalingContext(
        deployment_id=DeploymentID(name=name, app_name="leap_ray"),
        deployment_name=name,
        app_name="leap_ray",
        current_num_replicas=replicas,
        target_num_replicas=replicas,
        running_replicas=[],
        total_num_requests=ongoing,
        total_queued_requests=0,
        aggregated_metrics=metrics or {},
        raw_metrics={},
        capacity_adjusted_min_replicas=0,
        capacity_adjusted_max_replicas=8,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=None,
        config=AutoscalingConfig(min_replicas=0, max_replicas=8, target_ongoing_requests=TARGET),
    )


def decide(*contexts: AutoscalingContext) -> dict[str, float]:
    decisions, _ = backlog_policy({c.deployment_id: c for c in contexts})
    return {deployment.name: replicas for deployment, replicas in decisions.items()}


def ingress(replicas: int, **queued: list[float]) -> AutoscalingContext:
    metrics = {QUEUED_JOBS + name: dict(enumerate(values)) for name, values in queued.items()}
    return context("Ingress", replicas, ongoing=4, metrics=metrics)


def test_without_jobs_each_deployment_gets_serves_default_decision():
    decisions = decide(ingress(1), context("SDXL", 2, ongoing=24), context("MusicGen", 1, ongoing=0))
    assert decisions == {"Ingress": 4 / TARGET, "SDXL": 24 / TARGET, "MusicGen": 0}


def test_queued_jobs_count_as_their_models_ongoing_requests():
    decisions = decide(ingress(1, SDXL=[144]), context("SDXL", 2, ongoing=16), context("MusicGen", 1, 0))
    assert decisions["SDXL"] == (16 + 144) / TARGET  # as 160 requests would
    assert decisions["MusicGen"] == 0


def test_the_backlog_is_the_largest_any_ingress_replica_reported():
    # Each reads the shared store; one that has not read it yet reports less.
    decisions = decide(ingress(3, SDXL=[0, 40, 38]), context("SDXL", 1, ongoing=8))
    assert decisions["SDXL"] == (8 + 40) / TARGET


def test_a_backlog_starts_a_model_scaled_to_zero_and_no_work_leaves_it_there():
    assert decide(ingress(1, MusicGen=[3]), context("MusicGen", 0, ongoing=0))["MusicGen"] == 3 / TARGET
    assert decide(ingress(1), context("MusicGen", 0, ongoing=0))["MusicGen"] == 0
