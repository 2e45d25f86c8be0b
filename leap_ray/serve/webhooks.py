"""Job webhooks: the job's JSON POSTed to the client's URL, signed, retried with backoff, and never in
the way of generation (each delivery is its own task).

Signature: `X-LeapRay-Signature: sha256=<hex HMAC-SHA256 of the raw body with the configured secret>`;
the event is in `X-LeapRay-Event` (`start` or `completed`)."""

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx

from leap_ray.errors import InvalidRequest

logger = logging.getLogger("ray.serve")
SIGNATURE_HEADER = "X-LeapRay-Signature"
EVENT_HEADER = "X-LeapRay-Event"


def check_webhook_url(url: str, *, allow_private: bool) -> None:
    """Refuses what is not http(s), and hosts on private, loopback or link-local addresses (the
    service's own network) unless the operator allows them."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("webhook_url must be an http(s) URL with a host", param="webhook_url")
    if allow_private:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 443)}
    except (OSError, UnicodeError):
        raise InvalidRequest(
            f"webhook_url host {parts.hostname!r} does not resolve", param="webhook_url"
        ) from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise InvalidRequest(
                "webhook_url points to a private, loopback or link-local address", param="webhook_url"
            )


def signature(body: bytes, secret: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


async def deliver(
    url: str, event: str, payload: dict[str, Any], *, secret: bytes, attempts: int, backoff_s: float
) -> bool:
    """POSTs until a 2xx answer, waiting backoff_s, 2·backoff_s, ... between attempts."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", EVENT_HEADER: event}
    if secret:
        headers[SIGNATURE_HEADER] = signature(body, secret)
    async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
        for attempt in range(attempts):
            try:
                response = await client.post(url, content=body, headers=headers)
                if response.is_success:
                    return True
                reason = f"status {response.status_code}"
            except httpx.HTTPError as error:
                reason = type(error).__name__
            logger.warning(
                "webhook %s for job %s failed (%s), attempt %d", event, payload.get("id"), reason, attempt + 1
            )
            await asyncio.sleep(backoff_s * 2**attempt)
    return False
