"""The service's own metrics, through `ray.serve.metrics`, so that they reach Ray's Prometheus
endpoint (named `ray_<name>`) with the application, deployment and replica tags Serve adds. Created
on first use, in the process that records them."""

from functools import cache

from ray.serve.metrics import Counter, Gauge, Histogram

SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
ROWS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]


@cache
def requests() -> Counter:
    return Counter(
        "leap_ray_requests_total",
        description="Requests by service and outcome: ok, or the error type (invalid_request_error...).",
        tag_keys=("service", "outcome"),
    )


@cache
def images_generated() -> Counter:
    return Counter("leap_ray_images_generated_total", description="SDXL images answered.")


@cache
def audio_seconds_generated() -> Counter:
    return Counter(
        "leap_ray_audio_seconds_generated_total", description="Seconds of MusicGen audio answered."
    )


@cache
def first_progress_seconds() -> Histogram:
    return Histogram(
        "leap_ray_first_progress_seconds",
        description="From a streamed request's start to its first progress event.",
        boundaries=SECONDS,
        tag_keys=("service",),
    )


@cache
def batch_load() -> Histogram:
    return Histogram(
        "leap_ray_batch_load",
        description="What a model step ran: SDXL images, MusicGen tracks.",
        boundaries=ROWS,
    )


@cache
def step_seconds() -> Histogram:
    return Histogram(
        "leap_ray_step_seconds",
        description="Time of one model step: an SDXL denoising step, a MusicGen token.",
        boundaries=SECONDS,
    )


@cache
def queue_wait_seconds() -> Histogram:
    return Histogram(
        "leap_ray_queue_wait_seconds",
        description="From a request's arrival at its model replica to its admission into the batch.",
        boundaries=SECONDS,
    )


@cache
def cancelled() -> Counter:
    return Counter("leap_ray_cancelled_total", description="Requests that left before their end (cancelled).")


@cache
def jobs() -> Counter:
    return Counter(
        "leap_ray_jobs_total",
        description="Jobs submitted (status queued) and finished (succeeded, failed, cancelled).",
        tag_keys=("status",),
    )


@cache
def oldest_queued_job_seconds() -> Gauge:
    return Gauge(
        "leap_ray_oldest_queued_job_seconds",
        description="How long the longest-waiting queued job has waited (0: none waits).",
    )


@cache
def webhook_deliveries() -> Counter:
    return Counter(
        "leap_ray_webhook_deliveries_total",
        description="Webhook deliveries by outcome: delivered, or failed after every attempt.",
        tag_keys=("outcome",),
    )


@cache
def unstamped_signatures() -> Counter:
    return Counter(
        "leap_ray_c2pa_unstamped_total",
        description="Outputs signed with C2PA content credentials but no time stamp: the time-stamp "
        "authority failed.",
    )
