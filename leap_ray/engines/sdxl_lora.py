"""LoRA adapters on one SDXL pipeline: loaded by name on first use from the sources the operator
listed, at most `max_loaded` at once (the least recently used one not needed now is deleted), and
the set a model call needs made active just before it (`set_adapters` with the request's scales).
Requests with different adapter sets never share a UNet call: the step batch groups by the set."""

from collections import OrderedDict
from collections.abc import Iterable

from diffusers import StableDiffusionXLPipeline

from leap_ray.errors import InvalidRequest
from leap_ray.model_sources import resolve_model

Scales = tuple[tuple[str, float], ...]


class LoraAdapters:
    def __init__(self, pipeline: StableDiffusionXLPipeline, sources: dict[str, str], max_loaded: int) -> None:
        if max_loaded < 1:
            raise ValueError("max_loaded_loras must be at least 1")
        self.pipeline = pipeline
        self.sources = dict(sources)
        self.max_loaded = max_loaded
        self.loaded: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.active: Scales | None = ()  # None: unknown (after a load or an eviction)
        self.loads = 0  # adapters read from their source, for stats and tests

    def names(self) -> tuple[str, ...]:
        return tuple(self.sources)

    def ensure_loaded(self, names: Iterable[str]) -> None:
        """Loads the named adapters that are not loaded yet, evicting others to stay within the bound."""
        needed = list(names)
        if len(needed) > self.max_loaded:
            raise InvalidRequest(
                f"this replica holds at most {self.max_loaded} adapters at once; the request names "
                f"{len(needed)}",
                param="loras",
            )
        for name in needed:
            if name in self.loaded:
                self.loaded.move_to_end(name)
                continue
            if len(self.loaded) >= self.max_loaded:
                self._evict(keep=set(needed))
            self.pipeline.load_lora_weights(resolve_model(self.sources[name]), adapter_name=name)
            self.loaded[name] = None
            self.loads += 1
            self.active = None

    def _evict(self, keep: set[str]) -> None:
        victim = next(name for name in self.loaded if name not in keep)
        self.pipeline.delete_adapters(victim)
        del self.loaded[victim]
        self.active = None

    def activate(self, scales: Scales) -> None:
        """Makes exactly these adapters act, at these scales, in the pipeline's next model calls
        (none: the plain model)."""
        if scales == self.active:
            return
        self.ensure_loaded(name for name, _ in scales)
        if scales:
            self.pipeline.enable_lora()
            self.pipeline.set_adapters([name for name, _ in scales], adapter_weights=[s for _, s in scales])
        elif self.loaded:
            self.pipeline.disable_lora()
        self.active = scales
