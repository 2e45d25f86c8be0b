"""Engines that misbehave on purpose, for tests of the serving layer (inject them with a
deployment's `engine` setting, e.g. `leap_ray.testing.fakes:SlowStartSDXLEngine`)."""

import os
import signal
import time
from pathlib import Path
from typing import Any

from leap_ray.engines.sdxl import SDXLEngine


class SlowStartSDXLEngine(SDXLEngine):
    """The real engine after a delay, as a large model takes to load."""

    def __init__(self, model: str, *, load_delay_s: float, **kwargs: Any) -> None:
        time.sleep(load_delay_s)
        super().__init__(model, **kwargs)


class BrokenSDXLEngine:
    """A model that cannot load."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        raise RuntimeError(f"cannot load weights from {model!r}: file is corrupt")


class DyingSDXLEngine(SDXLEngine):
    """The real engine, except that its replica process is SIGKILLed while it takes in a request (as
    a GPU fault or the OOM killer would), the first `deaths` times any replica of it does. Both
    batching modes take requests in through `_admit`. The count is kept in files under `marker_dir`,
    so it survives the replica's restart."""

    def __init__(self, model: str, *, marker_dir: str, deaths: int, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.marker_dir = Path(marker_dir)
        self.deaths = deaths

    def _admit(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        died = len(list(self.marker_dir.iterdir()))
        if died < self.deaths:
            (self.marker_dir / f"death-{died}").touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return super()._admit(request, *args, **kwargs)
