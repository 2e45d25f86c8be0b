"""The application's autoscaling policy (serve_config.yaml: `autoscaling_policy`): Serve's default for
every deployment (its ongoing requests over its `target_ongoing_requests`), where a model's queued
jobs count as ongoing requests too. The job runners claim only what the model's running replicas
batch (leap_ray.serve.jobs.capacity), so the rest of a backlog waits in the job store, where Serve
does not see it; the ingress replicas report it (`record_autoscaling_stats`), each reading the shared
store, and this policy adds it. A backlog of N jobs then asks for as many replicas as N requests.

Serve imports this module in its controller and pickles it by value: it imports nothing of leap_ray.
Serve applies each deployment's bounds, delays and scaling factors to what it returns."""

from ray.serve.config import AutoscalingContext

QUEUED_JOBS = "queued_jobs:"  # + a model deployment's name: the ingress's metric of its backlog


def queued_jobs(contexts: dict) -> dict[str, float]:
    """Queued jobs per model deployment, the largest any ingress replica reported (all read the same
    store; a replica that has not read it yet reports nothing)."""
    backlog: dict[str, float] = {}
    for context in contexts.values():
        for metric, per_replica in (context.aggregated_metrics or {}).items():
            if metric.startswith(QUEUED_JOBS) and per_replica:
                name = metric.removeprefix(QUEUED_JOBS)
                backlog[name] = max(backlog.get(name, 0.0), *per_replica.values())
    return backlog


def desired_replicas(context: AutoscalingContext, queued: float) -> float:
    """Serve's default decision for the deployment, its queued jobs counted as ongoing requests."""
    workload = context.total_num_requests + queued
    if context.current_num_replicas == 0 and workload == 0:
        return context.target_num_replicas
    return workload / context.config.get_target_ongoing_requests()


def backlog_policy(contexts: dict) -> tuple[dict, dict]:
    """Serve's application-level policy: {DeploymentID: AutoscalingContext} in, a decision each out."""
    backlog = queued_jobs(contexts)
    decisions = {
        deployment: desired_replicas(context, backlog.get(context.deployment_name, 0.0))
        for deployment, context in contexts.items()
    }
    return decisions, {}
