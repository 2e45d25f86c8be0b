"""Typed settings an operator may change, each with its default next to it.

Request limits are read once, at import, from the environment (prefix `LEAP_RAY_`, nested with `__`,
e.g. `LEAP_RAY_SDXL__MAX_STEPS=100`), because they become the bounds of the request schemas and so
of `/openapi.json`. In a Serve config, set them in `runtime_env.env_vars`.
"""

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from leap_ray.model_sources import TINY_PREFIX


class SDXLLimits(BaseModel):
    min_size: int = Field(64, description="Smallest height/width in pixels.")
    max_size: int = Field(2048, description="Largest height/width in pixels.")
    max_pixels: int = Field(
        4 * 1024 * 1024, description="Budget per request: height × width × number of images."
    )
    max_steps: int = Field(150, description="Most num_inference_steps.")
    max_images_per_prompt: int = Field(8, description="Most num_images_per_prompt.")
    max_prompts: int = Field(8, description="Most prompts in one request's prompt list.")
    max_prompt_chars: int = Field(4000, description="Longest prompt, in characters.")
    max_guidance_scale: float = Field(50.0, description="Largest guidance_scale.")
    max_tensor_elements: int = Field(
        16 * 1024 * 1024, description="Most elements in one tensor sent with a request."
    )
    max_image_bytes: int = Field(
        16 * 1024 * 1024, description="Largest uploaded image or mask (img2img, inpainting), in bytes."
    )
    max_loras: int = Field(4, description="Most LoRA adapters one request may name.")
    max_lora_scale: float = Field(4.0, description="Largest absolute LoRA scale.")


class MusicGenLimits(BaseModel):
    max_duration_s: float = Field(60.0, description="Longest track in seconds.")
    max_prompt_chars: int = Field(2000, description="Longest prompt, in characters.")
    max_melody_bytes: int = Field(16 * 1024 * 1024, description="Largest encoded melody, in bytes.")
    max_melody_s: float = Field(60.0, description="Longest melody, in seconds.")
    min_melody_sample_rate: int = Field(8_000, description="Lowest melody sample rate, in Hz.")
    max_melody_sample_rate: int = Field(
        192_000,
        description="Highest melody sample rate, in Hz; the model replica resamples the melody, and its "
        "cost grows with the rate (2^31-1 Hz would not fit in memory).",
    )
    max_melody_channels: int = Field(8, description="Most channels in a melody (they are mixed to mono).")


class UploadLimits(BaseModel):
    """How request bodies may arrive. Serve's HTTP proxy reads each body whole before the request takes
    an ingress slot (leap_ray.serve.client_gate), so these hold there; the ingress applies them too."""

    idle_timeout_s: float = Field(
        15.0,
        gt=0,
        description="A body that stops arriving for this long gets 408; so does one arriving slower than "
        "min_rate_bytes_s after the first idle_timeout_s.",
    )
    min_rate_bytes_s: int = Field(
        1024,
        gt=0,
        description="Slowest accepted upload rate: a body's deadline is idle_timeout_s plus one second per "
        "this many bytes received.",
    )
    timeout_s: float = Field(120.0, gt=0, description="Longest any body may take to arrive; then 408.")
    per_client: int = Field(
        16,
        ge=1,
        description="Bodies one client (its API key, else its IP address) may be sending at once; "
        "more get 429.",
    )
    buffered_bytes: int = Field(
        1024**3,
        ge=1,
        description="Bytes of bodies a proxy holds at once, from everyone; an upload past it gets 503. "
        "A slow body costs the proxy a connection and its bytes so far, never an ingress slot.",
    )


class RateLimits(BaseModel):
    """Requests per client (its API key, else its IP address) at each HTTP proxy: a token bucket."""

    requests_per_s: float = Field(100.0, ge=0, description="Sustained requests a second (0: no limit).")
    burst: int = Field(400, ge=1, description="Requests a client may send at once above the rate.")


