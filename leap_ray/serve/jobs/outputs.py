"""Where jobs' outputs are kept: a local folder (the default; on many nodes, one they all mount), or an
object store (`s3://bucket/prefix`, and `gs://`, `az://`) through obstore.

obstore rather than fsspec/s3fs: one small Rust wheel without botocore or aiobotocore (whose pins fight
the rest of our environment), a synchronous API for the runner's threads, an asynchronous one, and
presigned URLs built in (`obstore.sign`) for S3, Google Cloud Storage and Azure alike. Credentials and
endpoints come from the environment the library reads (AWS_*, GOOGLE_*, AZURE_*), never from the config.

A job's record keeps each output as {"path", "content_type"}: an absolute file path, or the object's
URL. Records made before object stores (file paths) stay readable whatever the store is now.

The stores block: the runner calls them on its threads, the routes through `asyncio.to_thread`."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import obstore
from obstore.exceptions import BaseError
from obstore.store import ObjectStore, from_url

from leap_ray.config import JobsSettings, is_object_store_url
from leap_ray.errors import NotFound, StoreUnavailable

Encoded = list[tuple[bytes, str, str]]  # a job's outputs: (encoded bytes, extension, content type)
StoredOutput = dict[str, str]  # what a job's record keeps of an output: {"path", "content_type"}
LONGEST_PRESIGNED = timedelta(days=7)  # S3's limit for a presigned URL (SigV4)
# A store that is down fails a route in seconds, not after obstore's default three minutes of retries.
RETRY = {"max_retries": 3, "retry_timeout": timedelta(seconds=20)}


class OutputStore(Protocol):
    """Writes, reads and deletes jobs' outputs; blocking."""

    def write(self, job_id: str, outputs: Encoded) -> list[StoredOutput]:
        """Keeps a job's outputs; what its record keeps of them."""
        ...

    def read(self, stored: StoredOutput) -> bytes:
        """An output's bytes; NotFound when it is gone, StoreUnavailable when the store fails."""
        ...

    def locate(self, job_id: str, index: int, extension: str, content_type: str) -> StoredOutput:
        """Where `write` keeps (or would keep) output `index` of `job_id`: how something kept under a
        known name (an uploaded file) is found again without a record."""
        ...

    def delete(self, job_id: str) -> None:
        """Deletes a job's outputs, whatever was written of them."""
        ...

    def presigned_url(self, stored: StoredOutput, expires_in: timedelta) -> str | None:
        """A URL that fetches the output without credentials until it expires; None where the store
        has none (a folder, an output kept before the store changed)."""
        ...

    def local_file(self, stored: StoredOutput) -> Path | None:
        """The file an output is kept in on this machine (which may be gone), or None for an object:
        a route serves a file as a file (Range requests, ETag) and an object by its bytes."""
        ...


def gone() -> NotFound:
    """The error of an output no longer kept (expired, deleted): a 404 naming `index`."""
    return NotFound("this output is no longer kept", param="index")


def read_file(stored: StoredOutput) -> bytes:
    """An output kept as a file (by a folder store, or before object stores)."""
    path = Path(stored["path"])
    try:
        if not path.is_absolute():
            raise FileNotFoundError(stored["path"])
        return path.read_bytes()
    except FileNotFoundError:
        raise gone() from None


class FolderOutputs:
    """Outputs as files: <folder>/<job id>/<index>.<extension>."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def write(self, job_id: str, outputs: Encoded) -> list[StoredOutput]:
        (self.folder / job_id).mkdir(parents=True, exist_ok=True)
        stored = []
        for index, (data, extension, content_type) in enumerate(outputs):
            stored.append(self.locate(job_id, index, extension, content_type))
            Path(stored[-1]["path"]).write_bytes(data)
        return stored

    def locate(self, job_id: str, index: int, extension: str, content_type: str) -> StoredOutput:
        return {"path": str(self.folder / job_id / f"{index}.{extension}"), "content_type": content_type}

    def read(self, stored: StoredOutput) -> bytes:
        return read_file(stored)

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.folder / job_id, ignore_errors=True)

    def presigned_url(self, stored: StoredOutput, expires_in: timedelta) -> str | None:
        return None

    def local_file(self, stored: StoredOutput) -> Path | None:
        return Path(stored["path"])


class ObjectOutputs:
    """Outputs as objects: <url>/<job id>/<index>.<extension>, kept in records as their whole URL."""

    def __init__(self, url: str, options: dict[str, str]) -> None:
        self.url = url.rstrip("/")
        # obstore takes plain HTTP only when told, in its client options (never the store's config).
        # Given at all, they replace those of the environment (AWS_ALLOW_HTTP): only for an endpoint
        # named here.
        endpoint = next((value for name, value in options.items() if name.endswith("endpoint")), "")
        client = {"allow_http": True} if endpoint.startswith("http://") else None
        self.store: ObjectStore = from_url(
            self.url, config=options or None, client_options=client, retry_config=RETRY
        )

    def key(self, stored: StoredOutput) -> str | None:
        """The object's path in the store, or None for an output not kept here."""
        prefix = f"{self.url}/"
        return stored["path"].removeprefix(prefix) if stored["path"].startswith(prefix) else None

    def write(self, job_id: str, outputs: Encoded) -> list[StoredOutput]:
        stored = []
        for index, (data, extension, content_type) in enumerate(outputs):
            key = f"{job_id}/{index}.{extension}"
            with unavailable_on_failure("write"):
                obstore.put(self.store, key, data, attributes={"Content-Type": content_type})
            stored.append(self.locate(job_id, index, extension, content_type))
        return stored

    def locate(self, job_id: str, index: int, extension: str, content_type: str) -> StoredOutput:
        return {"path": f"{self.url}/{job_id}/{index}.{extension}", "content_type": content_type}

    def read(self, stored: StoredOutput) -> bytes:
        key = self.key(stored)
        if key is None:
            return read_file(stored)
        try:
            with unavailable_on_failure("read"):
                return bytes(obstore.get(self.store, key).bytes())
        except FileNotFoundError:
            raise gone() from None

    def delete(self, job_id: str) -> None:
        with unavailable_on_failure("delete"):
            keys = [item["path"] for batch in obstore.list(self.store, f"{job_id}/") for item in batch]
            if keys:
                obstore.delete(self.store, keys)

    def presigned_url(self, stored: StoredOutput, expires_in: timedelta) -> str | None:
        key = self.key(stored)
        if key is None:
            return None
        with unavailable_on_failure("sign a link in"):
            return obstore.sign(self.store, "GET", key, min(expires_in, LONGEST_PRESIGNED))

    def local_file(self, stored: StoredOutput) -> Path | None:
        return Path(stored["path"]) if self.key(stored) is None else None


@contextmanager
def unavailable_on_failure(doing: str) -> Iterator[None]:
    """Turns the store's failures, other than a missing object (FileNotFoundError, which obstore's
    NotFoundError is), into StoreUnavailable: a 503 with Retry-After for a route, a failed job for the
    runner."""
    try:
        yield
    except FileNotFoundError:
        raise
    except (BaseError, OSError) as error:
        raise StoreUnavailable(f"could not {doing} the outputs' store: {type(error).__name__}") from error


def open_output_store(settings: JobsSettings) -> OutputStore:
    """The output store `output_dir` names (its per-application default filled in: `for_application`)."""
    output_dir = settings.output_dir or ""
    if is_object_store_url(output_dir):
        return ObjectOutputs(output_dir, settings.output_store_options)
    return FolderOutputs(Path(output_dir).expanduser())
