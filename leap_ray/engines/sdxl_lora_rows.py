"""Per-row LoRA adapters: one UNet call for requests with different adapter sets and scales. The
UNet's LoRA layers run as the plain model, and a forward hook on each adds, to the rows of each
adapter's requests only, that adapter's low-rank delta times the row's scale: B(A(x[rows])) ×
scaling × scale, as peft's mixed-batch forward computes it (peft's own takes one adapter per row and
one scale per adapter; requests here name several, at scales of their own)."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

Scales = tuple[tuple[str, float], ...]  # adapters and their scales
RowScales = list[Scales]  # per row of the UNet's batch, the adapters and scales that act on it


class RowAdapters:
    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet
        # What acts in this thread's next calls: (adapter, scale, its rows; None when that is every
        # row). Per thread: a step batch's own lane calls the UNet beside its main lane.
        self._calls = threading.local()
        self._hooked: set[int] = set()
        self.hook_new_layers()

    def hook_new_layers(self) -> None:
        """Hooks the LoRA layers that appeared since (peft wraps a layer when an adapter first targets
        it; call after each load); a hook stays, doing nothing outside `acting`."""
        for module in self.unet.modules():
            if isinstance(module, LoraLayer) and id(module) not in self._hooked:
                module.register_forward_hook(self._add_deltas)
                self._hooked.add(id(module))

    @contextmanager
    def acting(self, row_scales: RowScales, device: torch.device) -> Iterator[None]:
        """Within: each row of the next UNet calls gets its own adapters at its own scales. The caller
        has the UNet's LoRA layers disabled (the plain model) and every named adapter loaded."""
        by_scale: dict[tuple[str, float], list[int]] = {}
        for row, scales in enumerate(row_scales):
            for name, scale in scales:
                by_scale.setdefault((name, scale), []).append(row)
        every = len(row_scales)
        self._calls.acting = [
            (name, scale, None if len(rows) == every else torch.tensor(rows, device=device))
            for (name, scale), rows in by_scale.items()
        ]
        try:
            yield
        finally:
            self._calls.acting = []

    def _add_deltas(self, layer: LoraLayer, args: tuple, result: torch.Tensor) -> torch.Tensor:
        """peft's LoRA forward, for the rows of each (adapter, scale): their x through A and B, times
        the adapter's scaling and the scale. Rows past the batch (a bucket's padding) are dropped later:
        an adapter of every row may act on them too."""
        x = args[0]
        for name, scale, rows in getattr(self._calls, "acting", ()):
            if name not in layer.lora_A:
                continue
            lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
            part = (x if rows is None else x.index_select(0, rows)).to(lora_a.weight.dtype)
            delta = lora_b(lora_a(layer.lora_dropout[name](part))) * (scale * base_scaling(layer, name))
            if rows is None:
                result += delta.to(result.dtype)
            else:
                result.index_add_(0, rows, delta.to(result.dtype))
        return result


def base_scaling(layer: LoraLayer, name: str) -> float:
    """The adapter's own scaling (lora_alpha / r, or / sqrt(r) with rsLoRA), before any weight."""
    rank = layer.r[name] ** 0.5 if layer.use_rslora.get(name, False) else layer.r[name]
    return layer.lora_alpha[name] / rank


def plain_lora_only(unet: torch.nn.Module, name: str) -> bool:
    """Whether the adapter is plain LoRA in every layer (DoRA, LoKr and other variants compute
    differently, and per-row deltas would leave them out)."""
    config = getattr(unet, "peft_config", {}).get(name)
    if config is not None and not isinstance(config, LoraConfig):
        return False
    return not any(isinstance(m, LoraLayer) and name in m.lora_variant for m in unet.modules())
