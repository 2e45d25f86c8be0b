"""Engines that misbehave on purpose, for tests of the serving layer (inject them with a
deployment's `engine` setting, e.g. `leap_ray.testing.fakes:SlowStartSDXLEngine`)."""

import time
from typing import Any

from leap_ray.engines.sdxl import SDXLEngine


class SlowStartSDXLEngine(SDXLEngine):
    """The real engine after a delay, as a large model takes to load."""

    def __init__(self, model: str, *, load_delay_s: float, **kwargs: Any) -> None:
        time.sleep(load_delay_s)
        super().__init__(model, **kwargs)
