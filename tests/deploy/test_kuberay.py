"""deploy/kuberay: the RayService's Serve config is serve_config.yaml's and valid for Serve's own schema;
its groups have what KubeRay requires, each container Serve's proxy callback, the GPU workers their GPUs
and room for exactly the model replicas Serve may ask for; kustomize sets the image of every container."""

import shutil
import subprocess
from typing import Any

import yaml
from ray.serve.schema import ServeDeploySchema

from leap_ray.serve import proxy

from .conftest import RAYSERVICE, ROOT, containers, pyproject, rayservice, serve_pin

GPU = "nvidia.com/gpu"


def cluster() -> dict[str, Any]:
    return rayservice()["spec"]["rayClusterConfig"]


def serve_config() -> dict[str, Any]:
    return yaml.safe_load(rayservice()["spec"]["serveConfigV2"])


def deployments() -> dict[str, dict[str, Any]]:
    (application,) = serve_config()["applications"]
    return {deployment["name"]: deployment for deployment in application["deployments"]}


def model_deployments() -> list[dict[str, Any]]:
    return [d for d in deployments().values() if d["ray_actor_options"].get("num_gpus", 0) > 0]


def gpus(container: dict[str, Any]) -> int:
    return int(container.get("resources", {}).get("limits", {}).get(GPU, 0))


def test_the_serve_config_is_valid_for_serves_own_schema():
    ServeDeploySchema.model_validate(serve_config())  # as leap_ray.serve.launch.load_config reads a file


def test_the_serve_config_is_serve_config_yaml_unchanged():
    assert serve_config() == yaml.safe_load((ROOT / "serve_config.yaml").read_text())


def test_the_manifest_has_what_kuberay_requires():
    manifest = rayservice()
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    assert cluster()["rayVersion"] == serve_pin("ray")
    assert cluster()["enableInTreeAutoscaling"] is True
    head = cluster()["headGroupSpec"]
    assert {"rayStartParams", "template"} <= head.keys()
    groups = cluster()["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert {
            "groupName",
            "replicas",
            "minReplicas",
            "maxReplicas",
            "rayStartParams",
            "template",
        } <= group.keys()
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for group in [head, *groups]:
        # KubeRay's CRD types rayStartParams as strings: `num-cpus: 4` is refused by the API server.
        assert all(isinstance(value, str) for value in group["rayStartParams"].values()), group[
            "rayStartParams"
        ]
        assert group["template"]["spec"]["containers"]


def test_every_container_sets_serves_proxy_callback():
    for container in containers(rayservice()):
        env = {variable["name"]: variable.get("value") for variable in container.get("env", [])}
        assert env.get(proxy.CALLBACK_ENV) == proxy.CALLBACK, container["name"]


def test_every_container_runs_the_image_the_dockerfile_builds():
    images = {container["image"] for container in containers(rayservice())}
    assert images == {f"leap-ray:{pyproject()['project']['version']}"}


def test_the_head_has_no_gpu_and_room_for_every_ingress_replica():
    head = cluster()["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert [gpus(container) for container in head["template"]["spec"]["containers"]] == [0]
    ingress = deployments()["Ingress"]
    cpus = ingress["autoscaling_config"]["max_replicas"] * ingress["ray_actor_options"]["num_cpus"]
    assert float(head["rayStartParams"]["num-cpus"]) >= cpus


def test_gpu_workers_hold_exactly_the_model_replicas_serve_may_ask_for():
    (group,) = cluster()["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    per_worker = gpus(container)
    resources = container["resources"]
    assert per_worker >= 1 and resources["requests"][GPU] == resources["limits"][GPU]
    models = model_deployments()
    assert {d["name"] for d in models} == {"SDXL", "Refiner", "MusicGen"}
    # One model replica per worker: its GPUs and logical CPUs are the worker's, so no Ingress lands there.
    for deployment in models:
        assert deployment["ray_actor_options"]["num_gpus"] == per_worker, deployment["name"]
        assert float(group["rayStartParams"]["num-cpus"]) == deployment["ray_actor_options"]["num_cpus"]
    for bound, replicas in (("min_replicas", "minReplicas"), ("max_replicas", "maxReplicas")):
        assert group[replicas] == sum(d["autoscaling_config"][bound] for d in models), bound


def render(kubectl: str, folder: str) -> list[dict[str, Any]]:
    rendered = subprocess.run([kubectl, "kustomize", folder], capture_output=True, text=True, check=True)
    return list(yaml.safe_load_all(rendered.stdout))


def test_kustomize_renders_the_manifest_unchanged(kubectl):
    assert render(kubectl, str(RAYSERVICE.parent)) == [rayservice()]


def test_the_image_named_in_kustomization_reaches_every_container(kubectl, tmp_path):
    """The operator's edit: the registry their cluster pulls from, as `newName` in kustomization.yaml."""
    registry = "registry.example.com/team/leap-ray"
    shutil.copytree(RAYSERVICE.parent, tmp_path, dirs_exist_ok=True)
    kustomization = yaml.safe_load((tmp_path / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    image["newName"] = registry
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    (manifest,) = render(kubectl, str(tmp_path))
    version = pyproject()["project"]["version"]
    assert {container["image"] for container in containers(manifest)} == {f"{registry}:{version}"}
