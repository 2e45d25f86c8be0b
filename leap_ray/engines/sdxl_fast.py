"""SDXL's fast path: the engine options that make a GPU replica fast, all off by default (the CPU, the
tests) and on in serve_config.yaml. They act where a replica spends its time under step batching
(`StepBatch`): the UNet call of every step and the VAE decode of every finished image.

- `compile`: torch.compile of the UNet and of the VAE decoder (`True`, or torch.compile's keyword
  arguments such as `{mode: max-autotune-no-cudagraphs}`), with static shapes.
- `regional_compile` (on by default, with `compile`): only the repeated blocks are compiled (the UNet's
  transformer blocks, as diffusers' `compile_repeated_blocks`, and the VAE decoder's ResNet blocks),
  each block's code once per shape instead of the whole model per bucket: on the tiny model, a cold
  replica is ready 1.8x sooner and compiles every bucket 3.5x sooner (benchmarks/compile_start.py),
  with images within 2/255 (tests).
- `compile_cache`: where compiled code is saved and loaded (leap_ray.engines.compile_cache): a
  folder or an object-store URL; true (the default) is $LEAP_RAY_COMPILE_CACHE, else
  ~/.cache/leap_ray/compile; false or null turns it off.
- `batch_buckets`: a step's UNet batch is padded up to the next bucket (in images; an image under
  guidance is two UNet rows), so shapes repeat and a compiled UNet never recompiles. Padded rows are
  copies of a real row whose outputs are dropped: each row of a UNet call is computed on its own, so
  they cannot change anyone's image (tests check).
- `channels_last`, `fuse_qkv`: the memory layout and fused attention projections of diffusers'
  speed-up guide (`unet.fuse_qkv_projections()`).
- `warm_up_sizes`: with `compile`, the engine compiles its smallest bucket at these sizes before it
  returns (a replica reports healthy, and /readyz turns 200, only then), and the other buckets on a
  thread of its own (leap_ray.engines.sdxl_warm_up). Meanwhile a step batch uses the compiled buckets
  only: a bigger one runs as several calls. No request waits for a compile.

The VAE decoder that `compile` compiles is leap_ray.engines.sdxl_decode's `LatentDecoder`.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.models.resnet import ResnetBlock2D

from leap_ray.engines.compile_cache import default_location

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SDXLSpeed:
    """The fast-path options of an SDXL engine (its `engine_kwargs`)."""

    compile: bool | dict[str, Any] = False
    batch_buckets: Sequence[int] = ()
    channels_last: bool = False
    fuse_qkv: bool = False
    warm_up_sizes: Sequence[Sequence[int]] = field(default_factory=lambda: [(1024, 1024)])
    regional_compile: bool = True
    compile_cache: str | bool | None = True

    def __post_init__(self) -> None:
        if any(not isinstance(images, int) or images < 1 for images in self.batch_buckets):
            raise ValueError(f"batch_buckets are image counts of at least 1, not {list(self.batch_buckets)}")

    @property
    def cache_location(self) -> str | None:
        """Where the compile cache is (None: no compile cache)."""
        if self.compile_kwargs is None or not self.compile_cache:
            return None
        return default_location() if self.compile_cache is True else str(self.compile_cache)

    @property
    def recompile_limit(self) -> int:
        """Compiled entries per code object the warm-up needs: the UNet's blocks take two shapes per
        bucket and size in SDXL (its two attention levels), with room for requests' other sizes.
        Dynamo's default (8) is past at 4 buckets, and past it the rest silently runs eager."""
        return 4 * max(1, len(self.batch_buckets)) * max(1, len(self.warm_up_sizes)) + 8

    @property
    def compile_kwargs(self) -> dict[str, Any] | None:
        """torch.compile's keyword arguments, or None when nothing is compiled."""
        if not self.compile:
            return None
        return {"dynamic": False, **(self.compile if isinstance(self.compile, dict) else {})}

    def apply(self, pipeline: StableDiffusionXLPipeline) -> None:
        """The layout and fusion options, in place, on the pipeline's modules."""
        if self.fuse_qkv:
            pipeline.unet.fuse_qkv_projections()
            pipeline.vae.fuse_qkv_projections()
        if self.channels_last:
            pipeline.unet.to(memory_format=torch.channels_last)
            pipeline.vae.to(memory_format=torch.channels_last)


def compile_blocks(blocks: list[torch.nn.Module], kwargs: dict[str, Any]) -> None:
    """Compiles each block in place (`nn.Module.compile`): the blocks of one class share their compiled
    code, one entry per input shape."""
    for block in blocks:
        block.compile(**kwargs)


