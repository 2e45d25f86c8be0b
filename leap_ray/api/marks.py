"""What an output says about itself: the parameters that made it, written into the file where the
tools people use read them.

- An image carries AUTOMATIC1111's `parameters` text (its "infotext": the prompt, "Negative prompt:",
  then "Steps: 30, Sampler: ..., CFG scale: 7.0, Seed: 1, Size: 1024x1024, Model: ...") in a PNG
  text chunk, or, in JPEG and WebP, in EXIF's UserComment as A1111 writes it (`UNICODE\\0` then
  UTF-16, big-endian EXIF); a PNG also carries the request itself as JSON in a `leap_ray` chunk, and
  `Software: leap_ray`.
- A track carries libsndfile's tags: title (the prompt), comment (the request as JSON) and software.

Each output gets its own request's marks (`SDXLRequest.output_marks`, `MusicGenRequest.output_marks`):
the encoders take them alongside the pixels or samples. Big values (tensors, uploaded images, a
melody, a callback) are summarised in the JSON, never embedded."""

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from PIL import ExifTags, Image, PngImagePlugin
from pydantic import BaseModel

SOFTWARE = "leap_ray"
PARAMETERS_KEY = "parameters"  # A1111's PNG text chunk
RECORD_KEY = "leap_ray"  # our PNG text chunk: the request as JSON
# EXIF UserComment's character code for UTF-16 text (EXIF 2.3, 4.6.5); A1111 writes it through piexif.
UNICODE_PREFIX = b"UNICODE\x00"


@dataclass(frozen=True)
class OutputMarks:
    """One output's own marks: its title (the prompt), A1111's parameters text (images; empty for
    tracks) and the record of the request that made it (JSON-ready, big values summarised)."""

    title: str
    parameters: str
    record: dict[str, Any]

    def record_json(self, ascii_only: bool = False) -> str:
        """The record as compact JSON; non-ASCII text kept as is, or escaped (`ascii_only`)."""
        return json.dumps(self.record, ensure_ascii=ascii_only, separators=(",", ":"))


# How an answer travels, not what it holds: left out of the record, so that one image is one file
# however it was asked for (streamed, with previews, or not).
DELIVERY_FIELDS = frozenset({"stream", "preview_every"})


def request_record(request: BaseModel, **updates: Any) -> dict[str, Any]:
    """A request's fields (defaults included, delivery options left out) as JSON-ready values, with
    `updates` (e.g. the seed the engine drew) written over them; tensors, images, audio and callables
    summarised."""
    names = [name for name in type(request).model_fields if name not in DELIVERY_FIELDS]
    fields = {name: getattr(request, name) for name in names}
    return {name: summarised(value) for name, value in (fields | updates).items()}


def summarised(value: Any) -> Any:
    """A value as a record keeps it: plain data as is, a big value as a short text of what it was."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor):
        return f"<tensor {str(value.dtype).removeprefix('torch.')} {list(value.shape)}>"
    if isinstance(value, BaseModel):
        return request_record(value)
    if isinstance(value, Mapping):
        return {str(key): summarised(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [summarised(item) for item in value]
    if isinstance(value, Image.Image):
        return f"<image {value.width}x{value.height}>"
    size = getattr(value, "size", None)  # an upload not yet decoded (`leap_ray.api.images.PendingImage`)
    if isinstance(size, tuple) and len(size) == 2:
        return f"<image {size[0]}x{size[1]}>"
    if hasattr(value, "waveform") and hasattr(value, "sample_rate"):  # `leap_ray.api.audio.DecodedAudio`
        return f"<audio {len(value.waveform) / value.sample_rate:.2f} s at {value.sample_rate} Hz>"
    if callable(value):
        return "<callable>"
    return f"<{type(value).__name__}>"


def png_info(marks: OutputMarks) -> PngImagePlugin.PngInfo:
    """The PNG text chunks: `parameters` (A1111's), `leap_ray` (the record) and `Software` (tEXt, or
    iTXt when the text is not Latin-1, as Pillow chooses)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, marks.parameters)
    info.add_text(RECORD_KEY, marks.record_json())
    info.add_text("Software", SOFTWARE)
    return info


def exif_bytes(marks: OutputMarks) -> bytes:
    """EXIF for a JPEG or WebP: A1111's parameters in UserComment (UTF-16 big-endian, in big-endian
    EXIF, as piexif writes it: readers take the text's byte order from the EXIF's) and Software."""
    exif = Image.Exif()
    exif.endian = ">"
    exif[ExifTags.Base.Software] = SOFTWARE
    user_comment = UNICODE_PREFIX + marks.parameters.encode("utf-16-be")
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = user_comment
    return exif.tobytes()


def user_comment(image: Image.Image) -> str | None:
    """The text of an image's EXIF UserComment (as A1111 reads it back), or None."""
    raw = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    if not isinstance(raw, bytes):
        return None
    if raw.startswith(UNICODE_PREFIX):
        return raw[len(UNICODE_PREFIX) :].decode("utf-16-be")
    return raw[8:].decode("utf-8", errors="replace")


def read_marks(data: bytes) -> dict[str, str]:
    """What an encoded image says about itself: its `parameters` and, for a PNG, its `leap_ray`
    record (for clients and tests)."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "PNG":
            return {key: image.text[key] for key in (PARAMETERS_KEY, RECORD_KEY) if key in image.text}
        comment = user_comment(image)
        return {} if comment is None else {PARAMETERS_KEY: comment}
