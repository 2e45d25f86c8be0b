"""Files uploaded for later requests (Replicate's `POST /v1/files`, which its official client calls for
every file given to `run()`): the upload form, what a file's content is (sniffed from its bytes, never
the client's word), and the file as Replicate's clients read it back."""

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from leap_ray.config import LIMITS
from leap_ray.errors import InvalidRequest, PayloadTooLarge

MAX_METADATA_CHARS = 4096  # a file's metadata, as JSON: a label or two, not a store of its own
MAX_NAME_CHARS = 255
# Bytes encoded at a time (a multiple of 3: each piece encodes alone): binascii holds the GIL for a whole
# call, and a piece of 768 KiB holds it a few ms where 16 MB at once held the event loop's for ~80 ms.
PIECE = 3 << 18


@dataclass(frozen=True)
class Media:
    """What a file's bytes are: an image or audio, its extension and content type."""

    kind: Literal["image", "audio"]
    extension: str
    content_type: str

    @property
    def max_bytes(self) -> int:
        """The most bytes a request may send of this kind: an image (img2img, a mask) or a melody."""
        return LIMITS.sdxl.max_image_bytes if self.kind == "image" else LIMITS.musicgen.max_melody_bytes


def largest_upload() -> int:
    """The most bytes any file may have (checked before the content is looked at)."""
    return max(LIMITS.sdxl.max_image_bytes, LIMITS.musicgen.max_melody_bytes)


def _is_mp3(head: bytes) -> bool:
    """An MP3: its ID3 tag, or an MPEG audio frame's sync word (11 set bits; a JPEG's 0xFFD8 has 10)."""
    return head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


def sniff(data: bytes) -> Media | None:
    """The media `data` holds by its first bytes: the images (PNG, JPEG, WebP) and audio (WAV, FLAC,
    OGG, MP3) our requests read; None for anything else. Decoding is left to the request that uses it."""
    head = data[:12]
    riff = head[8:12] if head.startswith(b"RIFF") else b""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Media("image", "png", "image/png")
    if head.startswith(b"\xff\xd8\xff"):
        return Media("image", "jpeg", "image/jpeg")
    if riff == b"WEBP":
        return Media("image", "webp", "image/webp")
    if riff == b"WAVE":
        return Media("audio", "wav", "audio/wav")
    if head.startswith(b"fLaC"):
        return Media("audio", "flac", "audio/flac")
    if head.startswith(b"OggS"):
        return Media("audio", "ogg", "audio/ogg")
    if _is_mp3(head):
        return Media("audio", "mp3", "audio/mpeg")
    return None


def checked_media(data: bytes) -> Media:
    """The media of an upload, bounded as the requests that take it bound it: 413 past the limit of
    its kind, 422 naming `content` for what no request reads."""
    if len(data) > largest_upload():  # the cheapest check first
        raise PayloadTooLarge(f"content: a file may have at most {largest_upload()} bytes")
    media = sniff(data)
    if media is None:
        raise InvalidRequest(
            "content: not an image (png, jpeg, webp) or audio (wav, flac, ogg, mp3)",
            param="content",
            code="unsupported_file",
        )
    if len(data) > media.max_bytes:
        raise PayloadTooLarge(f"content: a file of {media.kind} may have at most {media.max_bytes} bytes")
    return media


class FileUpload(BaseModel):
    """POST /v1/files, a multipart/form-data body as Replicate's client sends it."""

    model_config = ConfigDict(extra="forbid")

    content: bytes = Field(
        description="The file: an image (PNG, JPEG, WebP) for SDXL's image or mask, or audio (WAV, FLAC, "
        "OGG, MP3) for MusicGen's melody. Its type is read from its bytes."
    )
    metadata: str | None = Field(
        None, max_length=MAX_METADATA_CHARS, description="A JSON object kept with the file."
    )

    @field_validator("metadata")
    @classmethod
    def _json_object(cls, metadata: str | None) -> str | None:
        if metadata is not None and not isinstance(json.loads(metadata or "null"), dict):
            raise ValueError("must be a JSON object")
        return metadata

    def metadata_object(self) -> dict[str, Any]:
        return json.loads(self.metadata) if self.metadata else {}


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat()


@dataclass(frozen=True)
class UploadedFile:
    """A file as it is kept: whose it is, what it is, and when it goes."""

    id: str
    client: str  # the API key's id that uploaded it ("" without keys)
    name: str
    content_type: str
    size: int
    md5: str
    sha256: str
    metadata: dict[str, Any]
    created_at: float
    expires_at: float

    def view(self, base: str) -> dict[str, Any]:
        """The file as Replicate's clients read it (`replicate.file.File`): `urls.get` is the URL a
        prediction's input may name it by."""
        return {
            "id": self.id,
            "name": self.name,
            "content_type": self.content_type,
            "size": self.size,
            "etag": self.md5,
            "checksums": {"sha256": self.sha256, "md5": self.md5},
            "metadata": self.metadata,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "urls": {"get": f"{base}/v1/files/{self.id}"},
        }


def file_name(name: str | None, media: Media) -> str:
    """The name the client gave (its last path part, bounded), or one of the file's type."""
    name = (name or "").replace("\\", "/").rpartition("/")[2].strip()[:MAX_NAME_CHARS]
    return name or f"file.{media.extension}"


def data_uri(data: bytes, content_type: str) -> str:
    """`data` as a base64 `data:` URI (how a request carries a file), encoded a piece at a time."""
    view = memoryview(data)
    encoded = "".join(base64.b64encode(view[at : at + PIECE]).decode() for at in range(0, len(data), PIECE))
    return f"data:{content_type};base64,{encoded}"
