"""C2PA content credentials (c2pa-python, over the Content Authenticity Initiative's c2pa-rs): each
output signed with a manifest that says leap_ray made it (claim generator), by a trained algorithm
(a `c2pa.created` action whose digitalSourceType is IPTC's trainedAlgorithmicMedia), with which model.

The operator's signer (`leap_ray.config.ContentCredentialsSettings`) is loaded when a model replica
starts, and proved there: a test image is signed and its manifest read back and validated, so a
missing file, a key that is not the certificate's or a chain c2pa refuses stops the replica with an
error naming the setting, rather than failing requests. A self-signed signing certificate is refused
there too: validators show its signatures as untrusted, whatever the file says.

Signing blocks (hashing the file, a time-stamp authority's round trip): it runs where encoding runs,
off the event loop (ModelShim), several at once (c2pa-python lets calls share a signer; each has its
own builder), so that no output waits for another's round trip. When the time-stamp authority fails
(down, unreachable, refusing, or silent past `timestamp_timeout_s`), the output is signed without a
time stamp rather than lost after its GPU work, and so are the outputs of the next
`timestamp_retry_after_s` (a circuit breaker: a silent authority would cost each output the whole
wait); then one output tries the authority again. A warning is logged at each failure and every
unstamped signature counted (`leap_ray_c2pa_unstamped_total`). Messages never carry a URL (the
authority's may hold a credential): c2pa's are cleaned (`sanitised`)."""

import io
import logging
import re
import threading
import time
from concurrent.futures import Future
from importlib.metadata import version
from pathlib import Path
from typing import Any

import c2pa
from cryptography import x509  # c2pa-python's own dependency
from cryptography.exceptions import InvalidSignature
from PIL import Image

from leap_ray.api.marks import SOFTWARE
from leap_ray.config import ContentCredentialsSettings
from leap_ray.serve import metrics

logger = logging.getLogger(__name__)

# IPTC's digital source type for media a trained model generated (C2PA's term for generative AI).
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
# What c2pa-rs (0.91, c2pa-python 0.38) embeds a manifest in, of the formats we write: OGG it cannot.
SIGNABLE = frozenset({"image/png", "image/jpeg", "image/webp", "audio/wav", "audio/flac", "audio/mpeg"})
SETTING = "outputs.content_credentials"
_VERSION = version("leap_ray")
# No thumbnail in the manifest: c2pa-rs would add a JPEG of each image (tens of KB) to every output.
_BUILDER_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}}


