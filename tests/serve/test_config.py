"""The Serve configs: validated by Serve's own schema, naming deployments the graph has, and
reported back by Serve as deployed."""

from pathlib import Path

import pytest
from ray import serve
from ray.serve._private.build_app import build_app as build_serve_app
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from leap_ray.config import AppConfig, BatchingConfig, JobsSettings
from leap_ray.serve.app import build_app
from leap_ray.serve.launch import load_config, local_config_path

from .conftest import APP

PRODUCTION = Path(__file__).parents[2] / "serve_config.yaml"
CONFIGS = {"production": PRODUCTION, "local": local_config_path()}


@pytest.mark.parametrize("path", CONFIGS.values(), ids=CONFIGS.keys())
def test_config_is_well_formed_for_serve(path):
    config = load_config(path)
    assert isinstance(config, ServeDeploySchema)
    (application,) = config.applications
    assert application.import_path == "leap_ray.serve.app:build_app"
    AppConfig.model_validate(application.args)
    graph = build_serve_app(build_app(application.args), name=application.name)
    names = {deployment.name for deployment in graph.deployments}
    assert names == {"Ingress", "SDXL", "Refiner", "MusicGen"}
    for deployment in application.deployments:
        assert deployment.name in names
        if deployment.name != "Ingress":
            BatchingConfig.model_validate(deployment.user_config)
            assert deployment.max_ongoing_requests >= deployment.user_config["max_batch_size"]


@pytest.mark.parametrize("path", CONFIGS.values(), ids=CONFIGS.keys())
def test_every_serve_option_comes_from_the_config_not_the_code(path):
    from leap_ray.serve.deployments import MusicGenDeployment, RefinerDeployment, SDXLDeployment
    from leap_ray.serve.ingress import Ingress

    def bare() -> None: ...

    defaults = serve.deployment(bare)
    for deployment in (Ingress, SDXLDeployment, RefinerDeployment, MusicGenDeployment):  # names only
        assert deployment.user_config is None
        assert deployment.ray_actor_options == defaults.ray_actor_options
        assert deployment.max_ongoing_requests == defaults.max_ongoing_requests
    (application,) = load_config(path).applications
    for deployment in application.deployments:
        assert deployment.max_ongoing_requests is not None and deployment.ray_actor_options is not None


def test_production_puts_each_model_on_its_own_gpus_and_real_weights():
    (application,) = load_config(PRODUCTION).applications
    options = {deployment.name: deployment for deployment in application.deployments}
    for name in ("SDXL", "Refiner", "MusicGen"):
        assert options[name].ray_actor_options.num_gpus == 1
        assert (
            options[name].autoscaling_config["max_replicas"]
            > options[name].autoscaling_config["min_replicas"]
        )
    assert options["Ingress"].ray_actor_options.num_gpus in (None, 0)
    assert application.args["sdxl"]["model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert application.args["musicgen"]["model"].startswith("facebook/musicgen")
    assert application.args["refiner"]["model"] == "stabilityai/stable-diffusion-xl-refiner-1.0"


def test_local_runs_on_the_cpu():
    (application,) = load_config(local_config_path()).applications
    assert all(d.ray_actor_options.num_gpus in (None, 0) for d in application.deployments)


def test_serve_reports_the_configs_autoscaling_and_batching(graph):
    details = _get_global_client().get_serve_details()
    deployed = details["applications"][APP]["deployments"]
    for wanted in load_config(local_config_path()).applications[0].deployments:
        reported = deployed[wanted.name]["deployment_config"]
        if wanted.name == "Ingress":
            continue
        assert reported["user_config"] == wanted.user_config
        assert reported["max_ongoing_requests"] == wanted.max_ongoing_requests
        assert reported["max_queued_requests"] == wanted.max_queued_requests
        for key, value in wanted.autoscaling_config.items():
            assert reported["autoscaling_config"][key] == value
        assert reported["ray_actor_options"]["num_cpus"] == wanted.ray_actor_options.num_cpus


@pytest.mark.parametrize("path", CONFIGS.values(), ids=CONFIGS.keys())
def test_engine_kwargs_are_ones_the_engines_take(path):
    import inspect

    from leap_ray.engines.musicgen import MusicGenEngine
    from leap_ray.engines.sdxl import SDXLEngine
    from leap_ray.engines.sdxl_fast import SDXLSpeed
    from leap_ray.engines.sdxl_refiner import SDXLRefinerEngine

    (application,) = load_config(path).applications
    settings = AppConfig.model_validate(application.args)
    sdxl_kwargs = dict(settings.sdxl.engine_kwargs)
    for name in ("device", "dtype", "threads"):
        sdxl_kwargs.pop(name, None)
    SDXLSpeed(**sdxl_kwargs)  # raises TypeError on an option it does not have
    inspect.signature(SDXLEngine).bind("model", **settings.sdxl.engine_arguments())
    inspect.signature(SDXLRefinerEngine).bind("model", **settings.refiner.engine_arguments())
    inspect.signature(MusicGenEngine).bind("model", **settings.musicgen.engine_kwargs)


def test_each_application_has_its_own_job_store_by_default():
    first, second = JobsSettings().for_application("one"), JobsSettings().for_application("two")
    assert first.store_path != second.store_path and first.output_dir != second.output_dir
    assert (first.redis_prefix, second.redis_prefix) == ("leap_ray:one:", "leap_ray:two:")
    chosen = JobsSettings(store_path="/data/jobs.sqlite3").for_application("one")
    assert chosen.store_path == "/data/jobs.sqlite3"
