"""Images on the wire: float pixels in [0, 1] encoded as PNG, JPEG or WebP."""

import io
from typing import Literal

import numpy as np
from PIL import Image

ImageFormat = Literal["png", "jpeg", "webp"]
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def encode_image(pixels: np.ndarray, image_format: str) -> bytes:
    """(height, width, 3) floats in [0, 1] -> encoded bytes (rounded as diffusers' numpy_to_pil)."""
    image = Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format=image_format.upper(), **({"quality": 95} if image_format != "png" else {}))
    return buffer.getvalue()
