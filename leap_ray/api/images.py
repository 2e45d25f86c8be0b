"""Images on the wire: float pixels in [0, 1] encoded as PNG, JPEG or WebP; uploaded images (img2img,
inpainting) opened within bounds (`open_image`) and decoded later, once (`PendingImage`)."""

import base64
import io
from abc import ABC, abstractmethod
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from leap_ray.api.image_limits import check_exif, check_structure
from leap_ray.api.marks import OutputMarks, exif_bytes, png_info
from leap_ray.api.uploads import upload_bytes

ImageFormat = Literal["png", "jpeg", "webp"]
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def encode_image(pixels: np.ndarray, image_format: str, marks: OutputMarks | None = None) -> bytes:
    """(height, width, 3) floats in [0, 1] -> encoded bytes (rounded as diffusers' numpy_to_pil), with
    the image's `marks` (its parameters: `leap_ray.api.marks`) when given."""
    image = Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8))
    options: dict[str, object] = {"quality": 95} if image_format != "png" else {}
    if marks is not None:
        options |= {"pnginfo": png_info(marks)} if image_format == "png" else {"exif": exif_bytes(marks)}
    buffer = io.BytesIO()
    image.save(buffer, format=image_format.upper(), **options)
    return buffer.getvalue()


# What PIL calls the formats an uploaded image may be in.
UPLOAD_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
_UNREADABLE = "is not an image in a format we read (png, jpeg, webp)"


class PendingImage(ABC):
    """An image a request holds between the validation of its fields and the decoding of its pixels:
    the size its header gives, and the pixels when the request's rules that need none have held
    (`leap_ray.api.sdxl_checks`), so that a request they refuse costs no decode."""

    @property
    @abstractmethod
    def size(self) -> tuple[int, int]:
        """(width, height) as stored: EXIF may turn the image, which keeps its sides' lengths."""

    @abstractmethod
    def decode(self, mode: str) -> Image.Image | None:
        """The pixels in `mode`, without metadata; None: no image after all (OpenAI's rule for a mask
        found no transparent pixel). Raises ValueError saying what is wrong."""


class UploadedImage(PendingImage):
    """An uploaded image opened within bounds (`open_image`): its bytes kept the limits on their
    structure and its header was read; its pixels are decoded on the first `pixels()`, once, however
    many views (`decode`) are asked of them."""

    def __init__(self, file: Image.Image, *, decoded: bool = False) -> None:
        self._file = file
        self._pixels: Image.Image | None = file if decoded else None

    @property
    def size(self) -> tuple[int, int]:
        return self._file.size

    def may_be_transparent(self) -> bool:
        """Whether the header leaves room for transparent pixels: an alpha band or a transparent colour."""
        return "A" in self._file.mode or "transparency" in self._file.info

    def pixels(self) -> Image.Image:
        """The decoded image, turned as its EXIF says (as cameras mean it and diffusers' load_image
        reads it). Raises ValueError for what cannot be decoded."""
        if self._pixels is None:
            self._pixels = _read_pixels(self._file)
        return self._pixels

    def decode(self, mode: str) -> Image.Image:
        pixels = self.pixels()
        try:
            image = pixels.convert(mode)
        except Exception:  # a pixel format PIL reads but cannot convert
            raise ValueError(_UNREADABLE) from None
        image.info = {}  # pixels only: its text and profiles would travel with it to the model
        return image


class ResizedImage(PendingImage):
    """An uploaded image stretched to `size` (width, height) as it is decoded, as diffusers' image
    processors resize an image to a pipeline's height and width (Lanczos)."""

    def __init__(self, upload: UploadedImage, size: tuple[int, int]) -> None:
        self.upload, self.target = upload, size

    @property
    def size(self) -> tuple[int, int]:
        return self.target

    def decode(self, mode: str) -> Image.Image:
        image = self.upload.decode(mode)
        return image if image.size == self.target else image.resize(self.target, Image.Resampling.LANCZOS)


def open_image(value: object, max_bytes: int, max_side: int) -> UploadedImage:
    """An uploaded image (base64 or a data: URI of PNG, JPEG or WebP; a PIL image through a handle)
    opened within bounds: its size in bytes, the structure of its file (`check_structure`), then its
    header (format, at most `max_side` pixels a side, 8 bits a channel). No pixel is decoded. Raises
    ValueError saying what is wrong."""
    if isinstance(value, Image.Image):
        _check_image(value, max_side)
        return UploadedImage(value, decoded=True)
    if not isinstance(value, str | bytes):
        raise ValueError("must be a base64 string or a data: URI of a PNG, JPEG or WebP image")
    raw = upload_bytes(value, max_bytes, "image")
    check_structure(raw)
    try:
        file = Image.open(io.BytesIO(raw), formats=list(UPLOAD_FORMATS))
    except Image.DecompressionBombError:
        raise ValueError(f"is larger than {max_side} pixels a side") from None
    except Exception:  # PIL raises many kinds on bytes a client chose: all mean unreadable
        raise ValueError(_UNREADABLE) from None
    _check_image(file, max_side)
    return UploadedImage(file)


def decode_image(value: object, max_bytes: int, max_side: int, mode: str) -> Image.Image:
    """`open_image`, decoded to `mode` ("RGB", or "L" for masks)."""
    return open_image(value, max_bytes, max_side).decode(mode)


def _read_pixels(file: Image.Image) -> Image.Image:
    with file:
        try:
            file.load()
        except Exception:
            raise ValueError(_UNREADABLE) from None
        check_exif(file)  # a PNG's may follow its pixels; PIL parses it to turn the image
        try:
            return ImageOps.exif_transpose(file)
        except Exception:
            raise ValueError(_UNREADABLE) from None


# 16-bit and floating-point pixels: converting them to 8 bits clips them (most turn white).
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _check_image(image: Image.Image, max_side: int) -> None:
    """From the header: its size and its pixel format."""
    width, height = image.size
    if max(width, height) > max_side:
        raise ValueError(f"is {width}×{height} pixels; the limit is {max_side} pixels a side")
    if image.mode in _WIDE_MODES:
        raise ValueError(f"has {image.mode} pixels; send 8 bits per channel (RGB, RGBA or grey)")


def image_data_uri(image: Image.Image) -> str:
    """A PIL image as a PNG data: URI (how a request holding an image is written as JSON, and a job
    keeps its images). zlib's fastest level: a 2048² photo in 0.45 s rather than 1.7 s at PIL's
    default, for 17 % more bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
