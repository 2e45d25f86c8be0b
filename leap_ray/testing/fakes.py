"""Engines that misbehave on purpose, for tests of the serving layer (inject them with a
deployment's `engine` setting, e.g. `leap_ray.testing.fakes:SlowStartSDXLEngine`)."""

import os
import signal
import time
from pathlib import Path
from typing import Any

from leap_ray.engines.sdxl import SDXLEngine
from leap_ray.engines.sdxl_refiner import SDXLRefinerEngine


class SlowStartSDXLEngine(SDXLEngine):
    """The real engine after a delay, as a large model takes to load."""

    def __init__(self, model: str, *, load_delay_s: float, **kwargs: Any) -> None:
        time.sleep(load_delay_s)
        super().__init__(model, **kwargs)


class BrokenSDXLEngine:
    """A model that cannot load."""

    def __init__(self, model: str, **kwargs: Any) -> None:
        raise RuntimeError(f"cannot load weights from {model!r}: file is corrupt")


def die_if_due(marker_dir: Path, deaths: int) -> None:
    """SIGKILLs this process (as a GPU fault or the OOM killer would) the first `deaths` times any
    replica comes here. The count is kept in files under `marker_dir`, so it survives restarts."""
    marker_dir.mkdir(parents=True, exist_ok=True)
    died = len(list(marker_dir.iterdir()))
    if died < deaths:
        (marker_dir / f"death-{died}").touch()
        os.kill(os.getpid(), signal.SIGKILL)


class DyingSDXLEngine(SDXLEngine):
    """The real engine, except that its replica dies while it takes in a request, the first `deaths`
    times (`die_if_due`)."""

    def __init__(self, model: str, *, marker_dir: str, deaths: int, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.marker_dir = Path(marker_dir)
        self.deaths = deaths

    def admit(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        die_if_due(self.marker_dir, self.deaths)
        return super().admit(request, *args, **kwargs)


class DyingRefinerEngine(SDXLRefinerEngine):
    """The real refiner, except that its replica dies as it takes in a hand-off, the first `deaths` times."""

    def __init__(self, model: str, *, marker_dir: str, deaths: int, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.marker_dir = Path(marker_dir)
        self.deaths = deaths

    def admit(self, *args: Any, **kwargs: Any) -> Any:
        die_if_due(self.marker_dir, self.deaths)
        return super().admit(*args, **kwargs)
