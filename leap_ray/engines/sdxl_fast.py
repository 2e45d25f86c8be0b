"""SDXL's fast path: the engine options that make a GPU replica fast, all off by default (the CPU, the
tests) and on in serve_config.yaml. They act where a replica spends its time under step batching
(`StepBatch`): the UNet call of every step and the VAE decode of every finished image.

- `compile`: torch.compile of the UNet and of the VAE decoder (`True`, or torch.compile's keyword
  arguments such as `{mode: max-autotune-no-cudagraphs}`), with static shapes.
- `batch_buckets`: a step's UNet batch is padded up to the next bucket (in images; an image under
  guidance is two UNet rows), so shapes repeat and a compiled UNet never recompiles. Padded rows are
  copies of a real row whose outputs are dropped: each row of a UNet call is computed on its own, so
  they cannot change anyone's image (tests check).
- `channels_last`, `fuse_qkv`: the memory layout and fused attention projections of diffusers'
  speed-up guide (`unet.fuse_qkv_projections()`).
- `warm_up_sizes`: with `compile`, the engine compiles every bucket at these sizes before it returns,
  so a replica reports healthy (and /readyz turns 200) only when no request will pay for compiling.

The VAE decoder that `compile` compiles is leap_ray.engines.sdxl_decode's `LatentDecoder`.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SDXLSpeed:
    """The fast-path options of an SDXL engine (its `engine_kwargs`)."""

    compile: bool | dict[str, Any] = False
    batch_buckets: Sequence[int] = ()
    channels_last: bool = False
    fuse_qkv: bool = False
    warm_up_sizes: Sequence[Sequence[int]] = field(default_factory=lambda: [(1024, 1024)])

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


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """The tensor with copies of its last row appended up to `rows` rows."""
    missing = rows - tensor.shape[0]
    if missing <= 0:
        return tensor
    return torch.cat([tensor, tensor[-1:].expand(missing, *tensor.shape[1:])])


class UNetRunner:
    """One UNet forward over a step's rows, padded to the next bucket, compiled when asked."""

    def __init__(self, unet: torch.nn.Module, speed: SDXLSpeed) -> None:
        self.unet = unet
        kwargs = speed.compile_kwargs
        self.forward = unet if kwargs is None else torch.compile(unet, **kwargs)
        self.row_buckets = sorted(2 * images for images in speed.batch_buckets)
        self._warned_rows: set[int] = set()

    def padded_rows(self, rows: int) -> int:
        """The UNet batch a call of `rows` rows runs at: the next bucket, or itself past the largest."""
        fitting = [bucket for bucket in self.row_buckets if bucket >= rows]
        if self.row_buckets and not fitting and rows not in self._warned_rows:
            self._warned_rows.add(rows)
            logger.warning("a UNet batch of %d rows is past the largest bucket; it runs unpadded", rows)
        return fitting[0] if fitting else rows

    def __call__(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        pooled: torch.Tensor,
        time_ids: torch.Tensor,
    ) -> torch.Tensor:
        """The noise prediction of each of the `sample.shape[0]` rows (one timestep per row)."""
        rows = sample.shape[0]
        target = self.padded_rows(rows)
        sample, timesteps, text, pooled, time_ids = (
            _pad_rows(tensor, target) for tensor in (sample, timesteps, text, pooled, time_ids)
        )
        noise = self.forward(
            sample,
            timesteps,
            encoder_hidden_states=text,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
            return_dict=False,
        )[0]
        # A copy: with compile's CUDA graphs (mode reduce-overhead) the next call reuses the output.
        return noise[:rows].clone()