class Limits(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEAP_RAY_", env_nested_delimiter="__", extra="ignore")

    max_body_bytes: int = Field(32 * 1024 * 1024, description="Largest request body; larger ones get 413.")
    max_json_items: int = Field(
        100_000,
        description="Most JSON keys and array items (counted from the body's ':' and ',') in one body; "
        "more get 413 before parsing. A valid request needs a few hundred.",
    )

    sdxl: SDXLLimits = SDXLLimits()
    musicgen: MusicGenLimits = MusicGenLimits()
    uploads: UploadLimits = UploadLimits()
    rate: RateLimits = RateLimits()


LIMITS = Limits()
API_KEYS_FILE_ENV = "LEAP_RAY_API_KEYS_FILE"
WHSEC_PREFIX = b"whsec_"
# output_dir URLs that name an object store (obstore's schemes for S3, Google Cloud Storage, Azure).
OBJECT_STORE_SCHEMES = ("s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl")
# Option names that hold credentials: those come from the environment, never the config Serve logs.
SECRET_OPTION_WORDS = ("secret", "token", "password", "access_key", "account_key", "service_account", "sas")
OUTPUT_LINK_CONTEXT = b"leap_ray output links"  # what the derived signing key is for (`output_url_secret`)
TINY_SUGGESTED_STEPS = 8  # a tiny model's 256 px image in a few seconds on a CPU, previews and all
SHORTEST_LINK_KEY = 32  # bytes of an output_url_secret_file's key: an HMAC-SHA256 key as long as its hash


def is_object_store_url(output_dir: str) -> bool:
    return urlsplit(output_dir).scheme in OBJECT_STORE_SCHEMES


def read_secret(path: str | None) -> bytes:
    """A secret file's key: its bytes, or, for a Standard Webhooks secret (`whsec_<base64>`, what
    receivers' libraries take), the bytes it encodes; empty without a file."""
    secret = Path(path).read_bytes().strip() if path else b""
    if secret.startswith(WHSEC_PREFIX):
        return base64.b64decode(secret.removeprefix(WHSEC_PREFIX) + b"==")
    return secret


class ModelSettings(BaseModel):
    """One model deployment's engine. Serve options (replicas, autoscaling, GPUs, queue limits and
    batching through `user_config`) live in the Serve config's `deployments` section."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(
        description="Hub model id, local folder, or tiny:<name> for a built-in tiny model "
        "(tiny:sdxl, tiny:musicgen, tiny:musicgen-melody) built on first use."
    )
    engine: str | None = Field(
        None, description="module:Class of the engine; the deployment's own engine when absent."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the engine (device, dtype, threads, ...)."
    )

    def engine_arguments(self) -> dict[str, Any]:
        """The engine's keyword arguments."""
        return dict(self.engine_kwargs)


class SDXLSettings(ModelSettings):
    """The SDXL base deployment's engine, with the LoRA adapters requests may name."""

    loras: dict[str, str] = Field(
        default_factory=dict,
        description="LoRA adapters requests may name: name -> hub id, local folder or tiny:<name>. "
        "Each is loaded on a replica the first time a request there names it.",
    )
    max_loaded_loras: int = Field(
        4,
        ge=1,
        description="Most adapters one replica holds at once; the least recently used is unloaded. "
        "Serve routes a request to a replica that holds its adapters when one can take it.",
    )
    suggested_steps: int | None = Field(
        None,
        ge=1,
        description="Denoising steps clients are offered by default (GET /v1/sdxl/defaults, the "
        "playground); requests without num_inference_steps still run the request's default. Absent: "
        f"{TINY_SUGGESTED_STEPS} for a tiny: model (noise at any count), else the request's default.",
    )

    def suggested(self) -> int | None:
        """The steps clients are offered by default; None: the request's own default."""
        if self.suggested_steps is None and self.model.startswith(TINY_PREFIX):
            return TINY_SUGGESTED_STEPS
        return self.suggested_steps

    def engine_arguments(self) -> dict[str, Any]:
        """The engine's keyword arguments: engine_kwargs, and the adapters when there are any (an
        injected engine without adapters need not take them)."""
        adapters = {"loras": self.loras, "max_loaded_loras": self.max_loaded_loras} if self.loras else {}
        return {**self.engine_kwargs, **adapters}


class BatchingConfig(BaseModel):
    """A model deployment's `user_config`: dynamic batching, changeable without a restart."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(8, ge=1, description="Most work in one batch (SDXL counts images).")
    batch_wait_timeout_s: float = Field(
        0.02, ge=0.0, description="Under batching: request, how long an empty batch waits to fill."
    )
    batching: Literal["request", "step"] = Field(
        "step",
        description="step: requests join and leave the running batch at every step (an SDXL denoising "
        "step, a MusicGen token), so a short one never waits for a long one. request: the same running "
        "batch, but admitting only when it is empty, so batches of whole requests run to their end (the "
        "baseline the benchmarks measure step batching against).",
    )


class JobsSettings(BaseModel):
    """Where jobs and their outputs are kept, and how many run at once per ingress replica."""

    model_config = ConfigDict(extra="forbid")

    store: Literal["sqlite", "redis"] = Field(
        "sqlite", description="sqlite: one file, for one machine; redis: for ingress replicas on many nodes."
    )
    store_path: str | None = Field(
        None,
        description="SQLite file shared by the ingress replicas; default: "
        "~/.cache/leap_ray/jobs/<application>/jobs.sqlite3, one per application.",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="The Redis server, with store: redis.")
    output_dir: str | None = Field(
        None,
        description="Where the jobs' outputs go: a folder (on many nodes, a filesystem they all mount) or an "
        "object store's URL, s3://bucket/prefix (also gs://, az://), its credentials and endpoint from the "
        "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, ...). "
        "Default: ~/.cache/leap_ray/jobs/<application>/outputs.",
    )
    output_store_options: dict[str, str] = Field(
        default_factory=dict,
        description="Options of an object-store output_dir, as obstore names them (endpoint, region, "
        "virtual_hosted_style_request, ...; an http:// endpoint is allowed plain HTTP). Never credentials: "
        "Serve logs this config, so they come from the environment.",
    )
    output_urls: Literal["ingress", "presigned"] = Field(
        "ingress",
        description="How clients fetch outputs: ingress, through this service by signed links; presigned, "
        "straight from the object store by its presigned links (output_dir must be an object store's URL).",
    )
    output_url_ttl_s: float = Field(
        24 * 3600.0,
        gt=0,
        description="How long an output's link works, never past the job's retention (a presigned S3 link: "
        "at most 7 days).",
    )
    output_url_secret_file: str | None = Field(
        None,
        description="A file holding the key that signs output links (`whsec_<base64>` or raw bytes, at least "
        "32 bytes), the same for every ingress replica. Default: a key derived from the webhook secret and "
        "the API keys.",
    )
    redis_prefix: str | None = Field(
        None, description="Prefix of the job keys in Redis; default: leap_ray:<application>:."
    )
    max_concurrent_jobs: int = Field(
        256,
        ge=1,
        description="Most jobs one ingress replica runs at once. Over the cluster, as many jobs of a "
        "model run at once as its running replicas batch (their max_batch_size each); the rest wait "
        "in the store, taking turns between API keys, and count towards the model's autoscaling.",
    )
    capacity_refresh_s: float = Field(
        1.0, gt=0, description="How often the job runner reads how many replicas each model runs."
    )
    stale_after_s: float = Field(
        30.0, gt=0, description="A running job whose runner is silent this long is taken over by another."
    )
    retention_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="Finished jobs and their outputs are deleted after this long."
    )
    file_ttl_s: float = Field(
        24 * 3600.0,
        gt=0,
        description="Files uploaded with POST /v1/files (Replicate's client uploads every file it is given) "
        "are kept beside the outputs this long (their expires_at), then deleted.",
    )
    webhook_secret_file: str | None = Field(
        None,
        description="A file holding the webhook signing secret (kept out of the config, which Serve logs).",
    )
    webhook_allow_private_networks: bool = Field(
        False,
        description="Allow webhooks to private, loopback and link-local addresses (refused by default).",
    )
    webhook_attempts: int = Field(5, ge=1, le=20, description="Deliveries tried before giving up.")
    webhook_backoff_s: float = Field(1.0, ge=0, description="Wait before the 2nd attempt, doubling after.")
    store_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Longest wait for the job store (a lock, a slow Redis); past it the call fails and "
        "the client gets 503 with Retry-After.",
    )
    max_queued_jobs: int = Field(
        10_000,
        ge=1,
        description="Jobs waiting to run, over all ingress replicas; more get 503 + Retry-After.",
    )
    max_queued_jobs_per_key: int = Field(
        1_000,
        ge=1,
        description="Jobs of one API key waiting to run (without keys: of everyone); more get 429 "
        "quota_exceeded + Retry-After.",
    )

    def for_application(self, name: str) -> "JobsSettings":
        """These settings with the defaults that depend on the application filled in, so that two
        applications (on one machine, or one Redis) never share jobs."""
        folder = f"~/.cache/leap_ray/jobs/{name}"
        defaults = {
            "store_path": f"{folder}/jobs.sqlite3",
            "output_dir": f"{folder}/outputs",
            "redis_prefix": f"leap_ray:{name}:",
        }
        return self.model_copy(update={key: getattr(self, key) or value for key, value in defaults.items()})

    @field_validator("output_store_options")
    @classmethod
    def _no_credentials(cls, options: dict[str, str]) -> dict[str, str]:
        for name in options:
            if any(word in name.lower() for word in SECRET_OPTION_WORDS):
                raise ValueError(f"{name}: credentials come from the environment, not the config Serve logs")
        return options

    @model_validator(mode="after")
    def _presigned_needs_an_object_store(self) -> "JobsSettings":
        if self.output_urls == "presigned" and not is_object_store_url(self.output_dir or ""):
            raise ValueError("output_urls presigned needs an object store's output_dir (s3://, gs://, az://)")
        return self

    def webhook_secret(self) -> bytes:
        """The key that signs webhooks (`read_secret`)."""
        return read_secret(self.webhook_secret_file)

    def output_url_secret(self, api_keys: Iterable[str]) -> bytes:
        """The key that signs output links: the file's, else one derived from the webhook secret and
        `api_keys`, which every ingress replica reads from the same files, so that each verifies the
        others' links (a per-process key would not); changing a key ends the links made before. With
        none of these the service has no keys: every route is open, and the links guard nothing more.
        ValueError for a file whose key (stripped, `whsec_` decoded) is under 32 bytes."""
        if self.output_url_secret_file:
            secret = read_secret(self.output_url_secret_file)
            if len(secret) < SHORTEST_LINK_KEY:
                # An empty file would sign with b"", which anyone can: refused at startup instead.
                raise ValueError(
                    f"output_url_secret_file {self.output_url_secret_file}: its key is {len(secret)} bytes, "
                    f"at least {SHORTEST_LINK_KEY} are needed (e.g. `openssl rand -hex 32`)"
                )
            return secret
        material = b"\n".join([self.webhook_secret(), *sorted(key.encode() for key in api_keys)])
        return hmac.new(OUTPUT_LINK_CONTEXT, material, hashlib.sha256).digest()


class IngressSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec_timeout_s: float = Field(
        600.0, gt=0, description="How long a request waits for a model deployment to come up."
    )
    # Keys live in files, never in the Serve config itself: Serve logs application arguments.
    api_keys_file: str | None = Field(
        None,
        description="A file of bearer keys, one per line. Without it and LEAP_RAY_API_KEYS_FILE: no auth.",
    )
    admin_api_keys_file: str | None = Field(
        None,
        description="A file of admin bearer keys, one per line: they may do what any key may and see "
        "every key's jobs (a job is otherwise seen only with the key that created it).",
    )
    jobs: JobsSettings = JobsSettings()
    public_url: str | None = Field(
        None,
        description="The service's URL as its clients reach it, e.g. https://images.example.com (with a "
        "path when a proxy in front adds one): the links in answers and webhooks (jobs, predictions, "
        "OpenAI `url` images) start with it and the application's route prefix. Without it they name "
        "the address the connection reached, never the request's Host header, which clients write.",
    )
    replica_failure_retries: int = Field(
        1, ge=0, le=3, description="Retries of a request whose model replica died (safe: seeds are fixed)."
    )

    @field_validator("public_url")
    @classmethod
    def _base_url(cls, url: str | None) -> str | None:
        if url is not None and not _is_base_url(url):
            raise ValueError("must be an absolute http(s) URL with a host, and no user, query or fragment")
        return None if url is None else url.rstrip("/")  # links add their own "/"

    def load_admin_keys(self) -> list[str]:
        return _keys_in([self.admin_api_keys_file])

    def output_url_secret(self) -> bytes:
        """The key that signs output links (`JobsSettings.output_url_secret`), with this service's keys."""
        return self.jobs.output_url_secret([*self.load_api_keys(), *self.load_admin_keys()])

    def load_api_keys(self) -> list[str]:
        """The keys of the config's file and of the file LEAP_RAY_API_KEYS_FILE names."""
        return _keys_in([self.api_keys_file, os.environ.get(API_KEYS_FILE_ENV)])


def _is_base_url(url: str) -> bool:
    """An absolute http(s) URL with a host (and a port in range, if any), and no user, query or
    fragment: links are built by appending paths to it."""
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # not a number, or out of range
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and port_ok
        and "@" not in parts.netloc
        and not any(mark in url for mark in "?#")
        and url.isprintable()
        and " " not in url
    )


