"""Tensors on the wire: `{"dtype", "shape", "data": base64 of raw little-endian bytes}`, never pickle.

Bytes are read in the host's order, little-endian on every platform torch serves from.
Through a Python deployment handle a field may hold a real `torch.Tensor` instead; both arrive as a
CPU tensor that has been checked for dtype, size and finiteness.
"""

import base64
import binascii
import math
from typing import Annotated, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
)

from leap_ray.config import LIMITS

WIRE_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
}
_DTYPE_NAMES = {dtype: name for name, dtype in WIRE_DTYPES.items()}


class WireTensor(BaseModel):
    """A tensor as JSON: dtype, shape and the base64 of its raw little-endian bytes."""

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["float16", "float32", "bfloat16"] = Field(description="Element type.")
    # Each dimension within the element limit too: an empty tensor (a 0 elsewhere) with a dimension
    # of 2**63 passes any element count, and torch's reshape then overflows.
    shape: list[Annotated[int, Field(ge=0, le=LIMITS.sdxl.max_tensor_elements)]] = Field(
        max_length=6, description="Size of each dimension."
    )
    data: str = Field(description="Base64 of the elements' raw bytes, little-endian, C order.")


def _check(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {sorted(WIRE_DTYPES)}, not {tensor.dtype}")
    if tensor.numel() > LIMITS.sdxl.max_tensor_elements:
        raise ValueError(
            f"tensor has {tensor.numel()} elements; the limit is {LIMITS.sdxl.max_tensor_elements}"
        )
    if not torch.isfinite(tensor).all():
        raise ValueError("tensor holds NaN or infinite values")
    return tensor.detach().cpu()


def decode_tensor(value: object) -> torch.Tensor:
    """Validates a handle's tensor or decodes a wire tensor; raises ValueError saying what is wrong."""
    if isinstance(value, torch.Tensor):
        return _check(value)
    try:
        wire = WireTensor.model_validate(value)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(
            f"not a tensor object ({where}: {first['msg']})" if where else first["msg"]
        ) from None
    elements = math.prod(wire.shape)
    if elements > LIMITS.sdxl.max_tensor_elements:
        raise ValueError(
            f"shape {wire.shape} has {elements} elements; the limit is {LIMITS.sdxl.max_tensor_elements}"
        )
    try:
        raw = base64.b64decode(wire.data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("data is not valid base64") from None
    dtype = WIRE_DTYPES[wire.dtype]
    expected = elements * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"data holds {len(raw)} bytes but shape {wire.shape} of {wire.dtype} needs {expected}"
        )
    tensor = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
    return _check(tensor.reshape(wire.shape))


def encode_tensor(tensor: torch.Tensor) -> dict[str, object]:
    """The wire form of a tensor (what clients send)."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {sorted(WIRE_DTYPES)}, not {tensor.dtype}")
    raw = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
    return {
        "dtype": _DTYPE_NAMES[tensor.dtype],
        "shape": list(tensor.shape),
        "data": base64.b64encode(raw).decode(),
    }


TensorInput = Annotated[
    torch.Tensor,
    PlainValidator(decode_tensor),
    PlainSerializer(encode_tensor, when_used="json"),
    WithJsonSchema(WireTensor.model_json_schema()),
]
