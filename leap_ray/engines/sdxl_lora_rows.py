"""Per-row LoRA adapters: one UNet call for requests with different adapter sets and scales. The
UNet's LoRA layers run as the plain model, and a forward hook on each adds, to the rows of each
adapter's requests only, that adapter's low-rank delta times the row's scale: B(A(x[rows])) ×
scaling × scale, as peft's mixed-batch forward computes it (peft's own takes one adapter per row and
one scale per adapter; requests here name several, at scales of their own)."""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft.tuners.lora import LoraLayer

Scales = tuple[tuple[str, float], ...]  # adapters and their scales
RowScales = list[Scales]  # per row of the UNet's batch, the adapters and scales that act on it


class RowAdapters:
    def __init__(self, unet: torch.nn.Module) -> None:
        self.unet = unet
        self._rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # adapter: (rows, their scales)
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
        by_adapter: dict[str, tuple[list[int], list[float]]] = {}
        for row, scales in enumerate(row_scales):
            for name, scale in scales:
                rows, values = by_adapter.setdefault(name, ([], []))
                rows.append(row)
                values.append(scale)
        self._rows = {
            name: (torch.tensor(rows, device=device), torch.tensor(values, device=device))
            for name, (rows, values) in by_adapter.items()
        }
        try:
            yield
        finally:
            self._rows = {}

    def _add_deltas(self, layer: LoraLayer, args: tuple, result: torch.Tensor) -> torch.Tensor:
        if not self._rows:
            return result
        x = args[0]
        for name, (rows, scales) in self._rows.items():
            if name not in layer.lora_A:
                continue
            lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
            part = x.index_select(0, rows).to(lora_a.weight.dtype)
            scale = (scales * base_scaling(layer, name)).view(-1, *[1] * (part.ndim - 1))
            delta = lora_b(lora_a(layer.lora_dropout[name](part))) * scale
            result = result.index_add(0, rows, delta.to(result.dtype))
        return result


def base_scaling(layer: LoraLayer, name: str) -> float:
    """The adapter's own scaling (lora_alpha / r, or / sqrt(r) with rsLoRA), before any weight."""
    rank = layer.r[name] ** 0.5 if layer.use_rslora.get(name, False) else layer.r[name]
    return layer.lora_alpha[name] / rank


def plain_lora_only(unet: torch.nn.Module, name: str) -> bool:
    """Whether the adapter is plain LoRA in every layer (DoRA and other variants compute differently)."""
    return not any(isinstance(m, LoraLayer) and name in m.lora_variant for m in unet.modules())