def _keys_in(paths: list[str | None]) -> list[str]:
    """The keys of the files named, one per line."""
    return [
        line.strip() for path in paths if path for line in Path(path).read_text().splitlines() if line.strip()
    ]


class ContentCredentialsSettings(BaseModel):
    """A C2PA signer for the outputs' content credentials (leap_ray.serve.credentials). The files are
    read, and a test manifest signed and verified, when each model replica starts: a path, key or chain
    that does not work stops the replica with an error naming the setting, never a request."""

    model_config = ConfigDict(extra="forbid")

    certificate_chain_file: str = Field(
        description="PEM file of the signing certificate first, then its intermediates (the root is left "
        "out). C2PA wants an end-entity certificate (not a CA) with the digitalSignature key usage and "
        "an extended key usage such as emailProtection or documentSigning."
    )
    private_key_file: str = Field(description="PEM file of the certificate's private key (PKCS#8).")
    algorithm: Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"] = Field(
        "es256", description="The signature algorithm, matching the key (es256: an ECDSA P-256 key)."
    )
    timestamp_url: str | None = Field(
        None,
        description="An RFC 3161 time-stamp authority's URL: each signature is time-stamped there (a "
        "network call per output), so it stays valid after the certificate expires.",
    )
    timestamp_timeout_s: float = Field(
        5.0,
        gt=0,
        le=30,
        description="How long a signature waits for the time-stamp authority before the output is signed "
        "without a time stamp (c2pa's own wait, 30 s, cannot be set).",
    )
    timestamp_retry_after_s: float = Field(
        60.0,
        ge=0,
        description="After the time-stamp authority fails, outputs are signed without a time stamp for this "
        "long; then one output tries the authority again (the others still unstamped until it answers).",
    )


