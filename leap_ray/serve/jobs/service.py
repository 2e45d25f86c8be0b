"""What the service does with jobs: submits them (validated at once, bounded by `max_queued_jobs`),
runs them through the model gateway (with the runner), sends their webhooks, and reads them back
for the routes. Every store call runs off the event loop (StoreClient)."""

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.types import Scope

from leap_ray.api.audio import content_type
from leap_ray.api.images import CONTENT_TYPES
from leap_ray.api.jobs import JobSubmission
from leap_ray.api.predictions import prediction_view
from leap_ray.api.progress import AudioProgress, JobProgress, Progress, StepProgress
from leap_ray.api.responses import FINISHED, JobView
from leap_ray.api.sdxl import SDXLOutput
from leap_ray.config import JobsSettings
from leap_ray.errors import NotFound, Overloaded, TooManyRequests
from leap_ray.serve import metrics
from leap_ray.serve.gateway import ModelGateway
from leap_ray.serve.jobs import open_store, webhooks
from leap_ray.serve.jobs.files import UploadedFiles
from leap_ray.serve.jobs.links import LinkSigner, OutputLinks
from leap_ray.serve.jobs.outputs import StoredOutput, open_output_store
from leap_ray.serve.jobs.runner import JobEvent, JobRunner, Limits
from leap_ray.serve.jobs.store import ClientQueueFull, Job, QueueFull, WebhookFormat, WebhookSpec, scoped_id
from leap_ray.serve.jobs.store_client import StoreClient

Outputs = list[tuple[bytes, str, str]]  # (encoded bytes, extension, content type)
WAIT_POLL_S = 0.2


DEFAULT_PORTS = {"http": 80, "https": 443}


def link_base(scope: Scope, public_url: str | None) -> str:
    """Where the links of a request's answer start (jobs, predictions and their webhooks carry whole
    URLs): the operator's public URL, else the address this connection reached (ASGI's `server`), and
    then the application's route prefix. Never the Host header: a client writes it, and
    `Host: evil.example` would put the links others follow on a site of its choosing."""
    prefix = scope.get("root_path", "")
    if public_url:
        return public_url + prefix
    if scope.get("server") is None:  # a Unix socket: no address to name, so links relative to the host
        return prefix
    host, port = scope["server"]
    literal = f"[{host}]" if ":" in host else host  # an IPv6 address
    netloc = literal if port in (None, DEFAULT_PORTS.get(scope["scheme"])) else f"{literal}:{port}"
    return f"{scope['scheme']}://{netloc}{prefix}"


def job_view(job: Job, base: str, outputs: list[str]) -> dict[str, Any]:
    """The job as clients see it, its URLs absolute under `base` (see `link_base`), with its outputs'
    links (`OutputLinks.urls`)."""
    url = f"{base}/v1/jobs/{job.public_id}"
    timings = {}
    if job.started_at is not None:
        timings["queued_s"] = job.started_at - job.created_at
        if job.finished_at is not None:
            timings["run_s"] = job.finished_at - job.started_at
    computed = {"id", "url", "outputs", "timings", "input"}
    return JobView(
        id=job.public_id,
        url=url,
        outputs=outputs,
        timings=timings,
        input=job.input_summary,
        **{name: getattr(job, name) for name in JobView.model_fields if name not in computed},
    ).model_dump()


def encoded_outputs(output: Any) -> Outputs:
    if isinstance(output, SDXLOutput):
        return [(data, output.format, CONTENT_TYPES[output.format]) for data in output.images]
    return [(output.audio, output.format, content_type(output.format))]


