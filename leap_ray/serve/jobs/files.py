"""Files uploaded for later predictions (Replicate's `POST /v1/files`), kept where the jobs' outputs are
(the output store: a folder, or an object store) under `files/<hour>/<id>/`: the file as
`0.<extension>`, its record (`UploadedFile`) as `meta/0.json`. A file belongs to the API key that
uploaded it: another key's reads as missing (an admin key reads any).

A file is kept `file_ttl_s` (24 h, Replicate's), then it is gone. Its id starts with the hour it was
uploaded in, so it is found without an index, and whole hours are deleted once every file in them has
expired: each upload sweeps the hours expired since this replica's last sweep (on its first, the
SWEEP_LOOKBACK_HOURS before; hours older still, left by a service down that long, stay until an
operator deletes `files/`).

A prediction names a file by the URL its upload answered (`urls.get`, `<base>/v1/files/<id>`). The URL
is matched on its path's end, `/v1/files/<id>`, whatever its scheme, host or route prefix (proxies
rewrite them, and the client may reach the service by another name than the one it was given); only
an id of ours matches, and only the uploading key's file is read. Nothing is ever fetched from a URL.

Blocking: the routes call it through `asyncio.to_thread`."""

import dataclasses
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from leap_ray.api.files import FileUpload, UploadedFile, checked_media, data_uri, file_name
from leap_ray.errors import InvalidRequest, LeapRayError, NotFound
from leap_ray.serve.jobs.outputs import OutputStore

logger = logging.getLogger("ray.serve")

FOLDER = "files"
HOUR_S = 3600
SWEEP_LOOKBACK_HOURS = 48
FILE_ID = re.compile(r"([0-9a-f]{1,12})-[0-9a-f]{32}")  # <hour, hex>-<128 random bits>
FILE_URL_PATH = re.compile(rf"/v1/files/({FILE_ID.pattern})\Z")
RECORD = ("json", "application/json")


def is_url(value: object) -> bool:
    """Whether a value is an http(s) URL (which no file field fetches)."""
    return isinstance(value, str) and value[:8].lower().startswith(("http://", "https://"))


def file_id_in_url(url: str) -> str | None:
    """The id of the file of ours a URL names (its path ends in /v1/files/<id>), or None."""
    try:
        match = FILE_URL_PATH.search(urlsplit(url).path)
    except ValueError:  # not a URL urllib reads (a bad IPv6 literal): not one of ours either
        return None
    return None if match is None else match[1]


def folder_of(file_id: str) -> str:
    """Where a file and its record are kept: under the hour its id names."""
    match = FILE_ID.fullmatch(file_id)
    if match is None:
        raise NotFound(f"no file {file_id}", param="file_id")
    return f"{FOLDER}/{match[1]}/{file_id}"


class UploadedFiles:
    """Uploads, reads and deletes uploaded files in the output store, per API key; sweeps expired ones."""

    def __init__(self, store: OutputStore, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock
        self.swept_through: int | None = None  # the last expired hour this replica deleted
        self.sweeping = threading.Lock()

    def create(self, upload: FileUpload, name: str | None, client: str) -> UploadedFile:
        """Keeps an upload (413 past its kind's limit, 422 when it is no image or audio we read)."""
        data = upload.content
        media = checked_media(data)
        now = self.clock()
        file = UploadedFile(
            id=f"{int(now // HOUR_S):x}-{secrets.token_hex(16)}",
            client=client,
            name=file_name(name, media),
            content_type=media.content_type,
            size=len(data),
            md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
            sha256=hashlib.sha256(data).hexdigest(),
            metadata=upload.metadata_object(),
            created_at=now,
            expires_at=now + self.ttl_s,
        )
        folder = folder_of(file.id)
        self.store.write(folder, [(data, media.extension, media.content_type)])
        record = {**dataclasses.asdict(file), "extension": media.extension}
        self.store.write(f"{folder}/meta", [(json.dumps(record).encode(), *RECORD)])
        self.sweep(now)
        return file

    def record(self, file_id: str, client: str | None) -> dict[str, Any]:
        """A file's record, for `client` (None: an admin); NotFound when it is not theirs or is gone."""
        try:
            raw = self.store.read(self.store.locate(f"{folder_of(file_id)}/meta", 0, *RECORD))
        except NotFound:
            raise NotFound(f"no file {file_id}", param="file_id") from None
        record = json.loads(raw)
        if client not in (None, record["client"]) or record["expires_at"] <= self.clock():
            raise NotFound(f"no file {file_id}", param="file_id")
        return record

    def get(self, file_id: str, client: str | None) -> UploadedFile:
        fields = {field.name for field in dataclasses.fields(UploadedFile)}
        return UploadedFile(**{k: v for k, v in self.record(file_id, client).items() if k in fields})

    def delete(self, file_id: str, client: str | None) -> None:
        self.record(file_id, client)  # only the uploading key's
        self.store.delete(folder_of(file_id))

    def data_uri(self, file_id: str, client: str | None) -> str:
        """The file as a `data:` URI, as a request's file field takes it."""
        record = self.record(file_id, client)
        stored = self.store.locate(folder_of(file_id), 0, record["extension"], record["content_type"])
        try:
            return data_uri(self.store.read(stored), record["content_type"])
        except NotFound:
            raise NotFound(f"no file {file_id}", param="file_id") from None

    def with_files(
        self, values: dict[str, Any], fields: Iterable[str], client: str | None, prefix: str
    ) -> dict[str, Any]:
        """`values` with each of `fields` that is a URL of one of `client`'s files replaced by the file
        as a data: URI. Any other http(s) URL there is refused, a 422 naming `prefix`.`field`."""
        inlined = dict(values)
        for field in fields:
            if not is_url(values.get(field)):
                continue
            file_id = file_id_in_url(values[field])
            if file_id is None:
                raise InvalidRequest(
                    f"{field}: URLs are not fetched: upload with POST /v1/files or send a data: URI",
                    param=f"{prefix}.{field}",
                    code="url_not_fetched",
                )
            try:
                inlined[field] = self.data_uri(file_id, client)
            except NotFound:
                raise InvalidRequest(
                    f"{field}: no file {file_id} of this API key (expired, deleted or never uploaded)",
                    param=f"{prefix}.{field}",
                    code="file_not_found",
                ) from None
        return inlined

    def sweep(self, now: float) -> None:
        """Deletes the hours whose files have all expired since the last sweep (one sweep at a time;
        a failed one is tried again at the next upload)."""
        last = int((now - self.ttl_s) // HOUR_S) - 1  # its files expired by (last + 1) h + ttl <= now
        if not self.sweeping.acquire(blocking=False):
            return
        try:
            first = last - SWEEP_LOOKBACK_HOURS + 1 if self.swept_through is None else self.swept_through + 1
            for hour in range(first, last + 1):
                self.store.delete(f"{FOLDER}/{hour:x}")
                self.swept_through = hour
        except (LeapRayError, OSError) as error:
            logger.warning("sweeping expired files failed (%s: %s)", type(error).__name__, error)
        finally:
            self.sweeping.release()