class OutputSettings(BaseModel):
    """What the model deployments write into the files they make (leap_ray.serve.outputs). SDXL's
    invisible watermark is the engines' (engine_kwargs `watermark`), since diffusers applies it to the
    decoded pixels."""

    model_config = ConfigDict(extra="forbid")

    parameters: bool = Field(
        True,
        description="Each output's generation parameters in its file: AUTOMATIC1111's `parameters` and "
        "the request as JSON in PNG text chunks, A1111's in JPEG and WebP EXIF, audio tags (title, "
        "comment, software). false: files carry none (prompts stay out of shared files).",
    )
    model_names: dict[str, str] = Field(
        {},
        description="The name outputs give each model (model source -> name), in their parameters, "
        "their JSON record and their content credentials. A model not named here is named by a safe "
        "default: a hub id or tiny: name as given, a local folder by its last part only (its path "
        "never leaves the machine).",
    )
    content_credentials: ContentCredentialsSettings | None = Field(
        None,
        description="Sign every image (PNG, JPEG, WebP) and track (WAV, FLAC, MP3; OGG cannot carry one) "
        "with C2PA content credentials: created by a trained algorithm (IPTC's trainedAlgorithmicMedia), "
        "naming the model. None: no credentials.",
    )


class AppConfig(BaseModel):
    """The `args` of the leap_ray application (`leap_ray.serve.app:build_app`)."""

    model_config = ConfigDict(extra="forbid")

    sdxl: SDXLSettings = SDXLSettings(model="tiny:sdxl")
    refiner: ModelSettings | None = Field(
        None,
        description="The SDXL refiner, its own deployment (named Refiner); without it, requests asking "
        "for the refiner get 422. The local config serves tiny:sdxl-refiner.",
    )
    musicgen: ModelSettings = ModelSettings(model="tiny:musicgen-melody")
    ingress: IngressSettings = IngressSettings()
    outputs: OutputSettings = OutputSettings()
