"""Job webhooks: the job's JSON POSTed to the client's URL, signed, retried with backoff, and never in
the way of generation (each delivery is its own task).

Signed with the configured secret as Standard Webhooks specify (the spec Replicate and Svix use;
`webhook-id`, the same for every attempt of one delivery so receivers drop duplicates,
`webhook-timestamp` of the attempt, so they drop replays, and `webhook-signature: v1,<base64
HMAC-SHA256 of "id.timestamp.body">`, made by the `standardwebhooks` library). The older
`X-LeapRay-Signature` (an HMAC of the body alone, so a captured delivery could be replayed) is gone.
The event is in `X-LeapRay-Event` (`start`, `progress` or `completed`).

Unless the operator allows private networks, a webhook may only reach public addresses. The host is
resolved at submission (a 422 at once) and again at every delivery attempt, and the request goes to the
address that was checked, so a name re-pointed at the service's own network later (DNS rebinding)
gets nothing."""

import asyncio
import ipaddress
import json
import logging
import re
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from leap_ray.api.jobs import JobEventKind
from leap_ray.errors import InvalidRequest
from leap_ray.serve import metrics

logger = logging.getLogger("ray.serve")
EVENT_HEADER = "X-LeapRay-Event"
RESOLVE_TIMEOUT_S = 10.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NETLOC = re.compile(r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<host>[^\[\]:@]+))(?::(?P<port>[0-9]{0,5}))?")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# A last label that is a number makes a browser read the host as an IPv4 address (`127.1`,
# `0x7f.1`, `2130706433`) and getaddrinfo does the same: only dotted quads are taken as addresses.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
# Refused whatever `is_global` says (its tables differ between Python releases, and 3.11's call all of
# these global): tunnels to IPv4 addresses that are deprecated or local, documentation and SRv6 space.
_REFUSED_IPV6 = [
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible, deprecated (RFC 4291)
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215)
    ipaddress.IPv6Network("2001::/32"),  # Teredo (RFC 4380)
    ipaddress.IPv6Network("2002::/16"),  # 6to4, deprecated (RFC 7526)
    ipaddress.IPv6Network("3fff::/20"),  # documentation (RFC 9637)
    ipaddress.IPv6Network("5f00::/16"),  # SRv6 SIDs (RFC 9602)
]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052)


@dataclass(frozen=True)
class WebhookTarget:
    """A webhook URL taken apart: `host` is an ASCII name or an address (no brackets), `ip` the
    address when the URL names one, `target` the path and query sent."""

    scheme: str
    host: str
    ip: IPAddress | None
    port: int
    target: str

    @property
    def host_header(self) -> str:
        literal = f"[{self.host}]" if ":" in self.host else self.host
        return literal if self.port == _DEFAULT_PORTS[self.scheme] else f"{literal}:{self.port}"

    def url_for(self, ip: IPAddress) -> str:
        """The URL with the host replaced by one of its checked addresses."""
        literal = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"{self.scheme}://{literal}:{self.port}{self.target}"


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="webhook_url")


def parse_webhook_url(url: str) -> WebhookTarget:
    """Takes a webhook URL apart, raising nothing but InvalidRequest (param `webhook_url`): an http(s)
    URL with a host name or address, an optional port, and no user info."""
    try:
        return _parse(url)
    except InvalidRequest:
        raise
    except (ValueError, TypeError) as error:  # urllib, ipaddress and the idna codec say ValueError
        raise _invalid(f"webhook_url is not a valid URL: {error}") from None


def _parse(url: str) -> WebhookTarget:
    # urllib drops tabs and newlines and reads a backslash differently from browsers and httpx: refuse
    # them rather than deliver somewhere other than where the check looked.
    if any(char <= " " or char in "\x7f\\" for char in url):
        raise _invalid("webhook_url must not contain spaces, control characters or '\\'")
    parts = urlsplit(url)
    matched = _NETLOC.fullmatch(parts.netloc.lower())
    if parts.scheme not in _DEFAULT_PORTS or matched is None:
        raise _invalid("webhook_url must be an http(s) URL with a host, an optional port and no user info")
    port = int(matched["port"]) if matched["port"] else _DEFAULT_PORTS[parts.scheme]
    if not 0 < port < 65536:
        raise _invalid(f"webhook_url port {port} is out of range 1-65535")
    if matched["ipv6"]:
        ip: IPAddress | None = ipaddress.IPv6Address(matched["ipv6"])
        host = str(ip)
    else:
        ip, host = _host(matched["host"])
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return WebhookTarget(parts.scheme, host, ip, port, target)


def _host(text: str) -> tuple[IPAddress | None, str]:
    """A dotted-quad address, or a DNS name in its ASCII (IDNA) form."""
    try:
        ip = ipaddress.IPv4Address(text)
        return ip, str(ip)
    except ValueError:
        pass
    name = text.encode("idna").decode("ascii").lower()
    labels = name.removesuffix(".").split(".")  # a trailing dot (a rooted name) is kept, not a label
    if len(name) > 254 or not all(_LABEL.fullmatch(label) for label in labels):
        raise _invalid(f"webhook_url host {text!r} is not a valid host name")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise _invalid(f"webhook_url host {text!r}: a numeric host must be a dotted-quad IPv4 address")
    return None, name