class Jobs:
    def __init__(
        self,
        gateway: ModelGateway,
        settings: JobsSettings,
        public_url: str | None = None,
        url_secret: bytes | None = None,
        limits: Limits | None = None,
    ) -> None:
        """`url_secret` signs output links: the ingress passes `IngressSettings.output_url_secret()`,
        derived with its API keys; without it, the key is derived from `settings` alone. `limits`:
        the most jobs of each service to run at once (the ingress passes the models' capacity)."""
        self.gateway = gateway
        self.settings = settings
        self.public_url = public_url  # IngressSettings.public_url: where links start
        self.store = StoreClient(open_store(settings), settings.store_timeout_s)
        self.outputs = open_output_store(settings)
        self.files = UploadedFiles(self.outputs, settings.file_ttl_s)  # POST /v1/files, beside the outputs
        secret = settings.output_url_secret(()) if url_secret is None else url_secret
        self.links = OutputLinks(LinkSigner(secret), self.outputs, settings)
        self._webhook_secret = settings.webhook_secret()
        self._deliveries: dict[str, asyncio.Task] = {}  # each job's latest webhook delivery
        self.runner = JobRunner(
            self.store.store,
            self.outputs,
            self._run,
            self._notify,
            max_concurrent=settings.max_concurrent_jobs,
            stale_after_s=settings.stale_after_s,
            retention_s=settings.retention_s,
            limits=limits,
        )

    async def _run(
        self, service: str, job_input: dict[str, Any], report: Callable[[JobProgress], None]
    ) -> Outputs:
        # A job keeps no audio but its output: the model is not asked for pieces of it (`stream`; its
        # input was validated when the job was submitted).
        job_input = {**job_input, "stream": False}
        request = await self.gateway.prepare(service, job_input, param_prefix="input")
        async for event in self.gateway.events(service, request):
            if isinstance(event, StepProgress):  # kept small: a job's progress has no preview image
                report(replace(event, preview=None))
            elif isinstance(event, AudioProgress):
                report(event)
            elif not isinstance(event, Progress):  # an AudioDelta, should one come, is dropped
                return encoded_outputs(event)
        raise RuntimeError("the model's event stream ended without a result")

    def _notify(self, event: JobEvent) -> None:
        """Sends the job's webhook for this event, if it asked for one, as a task of its own. A job's
        deliveries go one at a time, in order (start, progress, completed); a progress event while
        an earlier delivery is still under way is dropped, so a slow target costs one task a job."""
        job = event.job
        if job.webhook is None or event.kind not in job.webhook.events:
            return
        previous = self._deliveries.get(job.id)
        if event.kind == "progress" and previous is not None and not previous.done():
            return
        task = asyncio.get_running_loop().create_task(self._deliver_after(previous, job.webhook, event))
        self._deliveries[job.id] = task  # kept until done: the loop holds tasks only weakly
        task.add_done_callback(partial(self._forget_delivery, job.id))

    def _forget_delivery(self, job_id: str, task: asyncio.Task) -> None:
        if self._deliveries.get(job_id) is task:
            del self._deliveries[job_id]

    async def _deliver_after(
        self, previous: asyncio.Task | None, webhook: WebhookSpec, event: JobEvent
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        await webhooks.deliver(
            webhook.url,
            event.kind,
            await self._webhook_payload(event.job, webhook),
            secret=self._webhook_secret,
            attempts=self.settings.webhook_attempts,
            backoff_s=self.settings.webhook_backoff_s,
            allow_private=self.settings.webhook_allow_private_networks,
        )

    def base_url(self, request: Request) -> str:
        """Where the links of this request's answer start (`link_base`)."""
        return link_base(request.scope, self.public_url)

    async def get(self, job_id: str, client: str | None = None) -> Job:
        """The job `job_id` names for `client` (None: an admin, who sees anyone's): a generated id, or
        one the client chose (kept per client: `scoped_id`). Another key's job is not found."""
        for stored_id in (job_id, scoped_id(job_id, client or "")):
            job = await self.store.call(self.store.store.get, stored_id)
            if job is not None and client in (None, job.client):
                return job
        raise NotFound(f"no job {job_id}", param="job_id")

    async def _webhook_payload(self, job: Job, webhook: WebhookSpec) -> dict[str, Any]:
        if webhook.format == "prediction":
            return await self.prediction(job, webhook.base)
        return await self.view(job, webhook.base)

    async def view(self, job: Job, base: str) -> dict[str, Any]:
        """The job as clients see it (`job_view`), its output links made now."""
        return job_view(job, base, await self.links.urls(job, base))

    async def prediction(self, job: Job, base: str) -> dict[str, Any]:
        """The job as a prediction (`prediction_view`), its output links made now."""
        return prediction_view(job, base, await self.links.urls(job, base))

    async def read_output(self, stored: StoredOutput) -> bytes:
        """An output's bytes, from wherever it is kept (NotFound when it is gone)."""
        return await asyncio.to_thread(self.outputs.read, stored)

    async def wait(self, job_id: str, timeout_s: float | None = None) -> Job:
        """The job with the store's id `job_id` (a Job's `id`) once finished, or as it is when
        `timeout_s` runs out (polling the store, which every ingress replica shares)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while (job := await self.get(job_id)).status not in FINISHED:
            if deadline is not None and time.monotonic() >= deadline:
                break
            await asyncio.sleep(WAIT_POLL_S)
        return job

    async def submit(
        self,
        body: JobSubmission,
        base: str,
        webhook_format: WebhookFormat = "job",
        job_id: str | None = None,
        client: str = "",
        model: str = "",
        shown_input: dict[str, Any] | None = None,
    ) -> Job:
        """Validates the input as the synchronous endpoint would (422 at once when invalid), fixes a
        seed so that a job taken over after a restart gives the same outputs, and queues it. A
        prediction of a public model keeps that `model` and the input as its client wrote it
        (`shown_input`) to show. Its
        webhooks carry the job (`webhook_format: job`) or, for predictions, the prediction; URLs
        start with `base`. A `job_id` this client chose before gives that job (ids are per client)."""
        self.runner.ensure_started()
        validated = await self.gateway.prepare(body.service, body.input, param_prefix="input")
        # Its images as our PNG of the decoded pixels: the runner validates the input again.
        job_input = await asyncio.to_thread(body.stored_input, validated)
        webhook = None
        if body.webhook_url is not None:
            allow = self.settings.webhook_allow_private_networks
            await asyncio.to_thread(webhooks.check_webhook_url, body.webhook_url, allow_private=allow)
            webhook = WebhookSpec(
                url=body.webhook_url, events=body.webhook_events_filter, format=webhook_format, base=base
            )
        max_queued, per_key = self.settings.max_queued_jobs, self.settings.max_queued_jobs_per_key
        submitted_at = time.time()
        create = self.store.store.create
        try:
            job = await self.store.call(
                create,
                body.service,
                job_input,
                webhook,
                max_queued,
                job_id,
                client,
                per_key,
                model,
                shown_input,
            )
            if job.created_at >= submitted_at:  # not a job this id already named (an idempotent PUT)
                metrics.jobs().inc(tags={"status": "queued"})
        except ClientQueueFull:
            raise TooManyRequests(
                f"this API key has {per_key} jobs waiting already (max_queued_jobs_per_key); retry once "
                "some have started",
                code="quota_exceeded",
            ) from None
        except QueueFull:
            raise Overloaded(
                "too many jobs are waiting; retry after a moment", code="job_queue_full"
            ) from None
        return job

    async def recent(self, status: str | None, limit: int, client: str | None = None) -> list[Job]:
        return await self.store.call(self.store.store.recent, status, limit, client)

    async def cancel(self, job_id: str, client: str | None = None) -> Job:
        stored_id = (await self.get(job_id, client)).id
        job = await self.store.call(self.store.store.cancel, stored_id)
        if job is None:
            raise NotFound(f"no job {job_id}", param="job_id")
        return job
