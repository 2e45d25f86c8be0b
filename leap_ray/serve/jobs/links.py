"""Links to jobs' outputs that work without the bearer key, so that a browser's `<img src>` or a
downstream tool fetches them: signed and expiring links through the ingress (the default), or the
object store's own presigned links (`output_urls: presigned`).

An ingress link is its path with `?expires=<unix seconds>&signature=<hex>`, the signature an
HMAC-SHA256, under the operator's key (`JobsSettings.output_url_secret`), of the path and the expiry.
The path is the application's own (without its route prefix or public URL, which proxies change) and
names the job by its store id, so that a link opens the one job it was made for whoever fetches it.
`LinkSigner.verify` is the one rule that lets a request through without a key; the auth middleware
calls it."""

import asyncio
import hashlib
import hmac
import re
import time
from datetime import timedelta
from urllib.parse import parse_qs

from leap_ray.config import JobsSettings
from leap_ray.errors import Forbidden
from leap_ray.serve.jobs.outputs import OutputStore
from leap_ray.serve.jobs.store import Job

OUTPUT_PATH = re.compile(r"/v1/jobs/[^/]+/outputs/[0-9]+")  # the only paths a link opens
SIGNED_METHODS = frozenset({"GET", "HEAD"})
LINK_PARAMS = ("expires", "signature")
LONGEST_EXPIRES = 12  # digits: Unix seconds until the year 33658 (int() of 5,000 digits raises)


def output_path(job_id: str, index: int) -> str:
    """An output's path under the application (a job's store id, which a link names)."""
    return f"/v1/jobs/{job_id}/outputs/{index}"


class LinkSigner:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def signature(self, path: str, expires: int) -> str:
        return hmac.new(self.secret, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def signed(self, path: str, expires: int) -> str:
        """The path with its expiry and signature."""
        return f"{path}?expires={expires}&signature={self.signature(path, expires)}"

    def verify(self, method: str, path: str, query_string: bytes) -> bool:
        """Whether a request is a signed link's that holds: False when it is not an output's with a
        link's parameters (it then needs a key as any other), True when it is and holds; Forbidden when
        its link is expired, or its path, expiry or signature was altered."""
        if not OUTPUT_PATH.fullmatch(path):
            return False
        query = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
        if not any(name in query for name in LINK_PARAMS):
            return False
        expires, signature = (query.get(name, []) for name in LINK_PARAMS)
        if (
            method not in SIGNED_METHODS
            or len(expires) != 1
            or len(signature) != 1
            or not expires[0].isascii()
            or not expires[0].isdecimal()
            or len(expires[0]) > LONGEST_EXPIRES
        ):
            raise Forbidden("this link is not a signed output link", code="invalid_signature")
        if not hmac.compare_digest(signature[0].encode(), self.signature(path, int(expires[0])).encode()):
            raise Forbidden("this link's signature does not match it", code="invalid_signature")
        if int(expires[0]) < time.time():
            raise Forbidden("this link has expired; fetch the job again for a fresh one", code="link_expired")
        return True


class OutputLinks:
    """The links of a job's outputs, as its views (job, prediction, webhook, OpenAI `url`) give them."""

    def __init__(self, signer: LinkSigner, store: OutputStore, settings: JobsSettings) -> None:
        self.signer = signer
        self.store = store
        self.presigned = settings.output_urls == "presigned"
        self.ttl_s = settings.output_url_ttl_s
        self.retention_s = settings.retention_s

    def lifetime_s(self, job: Job) -> float:
        """How long a link made now works: `output_url_ttl_s`, never past the job's retention."""
        ttl_s = self.ttl_s
        if job.finished_at is not None:
            ttl_s = min(ttl_s, job.finished_at + self.retention_s - time.time())
        return max(ttl_s, 1.0)

    def presign(self, job: Job, index: int) -> str | None:
        """The store's presigned link of an output, with `output_urls: presigned` and a store that
        makes them; else None. Blocking: credentials may be fetched."""
        if not self.presigned:
            return None
        return self.store.presigned_url(job.outputs[index], timedelta(seconds=self.lifetime_s(job)))

    async def presigned_url(self, job: Job, index: int) -> str | None:
        """`presign`, off the event loop."""
        return await asyncio.to_thread(self.presign, job, index) if self.presigned else None

    async def urls(self, job: Job, base: str) -> list[str]:
        """Each output's link: presigned, or signed through the ingress under `base` (`link_base`)."""
        if self.presigned and job.outputs:
            return await asyncio.to_thread(self.links, job, base)
        return self.links(job, base)

    def links(self, job: Job, base: str) -> list[str]:
        expires = int(time.time() + self.lifetime_s(job))
        return [
            self.presign(job, index) or base + self.signer.signed(output_path(job.id, index), expires)
            for index in range(len(job.outputs))
        ]
