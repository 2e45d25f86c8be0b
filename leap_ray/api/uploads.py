"""Files that arrive inside a JSON body (a melody, an image): base64 or a `data:` URI, bounded in
bytes before anything is decoded."""

import binascii
from collections.abc import Iterator


def upload_bytes(value: str | bytes, max_bytes: int, media: str) -> bytes:
    """The bytes of a base64 or `data:<media>/...;base64,` string (raw bytes pass as they are).
    Raises ValueError saying what is wrong; the size is checked before decoding."""
    if len(value) > max_bytes * 4 // 3 + 1024:
        raise ValueError(f"is larger than the limit of {max_bytes} bytes")
    raw = _base64_payload(value, media) if isinstance(value, str) else value
    if len(raw) > max_bytes:
        raise ValueError(f"is larger than the limit of {max_bytes} bytes")
    return raw


# Base64 characters handled at a time. binascii holds the GIL for a whole call: 21 MB at once held it
# about 80 ms (the ingress's event loop waited as long); a 1 MB piece holds it about 3 ms.
PIECE = 1 << 20


def _base64_payload(text: str, media: str) -> bytes:
    if text.startswith("data:"):
        header, separator, text = text.partition(",")
        if not separator or not header.endswith(";base64"):
            raise ValueError(f"a data: URI must be base64-encoded (data:{media}/...;base64,...)")
    text = "".join("".join(piece.split()) for piece in _pieces(text))  # `base64` wraps at 76 columns
    text += "=" * (-len(text) % 4)  # and some encoders leave the padding out
    if text.find("=", 0, len(text) - 2) >= 0:  # padding only at the end: each piece decodes alone
        raise ValueError("is not valid base64")
    try:
        return b"".join(binascii.a2b_base64(piece, strict_mode=True) for piece in _pieces(text))
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None


def _pieces(text: str) -> Iterator[str]:
    """`text` in slices of PIECE characters (a multiple of 4: a slice of base64 decodes alone)."""
    return (text[at : at + PIECE] for at in range(0, len(text), PIECE))