def compiled_unet(unet: torch.nn.Module, speed: SDXLSpeed) -> Callable[..., Any]:
    """The UNet's forward as the options compile it: whole, by its repeated blocks, or not at all."""
    kwargs = speed.compile_kwargs
    if kwargs is None:
        return unet
    dynamo = torch._dynamo.config  # process-wide, but only raised, and this process is the replica's
    dynamo.recompile_limit = max(dynamo.recompile_limit, speed.recompile_limit)
    if not speed.regional_compile:
        return torch.compile(unet, **kwargs)
    names = set(getattr(unet, "_repeated_blocks", ()))  # diffusers' list (its compile_repeated_blocks)
    compile_blocks([block for block in unet.modules() if type(block).__name__ in names], kwargs)
    return unet


def compiled_decode(vae: torch.nn.Module, speed: SDXLSpeed) -> Callable[..., Any]:
    """The VAE's decode as the options compile it: whole, by its decoder's ResNet blocks, or not."""
    kwargs = speed.compile_kwargs
    if kwargs is None:
        return vae.decode
    if not speed.regional_compile:
        return torch.compile(vae.decode, **kwargs)
    compile_blocks([block for block in vae.decoder.modules() if isinstance(block, ResnetBlock2D)], kwargs)
    return vae.decode


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """The tensor with copies of its last row appended up to `rows` rows."""
    missing = rows - tensor.shape[0]
    if missing <= 0:
        return tensor
    return torch.cat([tensor, tensor[-1:].expand(missing, *tensor.shape[1:])])


class UNetRunner:
    """One UNet forward over a step's rows, padded to the next bucket, compiled when asked.

    While a replica compiles its buckets (`compile_bucket`), calls use those compiled so far (`usable`):
    a call past the largest runs as several calls of it, which gives each row what one call would
    (each row of a UNet call is computed on its own). While `shapes_seen` is a dict (the warm-up's
    first bucket), each call keeps one row of its inputs there, by shape: the other buckets compile
    from those rows."""

    def __init__(self, unet: torch.nn.Module, speed: SDXLSpeed) -> None:
        self.unet = unet
        self.forward = compiled_unet(unet, speed)
        self.row_buckets = sorted({2 * images for images in speed.batch_buckets})
        self.usable = list(self.row_buckets)
        self.shapes_seen: dict[tuple, list[torch.Tensor]] | None = None
        self._warned_rows: set[int] = set()

    @property
    def compiling(self) -> bool:
        return len(self.usable) < len(self.row_buckets)

    def padded_rows(self, rows: int) -> int:
        """The UNet batch a call of `rows` rows runs at: the next usable bucket; while buckets compile,
        the largest usable one (in several calls); else itself, past the largest bucket."""
        usable = self.usable  # one read: the compiling thread replaces the list
        fitting = [bucket for bucket in usable if bucket >= rows]
        if fitting or len(usable) < len(self.row_buckets):
            return fitting[0] if fitting else usable[-1]
        if self.row_buckets and rows not in self._warned_rows:
            self._warned_rows.add(rows)
            logger.warning("a UNet batch of %d rows is past the largest bucket; it runs unpadded", rows)
        return rows

    def compile_bucket(self, rows: int, shapes: list[list[torch.Tensor]]) -> None:
        """Compiles the UNet at `rows` rows for each of the input `shapes` (rows `shapes_seen` kept),
        then makes the bucket usable. Called off the serving path, under the grad mode calls run in."""
        for inputs in shapes:
            self.forward_padded([_pad_rows(tensor, rows) for tensor in inputs])
        self.usable = sorted({*self.usable, rows})

    def __call__(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        pooled: torch.Tensor,
        time_ids: torch.Tensor,
    ) -> torch.Tensor:
        """The noise prediction of each of the `sample.shape[0]` rows (one timestep per row)."""
        inputs, rows = [sample, timesteps, text, pooled, time_ids], sample.shape[0]
        target = self.padded_rows(rows)
        if rows > target:  # a bucket that would fit is still compiling
            parts = [[tensor[i : i + target] for tensor in inputs] for i in range(0, rows, target)]
            return torch.cat([self(*part) for part in parts])
        if self.shapes_seen is not None:
            self.shapes_seen[tuple(tensor.shape[1:] for tensor in inputs)] = [tensor[:1] for tensor in inputs]
        # A copy: with compile's CUDA graphs (mode reduce-overhead) the next call reuses the output.
        return self.forward_padded([_pad_rows(tensor, target) for tensor in inputs])[:rows].clone()

    def forward_padded(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        sample, timesteps, text, pooled, time_ids = inputs
        return self.forward(
            sample,
            timesteps,
            encoder_hidden_states=text,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
            return_dict=False,
        )[0]
