"""A light client for a running leap_ray service, synchronous and asynchronous with the same methods.
It needs httpx, pydantic, httpx-sse and httpx-retries only (`pip install leap-ray` without the
`serve` extra): neither torch, Ray nor diffusers is imported.

    with LeapRayClient("http://127.0.0.1:8000") as client:
        images = client.generate_image({"prompt": "a lighthouse", "seed": 1}, on_progress=print)
        track = client.generate_music({"prompt": "lo-fi"}, on_audio=lambda piece: play(piece.pcm))
        job = client.wait_job(client.submit_job("musicgen", {"prompt": "lo-fi", "duration": 30}).id)

A 503 (at capacity, a replica restarting) is retried after its `Retry-After`, up to `retries`
times; a request with a seed gives the same result whichever attempt answers it.
"""

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import Any, Self

import httpx
from httpx_retries import Retry, RetryTransport
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

from leap_ray.api.progress import AudioDelta
from leap_ray.api.responses import FINISHED, JobView, MusicGenResponse, SDXLResponse
from leap_ray.errors import LeapRayError

Progress = Callable[[dict[str, Any]], None]
Audio = Callable[[AudioDelta], None]  # a piece of a track as it is generated (`.pcm`: 16-bit PCM)
PATHS = {"sdxl": "/v1/sdxl", "musicgen": "/v1/musicgen"}


class ServiceError(LeapRayError):
    """An error answer from the service, with its status and error fields."""

    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {"message": str(error or body)}
        super().__init__(
            error.get("message", f"HTTP {status_code}"), param=error.get("param"), code=error.get("code")
        )
        self.status_code = status_code
        self.error_type = error.get("type", "error")


class NotTheServiceError(ServiceError):
    """An error answer that is not the service's: not JSON (a proxy's or load balancer's HTML page, say).
    Its message is one line naming the status and the URL; the page itself is not kept."""

    def __init__(self, response: httpx.Response) -> None:
        said = f"HTTP {response.status_code} {response.reason_phrase}".rstrip() + f" from {response.url}"
        kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        text = " ".join(response.text.split())
        if kind in ("text/html", "application/xhtml+xml") or text.startswith("<"):
            said += " (an HTML page, not the service's error)"
        elif text:
            said += f": {text[:200]}"
        super().__init__(response.status_code, {"error": {"message": said}})


