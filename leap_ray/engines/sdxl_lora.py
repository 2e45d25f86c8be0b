"""LoRA adapters on one SDXL pipeline: fetched when the replica starts, loaded by name on first use,
at most `max_loaded` at once (the least recently used one that no running request needs is deleted).
A model call acts with them in one of two ways: `activate` makes one set active with its scales
(diffusers' `set_adapters`: the text encoders, and UNet calls with `per_row_adapters` off); `per_row`
gives each row of one UNet call its own adapters and scales (the step batch: requests with different
sets share a call; leap_ray.engines.sdxl_lora_rows)."""

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils.peft_utils import set_adapter_layers, set_weights_and_activate_adapters
from huggingface_hub import snapshot_download

from leap_ray.engines.sdxl_lora_rows import RowAdapters, Scales, plain_lora_only
from leap_ray.errors import InvalidRequest, ModelError
from leap_ray.model_sources import resolve_model

logger = logging.getLogger(__name__)
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


class LoraAdapters:
    def __init__(self, pipeline: StableDiffusionXLPipeline, sources: dict[str, str], max_loaded: int) -> None:
        if max_loaded < 1:
            raise ValueError("max_loaded_loras must be at least 1")
        self.pipeline = pipeline
        # Downloaded now, before the replica is healthy: a download at a request's admission would
        # stall every request of the replica's running batch.
        self.sources = {name: local_source(source) for name, source in sources.items()}
        self.max_loaded = max_loaded
        self.loaded: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.active: Scales | None = ()  # acting in the whole pipeline; None: unknown
        self.text_active: Scales | None = ()  # acting in the text encoders; None: unknown
        self.loads = 0  # adapters read from their source, for stats and tests
        self._unet_adapters_on = False  # whether peft's own LoRA forward is on in the UNet
        self._rows: RowAdapters | None = None  # made with the first adapter (peft wraps layers then)
        # Held while what the UNet's modules compute changes (an adapter loads, goes, is switched on or
        # off), and by a step batch's own lane for each of its steps (sdxl_own_lane).
        self.lock = threading.RLock()

    def names(self) -> tuple[str, ...]:
        return tuple(self.sources)

    def fits(self, names: Iterable[str]) -> bool:
        """Whether these adapters can all be held at once."""
        return len(set(names)) <= self.max_loaded

    def ensure_loaded(self, names: Iterable[str], in_use: Iterable[str] = ()) -> None:
        """Loads the named adapters that are not loaded yet, evicting others to stay within the bound
        (never one `in_use` by a running request). Raises ModelError when an adapter's source cannot
        be loaded; the adapter is then left out, as if never asked for."""
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
            with self.lock:
                if len(self.loaded) >= self.max_loaded:
                    self._evict(keep={*needed, *in_use})
                self._load(name)

    def _load(self, name: str) -> None:
        self._unknown_state()  # loading changes what acts (a loaded adapter is made active), even failing
        try:
            self.pipeline.load_lora_weights(self.sources[name], adapter_name=name)
            if not any(name in names for names in self.pipeline.get_list_adapters().values()):
                raise ValueError("its weights match no layer of this model")
            if not plain_lora_only(self.pipeline.unet, name):
                raise ValueError("only plain LoRA adapters are served (not DoRA, LoKr or other variants)")
            for component in ("unet", *TEXT_ENCODERS):  # peft adds its dropout layers in training mode
                getattr(self.pipeline, component).eval()
        except Exception as error:
            logger.error("LoRA adapter %r could not be loaded", name, exc_info=error)
            with suppress(Exception):  # whatever a failed load left in the modules
                self.pipeline.delete_adapters(name)
            raise ModelError(
                f"the LoRA adapter {name!r} could not be loaded", code="adapter_unavailable"
            ) from None
        self.loaded[name] = None
        self.loads += 1
        self._plain_unet()  # at once, under the lock: a per-row call on another lane needs no change

    def _evict(self, keep: set[str]) -> None:
        # A snapshot: a step batch's own lane may reorder `loaded` (move_to_end) meanwhile.
        victim = next((name for name in list(self.loaded) if name not in keep), None)
        if victim is None:  # the step batch admits no more adapters than fit (`fits`)
            raise ModelError("no LoRA adapter can be unloaded: all are in use", code="adapters_busy")
        self.pipeline.delete_adapters(victim)
        del self.loaded[victim]
        self.active = self.text_active = None
        self._unet_adapters_on = True  # deleting one may switch the others' layers back on

    def activate(self, scales: Scales) -> None:
        """Makes exactly these adapters act, at these scales, in the pipeline's next model calls
        (none: the plain model)."""
        if scales == self.active:
            return
        with self.lock:
            self._switch(scales)

    def _switch(self, scales: Scales) -> None:
        self.ensure_loaded(name for name, _ in scales)
        self._unknown_state()  # until all of it is done: a failure must not leave a state believed
        if scales:
            self.pipeline.enable_lora()
            self.pipeline.set_adapters([name for name, _ in scales], adapter_weights=[s for _, s in scales])
        elif self.loaded:
            self.pipeline.disable_lora()
        self._unet_adapters_on = bool(scales)
        self.active = self.text_active = scales

    def activate_text_encoders(self, scales: Scales) -> None:
        """Makes exactly these adapters act, at these scales, in the text encoders (encoding a request's
        prompts), leaving the UNet as it is: in the step batch adapters act there per row."""
        if scales == self.text_active:
            return
        self.ensure_loaded(name for name, _ in scales)
        self.active, self.text_active = None, None
        holding = self.pipeline.get_list_adapters()  # component: the adapters with layers in it
        for component in TEXT_ENCODERS:
            own = [(name, scale) for name, scale in scales if name in holding.get(component, ())]
            if component not in holding:
                continue
            model = getattr(self.pipeline, component)
            if own:
                set_weights_and_activate_adapters(model, [name for name, _ in own], [s for _, s in own])
            set_adapter_layers(model, enabled=bool(own))
        self.text_active = scales

    def _unknown_state(self) -> None:
        """What acts where is not known for sure (a change is under way, or failed halfway)."""
        self.active = self.text_active = None
        self._unet_adapters_on = True  # so that per-row calls switch the UNet's own adapters off

    def _plain_unet(self) -> None:
        """The UNet as the plain model, its LoRA layers hooked to add the deltas of per-row calls
        (`per_row`). Under the lock."""
        set_adapter_layers(self.pipeline.unet, enabled=False)
        self._unet_adapters_on, self.active = False, None
        if self._rows is None:
            self._rows = RowAdapters(self.pipeline.unet)
        else:
            self._rows.hook_new_layers()

    @contextmanager
    def per_row(self, row_scales: list[Scales], device: torch.device) -> Iterator[None]:
        """Within: the UNet's next calls give each row of their batch its own adapters and scales."""
        if not self.loaded:  # no adapter has ever been loaded: the UNet is the plain model
            yield
            return
        named = {name for scales in row_scales for name, _ in scales}
        if not named <= self.loaded.keys():  # admission loaded them; a step batch never gets here
            self.ensure_loaded(named)
        if self._unet_adapters_on:  # `activate` switched them on, or an eviction did
            with self.lock:
                self._plain_unet()
        with self._rows.acting(row_scales, device):
            yield


def local_source(source: str) -> str:
    """A folder holding the adapter: a folder or tiny:<name> as resolved, a hub id's weights fetched
    (only its safetensors and configs)."""
    resolved = resolve_model(source)
    if Path(resolved).exists():
        return resolved
    return snapshot_download(resolved, allow_patterns=["*.safetensors", "*.json"])