class ContentCredentials:
    """The operator's C2PA signer; `sign` returns an output with its manifest embedded."""

    def __init__(self, settings: ContentCredentialsSettings) -> None:
        """Reads the chain and key and proves them on a test image; raises ValueError naming the
        setting at fault."""
        chain = _read(settings.certificate_chain_file, "certificate_chain_file")
        key = _read(settings.private_key_file, "private_key_file")
        _refuse_self_signed(chain)
        try:
            info = c2pa.C2paSignerInfo(settings.algorithm, chain, key, settings.timestamp_url)
            self._signer = c2pa.Signer.from_info(info)
            # The same signer without the time stamp: what signs while the authority fails.
            unstamped = c2pa.C2paSignerInfo(settings.algorithm, chain, key, None)
            self._unstamped = c2pa.Signer.from_info(unstamped) if settings.timestamp_url else None
            self._context = c2pa.Context(c2pa.Settings.from_dict(_BUILDER_SETTINGS))
        except c2pa.C2paError as error:
            raise ValueError(f"{SETTING}: c2pa refuses the signer: {sanitised(error)}") from None
        self._timeout_s = settings.timestamp_timeout_s
        self._retry_after_s = settings.timestamp_retry_after_s
        self._breaker = threading.Lock()  # guards _stamp_again_at (no signature waits on it)
        self._stamp_again_at = 0.0  # time.monotonic() before which outputs are signed without a stamp
        self._prove()

    def sign(self, data: bytes, content_type: str, model: str, refiner: str | None = None) -> bytes:
        """The output with a manifest naming `model` (and the `refiner` that finished it) embedded;
        as it was for a format that cannot carry one (OGG). Without a time stamp when the time-stamp
        authority fails, and for `timestamp_retry_after_s` after (logged and counted); raises
        ValueError (its message without URLs) when even that signature fails."""
        if content_type not in SIGNABLE:
            return data
        if self._unstamped is None:  # no time-stamp authority
            return self._signed_or_refused(self._signer, data, content_type, model, refiner)
        if self._may_stamp():
            try:
                signed = self._stamped(data, content_type, model, refiner)
            except (c2pa.C2paError, TimeoutError) as error:
                self._trip(sanitised(error))
            else:
                with self._breaker:
                    self._stamp_again_at = 0.0
                return signed
        signed = self._signed_or_refused(self._unstamped, data, content_type, model, refiner)
        metrics.unstamped_signatures().inc()
        return signed

    def _may_stamp(self) -> bool:
        """Whether this signature asks the authority: not while the breaker is open; once it may close,
        this call alone tries (the breaker stays open for the others until it answers)."""
        with self._breaker:
            now = time.monotonic()
            if now < self._stamp_again_at:
                return False
            if self._stamp_again_at:
                self._stamp_again_at = now + self._retry_after_s
            return True

    def _trip(self, reason: str) -> None:
        with self._breaker:
            self._stamp_again_at = time.monotonic() + self._retry_after_s
        logger.warning(
            "signed an output without a time stamp: the time-stamp authority failed (%s); outputs are "
            "signed without one for the next %g s",
            reason,
            self._retry_after_s,
        )

    def _stamped(self, data: bytes, content_type: str, model: str, refiner: str | None) -> bytes:
        """Signed with a time stamp, waiting for the authority `timestamp_timeout_s` at most: c2pa's own
        wait (30 s) cannot be set, so the signature runs on a thread of its own, left to end there
        when the wait is over (the breaker then keeps the next outputs from the authority)."""
        result: Future = Future()

        def run() -> None:
            try:
                result.set_result(self._signed(self._signer, data, content_type, model, refiner))
            except Exception as error:  # the waiting thread's to handle
                result.set_exception(error)

        threading.Thread(target=run, name="c2pa-timestamp", daemon=True).start()
        try:
            return result.result(timeout=self._timeout_s)
        except TimeoutError:
            raise TimeoutError(f"no answer within {self._timeout_s:g} s") from None

    def _signed_or_refused(
        self, signer: Any, data: bytes, content_type: str, model: str, refiner: str | None
    ) -> bytes:
        try:
            return self._signed(signer, data, content_type, model, refiner)
        except c2pa.C2paError as error:
            raise ValueError(f"C2PA signing failed: {sanitised(error)}") from None

    def _signed(self, signer: Any, data: bytes, content_type: str, model: str, refiner: str | None) -> bytes:
        signed = io.BytesIO()
        with c2pa.Builder(manifest(model, refiner), context=self._context) as builder:
            builder.sign(signer, content_type, io.BytesIO(data), signed)
        return signed.getvalue()

    def _prove(self) -> None:
        """Signs a test image and reads it back: c2pa validates the signature against the chain."""
        image = io.BytesIO()
        Image.new("RGB", (8, 8)).save(image, format="PNG")
        try:
            signed = self.sign(image.getvalue(), "image/png", "start-up check")
            with c2pa.Reader("image/png", io.BytesIO(signed)) as reader:
                state = reader.get_validation_state()
                failures = (reader.get_validation_results() or {}).get("activeManifest", {}).get("failure")
        except (c2pa.C2paError, ValueError) as error:
            raise ValueError(f"{SETTING}: a test signature failed: {sanitised(error)}") from None
        if state not in ("Valid", "Trusted"):
            codes = ", ".join(failure.get("code", "?") for failure in failures or [])
            raise ValueError(f"{SETTING}: a test signature does not validate ({state}: {codes})")


def manifest(model: str, refiner: str | None = None) -> dict[str, Any]:
    """The manifest of an output: leap_ray made it, a trained algorithm created it, with `model`."""
    parameters = {"model": model} | ({"refiner": refiner} if refiner else {})
    created = {
        "action": "c2pa.created",
        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
        "softwareAgent": {"name": model},
        "parameters": parameters,
    }
    return {
        "claim_generator_info": [{"name": SOFTWARE, "version": _VERSION}],
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [created]}}],
    }


def _read(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"{SETTING}.{field}: cannot read {path!r}: {error}") from None


def sanitised(error: Exception) -> str:
    """An error's text without URLs (a time-stamp authority's may carry a credential or an internal
    host): each becomes `<url>`."""
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s)\]'\"]*", "<url>", str(error))


def _refuse_self_signed(chain: bytes) -> None:
    """Raises ValueError naming the chain setting when its first certificate signed itself: c2pa
    signs with it, but validators show every such signature as untrusted (no CA of theirs issued it)."""
    try:
        certificate = x509.load_pem_x509_certificates(chain)[0]
    except ValueError:
        return  # not PEM certificates: c2pa's own check names what is wrong
    if certificate.issuer != certificate.subject:
        return
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        return
    raise ValueError(
        f"{SETTING}.certificate_chain_file: the signing certificate is self-signed; C2PA validators show "
        "its signatures as untrusted. Use an end-entity certificate issued by a CA (a CA of your own "
        "works where readers trust it)"
    )
