"""deploy/kuberay: the RayService's Serve config is serve_config.yaml's plus the Kubernetes overlay
(nothing else) and valid for Serve's own schema; its groups have what KubeRay requires, each container
Serve's proxy callback, the token auth, the shared cache and the outputs' Secret; the Ingress can run
on the head only, the GPU workers hold exactly the model replicas Serve may ask for; kustomize sets the
image of every container (in Python here, and by kubectl kustomize where it is installed)."""

import copy
import json
import shlex
import shutil
import subprocess
from typing import Any

import yaml
from ray.serve.schema import ServeDeploySchema

from leap_ray.config import AppConfig, is_object_store_url
from leap_ray.serve import proxy

from .conftest import RAY_GID, RAYSERVICE, ROOT, containers, pyproject, rayservice, serve_pin

GPU = "nvidia.com/gpu"
KUSTOMIZATION = RAYSERVICE.parent / "kustomization.yaml"
# What the manifest's serveConfigV2 changes of serve_config.yaml's, by path (a list's item by its name):
# the rest is serve_config.yaml's. README's Deploying section names the same.
KUBERNETES_OVERLAY: dict[tuple[str, ...], Any] = {
    ("applications", "leap_ray", "deployments", "Ingress", "ray_actor_options"): {
        "num_cpus": 1,
        "resources": {"ingress": 1},
    },
    ("applications", "leap_ray", "args", "ingress"): {
        "jobs": {
            "store": "redis",
            "redis_url": "redis://leap-ray-redis:6379/0",
            "output_dir": "s3://leap-ray-outputs/jobs",
        }
    },
    ("applications", "leap_ray", "args", "sdxl", "engine_kwargs", "compile_cache"): "/cache/leap_ray/compile",
    (
        "applications",
        "leap_ray",
        "args",
        "refiner",
        "engine_kwargs",
        "compile_cache",
    ): "/cache/leap_ray/compile",
}
CACHE_MOUNT = "/cache"


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


def parent_and_key(config: Any, path: tuple[str, ...]) -> tuple[Any, Any]:
    """The container holding `path`'s last step, and that step (a list's item found by its name)."""
    *steps, last = path
    for step in steps:
        config = (
            next(item for item in config if item["name"] == step)
            if isinstance(config, list)
            else config[step]
        )
    return config, last


def test_the_serve_config_is_serve_config_yaml_with_the_kubernetes_overlay_only():
    base = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    expected = copy.deepcopy(base)
    for path, value in KUBERNETES_OVERLAY.items():
        parent, key = parent_and_key(base, path)
        assert parent.get(key) != value, f"{path}: serve_config.yaml has it already, drop it from the overlay"
        parent, key = parent_and_key(expected, path)
        parent[key] = copy.deepcopy(value)  # copies: sdxl and refiner share one anchor in the YAML
    assert serve_config() == expected


def test_the_overlays_compile_cache_is_on_the_shared_cache_volume():
    for path, value in KUBERNETES_OVERLAY.items():
        if path[-1] == "compile_cache":
            assert value.startswith(CACHE_MOUNT + "/"), path


def head_resources() -> dict[str, float]:
    """The custom resources the head declares, as `ray start` gets them: KubeRay pastes rayStartParams
    into a shell command line (`--resources=<value>`), so the value is read as the shell reads it."""
    value = cluster()["headGroupSpec"]["rayStartParams"]["resources"]
    (word,) = shlex.split(f"--resources={value}")
    return json.loads(word.removeprefix("--resources="))


def test_ingress_replicas_fit_only_on_the_head():
    """Serve spreads replicas over nodes: an Ingress replica on a GPU worker would leave 3 of its 4 CPUs,
    where no model replica fits. Its own resource, which only the head has, keeps it there."""
    ingress = deployments()["Ingress"]
    wanted = ingress["ray_actor_options"]["resources"]
    assert wanted == {"ingress": 1}
    assert head_resources()["ingress"] >= ingress["autoscaling_config"]["max_replicas"] * wanted["ingress"]
    for group in cluster()["workerGroupSpecs"]:
        assert "resources" not in group["rayStartParams"], group["groupName"]
    for deployment in model_deployments():
        assert "ingress" not in deployment["ray_actor_options"].get("resources", {}), deployment["name"]


def test_jobs_are_kept_in_redis_and_a_bucket_with_no_credentials_in_the_config():
    (application,) = serve_config()["applications"]
    jobs = AppConfig.model_validate(application["args"]).ingress.jobs
    assert jobs.store == "redis" and is_object_store_url(jobs.output_dir or "")
    assert "@" not in jobs.redis_url  # a password would sit in the config Serve logs


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {variable["name"]: variable.get("value") for variable in container.get("env", [])}


