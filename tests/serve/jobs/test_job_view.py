"""A job's JSON: its progress as the SSE progress events show it (no preview image, `stage` only with
a refiner), and typed again where the Python client reads it."""

import asyncio
import json

import pytest

from leap_ray.api.progress import AudioProgress, Progress, StepProgress
from leap_ray.api.responses import JobView
from leap_ray.api.sdxl import SDXLOutput
from leap_ray.config import JobsSettings
from leap_ray.serve.jobs.service import Jobs, job_view
from leap_ray.serve.jobs.store import Job


@pytest.mark.parametrize(
    ("progress", "wire"),
    [
        (StepProgress(3, 4, 250.0), {"step": 3, "total": 4, "timestep": 250.0}),
        (
            StepProgress(1, 2, 500.0, stage="refiner"),
            {"step": 1, "total": 2, "timestep": 500.0, "stage": "refiner"},
        ),
        (AudioProgress(2.0, 5.0), {"seconds": 2.0, "total": 5.0}),
        (None, None),
    ],
    ids=["sdxl", "sdxl-with-a-refiner", "musicgen", "none-yet"],
)
def test_a_jobs_progress_is_sent_as_the_progress_event_is_streamed(progress, wire):
    job = Job("j1", "sdxl", "running", 1.0, started_at=2.0, progress=progress)
    view = job_view(job, "http://h", [])
    assert view["progress"] == wire
    assert JobView.model_validate_json(json.dumps(view)).progress == progress  # as the client reads it


class PreviewingGateway:
    """The model side of a job: one SDXL step with a latent preview, then the image."""

    async def prepare(self, service: str, job_input: dict, param_prefix: str) -> None:
        return None

    async def events(self, service: str, request: None):
        yield StepProgress(1, 2, 999.0, preview="iVBORw0KGgo=", stage="base")
        yield SDXLOutput([b"png"], "png", [1], {}, 1)


def test_a_jobs_progress_keeps_no_preview_image(tmp_path):
    settings = JobsSettings(store_path=str(tmp_path / "jobs.sqlite3"), output_dir=str(tmp_path / "out"))
    jobs = Jobs(gateway=PreviewingGateway(), settings=settings.for_application("test"))
    reported: list[Progress] = []
    outputs = asyncio.run(jobs._run("sdxl", {}, reported.append))
    assert reported == [StepProgress(1, 2, 999.0, stage="base")]
    assert outputs == [(b"png", "png", "image/png")]
