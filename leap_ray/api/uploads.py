"""Files that arrive inside a JSON body (a melody, an image): base64 or a `data:` URI, bounded in
bytes before anything is decoded."""

import base64
import binascii


def upload_bytes(value: str | bytes, max_bytes: int, media: str) -> bytes:
    """The bytes of a base64 or `data:<media>/...;base64,` string (raw bytes pass as they are).
    Raises ValueError saying what is wrong; the size is checked before decoding."""
    if len(value) > max_bytes * 4 // 3 + 1024:
        raise ValueError(f"is larger than the limit of {max_bytes} bytes")
    raw = _base64_payload(value, media) if isinstance(value, str) else value
    if len(raw) > max_bytes:
        raise ValueError(f"is larger than the limit of {max_bytes} bytes")
    return raw


def _base64_payload(text: str, media: str) -> bytes:
    if text.startswith("data:"):
        header, separator, text = text.partition(",")
        if not separator or not header.endswith(";base64"):
            raise ValueError(f"a data: URI must be base64-encoded (data:{media}/...;base64,...)")
    text = "".join(text.split())  # `base64` wraps its output at 76 columns
    text += "=" * (-len(text) % 4)  # and some encoders leave the padding out
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None