def test_every_container_reads_the_outputs_secret_and_mounts_the_cache():
    cluster_ = cluster()
    for group in [cluster_["headGroupSpec"], *cluster_["workerGroupSpecs"]]:
        volumes = {volume["name"]: volume for volume in group["template"]["spec"]["volumes"]}
        claim = volumes["cache"]["persistentVolumeClaim"]["claimName"]
        assert volumes["shm"]["emptyDir"] == {"medium": "Memory"}
        for container in group["template"]["spec"]["containers"]:
            assert {"secretRef": {"name": "leap-ray-outputs"}} in container["envFrom"]
            mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
            assert mounts == {"cache": CACHE_MOUNT, "shm": "/dev/shm"}
            assert env_of(container)["HF_HOME"].startswith(CACHE_MOUNT + "/")
            assert "ephemeral-storage" in container["resources"]["requests"]
    (pvc,) = [doc for doc in kustomized() if doc["kind"] == "PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == claim and pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_every_pod_gives_the_cache_volume_to_rays_group():
    # A new volume is root's: without fsGroup, Ray's user cannot write the models or the compile cache.
    cluster_ = cluster()
    for group in [cluster_["headGroupSpec"], *cluster_["workerGroupSpecs"]]:
        security = group["template"]["spec"].get("securityContext", {})
        assert security.get("fsGroup") == RAY_GID
        assert security.get("fsGroupChangePolicy") == "OnRootMismatch"  # not a walk of ~30 GB each start


def test_ray_runs_with_token_auth_and_its_ports_are_kept_to_its_pods():
    # KubeRay (1.5.1+) makes the token's Secret, sets RAY_AUTH_MODE and RAY_AUTH_TOKEN on every Ray
    # container, and authenticates its own calls to the dashboard.
    assert cluster()["authOptions"] == {"mode": "token"}
    (policy,) = [doc for doc in kustomized() if doc["kind"] == "NetworkPolicy"]
    pods = policy["spec"]["podSelector"]["matchLabels"]
    cluster_ = cluster()
    for group in [cluster_["headGroupSpec"], *cluster_["workerGroupSpecs"]]:
        assert pods.items() <= group["template"]["metadata"]["labels"].items()
    open_to_all = [rule for rule in policy["spec"]["ingress"] if "from" not in rule]
    assert {port["port"] for rule in open_to_all for port in rule["ports"]} == {8000, 8080}
    from_pods = [rule for rule in policy["spec"]["ingress"] if "ports" not in rule]
    assert from_pods == [{"from": [{"podSelector": {"matchLabels": pods}}]}]


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
        assert env_of(container).get(proxy.CALLBACK_ENV) == proxy.CALLBACK, container["name"]


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


def kustomization() -> dict[str, Any]:
    return yaml.safe_load(KUSTOMIZATION.read_text())


def kustomized() -> list[dict[str, Any]]:
    """The resources kustomization.yaml lists, parsed."""
    return [yaml.safe_load((RAYSERVICE.parent / name).read_text()) for name in kustomization()["resources"]]


def test_the_kustomizations_image_entry_names_every_containers_image():
    """kustomize's images transform replaces the images whose name is the entry's `name`: every
    container's, so the operator's `newName` (their registry) reaches them all (checked here without
    kubectl; the tests below run kustomize itself where it is installed)."""
    (image,) = kustomization()["images"]
    names = {container["image"].rpartition(":")[0] for container in containers(rayservice())}
    assert names == {image["name"]}
    assert image["newTag"] == pyproject()["project"]["version"]


def render(kubectl: str, folder: str) -> list[dict[str, Any]]:
    rendered = subprocess.run([kubectl, "kustomize", folder], capture_output=True, text=True, check=True)
    return list(yaml.safe_load_all(rendered.stdout))


def by_kind(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {document["kind"]: document for document in documents}


def test_kustomize_renders_the_manifests_unchanged(kubectl):
    assert by_kind(render(kubectl, str(RAYSERVICE.parent))) == by_kind(kustomized())


def test_the_image_named_in_kustomization_reaches_every_container(kubectl, tmp_path):
    """The operator's edit: the registry their cluster pulls from, as `newName` in kustomization.yaml."""
    registry = "registry.example.com/team/leap-ray"
    shutil.copytree(RAYSERVICE.parent, tmp_path, dirs_exist_ok=True)
    kustomization = yaml.safe_load((tmp_path / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    image["newName"] = registry
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    manifest = by_kind(render(kubectl, str(tmp_path)))["RayService"]
    version = pyproject()["project"]["version"]
    assert {container["image"] for container in containers(manifest)} == {f"{registry}:{version}"}
