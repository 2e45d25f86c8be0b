"""Our error shape at Ray Serve's HTTP proxy too. The proxy answers some failures itself, in plain
text: a 500 when the ingress replica serving a request dies mid-request (though the model may have
finished its work), a 503 when the ingress queue is full, a 404 for paths no application serves.
This middleware, installed into every proxy through Serve's proxy callback
(RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=leap_ray.serve.proxy:proxy_middlewares, which `leap-ray serve`
sets), turns them into `{"error": ...}` JSON; a dead ingress becomes 503 with Retry-After, so clients
retry (requests are not retried here: the body is gone and a seedless request would change). Inside
it, the client gate reads bodies whole and limits each client before a request takes an ingress slot."""

from starlette.middleware import Middleware

from leap_ray.errors import LeapRayError, ModelUnavailable, NotFound, Overloaded, RequestTimeout
from leap_ray.serve.client_gate import ClientGate
from leap_ray.serve.memory import return_big_buffers
from leap_ray.serve.middleware import ASGIApp, Message, Receive, Scope, Send, send_error

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "leap_ray.serve.proxy:proxy_middlewares"
RETRY_AFTER = [(b"retry-after", b"1")]
# The statuses Serve's proxy answers itself (in plain text); other answers pass untouched.
PROXY_STATUSES = frozenset({404, 408, 429, 500, 503})


def proxy_middlewares() -> list[Middleware]:
    """Our error shape outermost, then the client gate (leap_ray.serve.client_gate). The proxy reads
    whole bodies now: like the ingress, it gives their buffers back when freed (leap_ray.serve.memory)."""
    return_big_buffers()
    return [Middleware(ProxyErrorShape), Middleware(ClientGate)]


def proxy_error(status: int) -> LeapRayError:
    """Our error for a plain-text answer of the proxy."""
    if status == 404:
        return NotFound("no route for this path", code="no_route")
    if status == 408:
        return RequestTimeout("the request took longer than the service's request timeout", code="timeout")
    if status in (429, 503):
        return Overloaded("the service is at capacity; retry after a moment", code="queue_full")
    return ModelUnavailable(
        "the ingress replica serving this request failed; retry after a moment", code="ingress_failed"
    )


def _is_json(message: Message) -> bool:
    headers = dict(message.get("headers", ()))
    return headers.get(b"content-type", b"").split(b";")[0].strip().endswith(b"json")


class ProxyErrorShape:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = {"started": False, "replaced": False}

        async def shaped_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                if message["status"] in PROXY_STATUSES and not _is_json(message):
                    state["replaced"] = True
                    return await _send_shaped(send, message["status"])
            elif state["replaced"]:
                return None  # the plain-text body of a replaced answer
            return await send(message)

        try:
            await self.app(scope, receive, shaped_send)
        except Exception:
            if state["started"]:
                raise
            return await _send_shaped(send, 500)
        if not state["started"]:  # the proxy gave up without answering
            await _send_shaped(send, 500)


async def _send_shaped(send: Send, status: int) -> None:
    error = proxy_error(status)
    await send_error(send, error, RETRY_AFTER if error.status_code == 503 else ())