def _checked(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        body = response.json()
    except ValueError:
        raise NotTheServiceError(response) from None
    raise ServiceError(response.status_code, body)


def _outcome(
    event: ServerSentEvent, on_progress: Progress | None, on_audio: Audio | None = None
) -> dict[str, Any] | None:
    """The result when the event carries it; reports progress and audio; raises on an error event."""
    if event.event == "progress" and on_progress is not None:
        on_progress(event.json())
    elif event.event == "audio.delta" and on_audio is not None:
        data = event.json()
        on_audio(AudioDelta(audio=data["audio"], sample_rate=data["sample_rate"], start=data["start"]))
    elif event.event == "error":  # after the 200 that started the stream: no status of its own
        try:
            body = event.json()
        except ValueError:
            body = {"error": {"message": event.data}}
        raise ServiceError(500, body)
    elif event.event == "result":
        return event.json()
    return None


def _body(request: Any) -> dict[str, Any]:
    return request if isinstance(request, dict) else request.model_dump(mode="json", exclude_none=True)


def _options(
    base_url: str,
    api_key: str | None,
    timeout: float,
    retries: int,
    transport: httpx.BaseTransport | httpx.AsyncBaseTransport,
) -> dict[str, Any]:
    # A 503 and a refused connection mean the request was not taken: safe to send again. A timeout
    # or a dropped connection may mean it was (a job made twice), so those are not retried.
    retry = Retry(
        total=retries,
        status_forcelist=[503],
        allowed_methods=["GET", "POST", "DELETE"],
        retry_on_exceptions=[httpx.ConnectError, httpx.ConnectTimeout],
        backoff_factor=0.25,  # 0.25, 0.5, 1, 2, 2 s: a restarting service is back within seconds
        max_backoff_wait=2.0,
    )
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return {
        "base_url": base_url,
        "headers": headers,
        "timeout": timeout,
        "transport": RetryTransport(transport=transport, retry=retry),
    }


def _no_result() -> ServiceError:
    return ServiceError(502, {"error": {"message": "the event stream ended without a result"}})


def _result_of(
    events: Iterator[ServerSentEvent], on_progress: Progress | None, on_audio: Audio | None
) -> dict[str, Any]:
    for event in events:
        if (result := _outcome(event, on_progress, on_audio)) is not None:
            return result
    raise _no_result()


class _Client:
    """What both clients are made of: an httpx client (sync or async) for the service at `base_url`,
    with its key, its timeout and retries of what the service did not take (`_options`). Over HTTPS,
    `verify` is what checks the service's certificate: True (the default) trusts certifi's CAs, or the
    file SSL_CERT_FILE names; an `ssl.SSLContext` trusts what it was given
    (`ssl.create_default_context(cafile="ca.pem")`)."""

    http_class: type[httpx.Client] | type[httpx.AsyncClient]
    transport_class: type[httpx.HTTPTransport] | type[httpx.AsyncHTTPTransport]

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 900,
        retries: int = 5,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        transport = self.transport_class(verify=verify)
        self.http = self.http_class(**_options(base_url, api_key, timeout, retries, transport))

    def output_request(self, url: str) -> httpx.Request:
        """A GET of an output's link (signed, so it needs no key). The key goes to the service only: a
        presigned link names an object store, which must never see it (S3 refuses a request that has
        both), and a redirect to one is followed without it (httpx drops it across origins)."""
        request = self.http.build_request("GET", url)
        own = self.http.base_url
        if (request.url.scheme, request.url.host, request.url.port) != (own.scheme, own.host, own.port):
            request.headers.pop("Authorization", None)
        return request


class LeapRayClient(_Client):
    http_class = httpx.Client
    transport_class = httpx.HTTPTransport
    http: httpx.Client

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def stream(self, service: str, request: Any) -> Iterator[ServerSentEvent]:
        """The service's events as they come: `progress` (and MusicGen's `audio.delta`) ones, then
        `result` (or `error`)."""
        with connect_sse(self.http, "POST", PATHS[service], json=_body(request)) as source:
            if not source.response.is_success:
                source.response.read()
                _checked(source.response)
            yield from source.iter_sse()

    def _generate(
        self, service: str, request: Any, on_progress: Progress | None, on_audio: Audio | None = None
    ) -> dict[str, Any]:
        if on_progress is None and on_audio is None:
            return _checked(self.http.post(PATHS[service], json=_body(request))).json()
        return _result_of(self.stream(service, request), on_progress, on_audio)

    def generate_image(self, request: Any, on_progress: Progress | None = None) -> SDXLResponse:
        return SDXLResponse.model_validate(self._generate("sdxl", request, on_progress))

    def generate_music(
        self, request: Any, on_progress: Progress | None = None, on_audio: Audio | None = None
    ) -> MusicGenResponse:
        """The track; `on_audio` gets its pieces as they are generated (16-bit PCM in `.pcm`, which
        joined in order are the track), before the whole track is returned."""
        return MusicGenResponse.model_validate(self._generate("musicgen", request, on_progress, on_audio))

    def submit_job(self, service: str, job_input: Any, **options: Any) -> JobView:
        body = {"service": service, "input": _body(job_input), **options}
        return JobView.model_validate(_checked(self.http.post("/v1/jobs", json=body)).json())

    def get_job(self, job_id: str) -> JobView:
        return JobView.model_validate(_checked(self.http.get(f"/v1/jobs/{job_id}")).json())

    def cancel_job(self, job_id: str) -> JobView:
        return JobView.model_validate(_checked(self.http.delete(f"/v1/jobs/{job_id}")).json())

    def wait_job(self, job_id: str, poll_s: float = 0.5, timeout_s: float = 3600) -> JobView:
        deadline = time.monotonic() + timeout_s
        while (job := self.get_job(job_id)).status not in FINISHED and time.monotonic() < deadline:
            time.sleep(poll_s)
        return job

    def job_output(self, job: JobView, index: int = 0) -> bytes:
        request = self.output_request(job.outputs[index])
        return _checked(self.http.send(request, follow_redirects=True)).content


class AsyncLeapRayClient(_Client):
    """LeapRayClient's methods, awaited."""

    http_class = httpx.AsyncClient
    transport_class = httpx.AsyncHTTPTransport
    http: httpx.AsyncClient

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def stream(self, service: str, request: Any) -> AsyncIterator[ServerSentEvent]:
        async with aconnect_sse(self.http, "POST", PATHS[service], json=_body(request)) as source:
            if not source.response.is_success:
                await source.response.aread()
                _checked(source.response)
            async for event in source.aiter_sse():
                yield event

    async def _generate(
        self, service: str, request: Any, on_progress: Progress | None, on_audio: Audio | None = None
    ) -> dict[str, Any]:
        if on_progress is None and on_audio is None:
            return _checked(await self.http.post(PATHS[service], json=_body(request))).json()
        async for event in self.stream(service, request):
            if (result := _outcome(event, on_progress, on_audio)) is not None:
                return result
        raise _no_result()

    async def generate_image(self, request: Any, on_progress: Progress | None = None) -> SDXLResponse:
        return SDXLResponse.model_validate(await self._generate("sdxl", request, on_progress))

    async def generate_music(
        self, request: Any, on_progress: Progress | None = None, on_audio: Audio | None = None
    ) -> MusicGenResponse:
        generated = await self._generate("musicgen", request, on_progress, on_audio)
        return MusicGenResponse.model_validate(generated)

    async def submit_job(self, service: str, job_input: Any, **options: Any) -> JobView:
        body = {"service": service, "input": _body(job_input), **options}
        return JobView.model_validate(_checked(await self.http.post("/v1/jobs", json=body)).json())

    async def get_job(self, job_id: str) -> JobView:
        return JobView.model_validate(_checked(await self.http.get(f"/v1/jobs/{job_id}")).json())

    async def cancel_job(self, job_id: str) -> JobView:
        return JobView.model_validate(_checked(await self.http.delete(f"/v1/jobs/{job_id}")).json())

    async def wait_job(self, job_id: str, poll_s: float = 0.5, timeout_s: float = 3600) -> JobView:
        deadline = time.monotonic() + timeout_s
        while (job := await self.get_job(job_id)).status not in FINISHED and time.monotonic() < deadline:
            await asyncio.sleep(poll_s)
        return job

    async def job_output(self, job: JobView, index: int = 0) -> bytes:
        request = self.output_request(job.outputs[index])
        return _checked(await self.http.send(request, follow_redirects=True)).content