def _is_public(ip: IPAddress) -> bool:
    """Whether an address is on the public internet. An IPv4-mapped or NAT64 address is judged by the
    IPv4 address it carries, which is where the connection ends."""
    translated = _translated_ipv4(ip)
    if translated is not None:
        return _is_public(translated)
    return ip.is_global and not ip.is_multicast and not any(ip in network for network in _REFUSED_IPV6)


def _translated_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if ip.version == 4:
        return None
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.ipv4_mapped


def _resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses a name has now, in the resolver's order. Blocks: call it off the event loop."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found = [info[4][0] for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
    # A scoped link-local address ("fe80::1%eth0") is refused or, where allowed, reached unscoped.
    addresses = list(dict.fromkeys(ipaddress.ip_address(address.split("%")[0]) for address in found))
    if not addresses:
        raise OSError(f"no address for {host}")
    return addresses


def _addresses(target: WebhookTarget) -> list[IPAddress]:
    return [target.ip] if target.ip is not None else _resolve(target.host, target.port)


def check_webhook_url(url: str, *, allow_private: bool) -> None:
    """Refuses (InvalidRequest, param `webhook_url`) malformed URLs, what is not http(s), and hosts on
    private, loopback, link-local or otherwise non-public addresses unless the operator allows them.
    Resolves the host: call it off the event loop."""
    target = parse_webhook_url(url)
    if allow_private:
        return
    try:
        addresses = _addresses(target)
    except (OSError, UnicodeError):
        raise _invalid(f"webhook_url host {target.host!r} does not resolve") from None
    if not all(_is_public(ip) for ip in addresses):
        raise _invalid("webhook_url points to a private, loopback or link-local address")


def standard_headers(message_id: str, body: bytes, secret: bytes) -> dict[str, str]:
    """Standard Webhooks' headers for one attempt (the signature only with a secret)."""
    now = datetime.fromtimestamp(int(time.time()), tz=UTC)
    headers = {"webhook-id": message_id, "webhook-timestamp": str(int(now.timestamp()))}
    if secret:
        headers["webhook-signature"] = Webhook(secret).sign(message_id, now, body.decode())
    return headers


async def deliver(
    url: str,
    event: JobEventKind,
    payload: dict[str, Any],
    *,
    secret: bytes,
    attempts: int,
    backoff_s: float,
    allow_private: bool,
) -> bool:
    """POSTs until a 2xx answer, waiting backoff_s, 2·backoff_s, ... between attempts (not after the
    last). Each attempt resolves the host again and, unless allow_private, sends nothing when any of
    its addresses is not public."""
    try:
        target = parse_webhook_url(url)
    except InvalidRequest as error:
        logger.warning("webhook %s for job %s not sent: %s", event, payload.get("id"), error.message)
        return False
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", EVENT_HEADER: event, "Host": target.host_header}
    message_id = f"msg_{uuid.uuid4().hex}"
    async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
            signed = {**headers, **standard_headers(message_id, body, secret)}
            reason = await _attempt(client, target, body, signed, allow_private=allow_private)
            if reason is None:
                metrics.webhook_deliveries().inc(tags={"outcome": "delivered"})
                return True
            logger.warning(
                "webhook %s for job %s failed (%s), attempt %d", event, payload.get("id"), reason, attempt + 1
            )
    metrics.webhook_deliveries().inc(tags={"outcome": "failed"})
    return False


async def _attempt(
    client: httpx.AsyncClient,
    target: WebhookTarget,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
) -> str | None:
    """One delivery; None when it was taken, else why not."""
    try:
        # Bounded: a name server that never answers must not hold a shared worker thread for long.
        addresses = await asyncio.wait_for(asyncio.to_thread(_addresses, target), RESOLVE_TIMEOUT_S)
    except (OSError, UnicodeError, TimeoutError) as error:
        return f"{target.host} does not resolve: {error}"
    if not allow_private and not all(_is_public(ip) for ip in addresses):
        return f"{target.host} now resolves to a refused address"
    try:
        response = await _post(client, target, addresses, body, headers)
    except httpx.HTTPError as error:
        return type(error).__name__
    return None if response.is_success else f"status {response.status_code}"


async def _post(
    client: httpx.AsyncClient,
    target: WebhookTarget,
    addresses: list[IPAddress],
    body: bytes,
    headers: dict[str, str],
) -> httpx.Response:
    """POSTs to the checked addresses in the resolver's order, moving on only from one that cannot be
    reached (an IPv6 address first on a host without IPv6, say). TLS still names the host, for SNI
    and for the certificate check."""
    extensions = {"sni_hostname": target.host} if target.scheme == "https" and target.ip is None else {}
    for ip in addresses[:-1]:
        try:
            return await client.post(target.url_for(ip), content=body, headers=headers, extensions=extensions)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            continue
    last = target.url_for(addresses[-1])
    return await client.post(last, content=body, headers=headers, extensions=extensions)
