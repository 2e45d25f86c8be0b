"""The application builder: `import_path: leap_ray.serve.app:build_app` in a Serve config, whose
`args` are an AppConfig."""

from typing import Any

from ray.serve import Application

from leap_ray.config import AppConfig
from leap_ray.serve.deployments import MusicGenDeployment, RefinerDeployment, SDXLDeployment
from leap_ray.serve.ingress import Ingress


def build_app(args: dict[str, Any] | None = None) -> Application:
    config = AppConfig.model_validate(args or {})
    outputs = config.outputs  # how every model deployment marks what it makes
    refiner = RefinerDeployment.bind(config.refiner, outputs) if config.refiner else None
    return Ingress.bind(
        SDXLDeployment.bind(config.sdxl, refiner, outputs),
        MusicGenDeployment.bind(config.musicgen, outputs),
        config.ingress,
    )
