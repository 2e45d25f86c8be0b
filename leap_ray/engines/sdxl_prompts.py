"""Prompt encoding for an SDXL step batch: the requests admitted between two steps are encoded
together where they can share a text-encoder call, each exactly as a solo pipeline call encodes it
(to the rounding of batched arithmetic). The refiner's pipeline has only the second text encoder; its
own `encode_prompt` then reads `prompt` and `negative_prompt` alone, as its `__call__` does."""

import time
from collections import defaultdict
from collections.abc import Callable

import torch
from diffusers import StableDiffusionXLPipeline

from leap_ray.api.sdxl_fields import EMBEDDING_FIELDS, TEXT_FIELDS
from leap_ray.engines.failures import run_shared
from leap_ray.engines.sdxl_runs import Admitted


class PromptEncoder:
    """Encodes admitted requests' prompts with `pipeline`'s `encode_prompt`. `before_encoding` is told
    the LoRA adapters and scales of each encoder call (their text-encoder layers must act)."""

    def __init__(
        self,
        pipeline: StableDiffusionXLPipeline,
        device: torch.device,
        dtype: torch.dtype,
        before_encoding: Callable[[tuple], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.device, self.dtype = device, dtype
        self.before_encoding = before_encoding

    def encode(self, admitted: list[Admitted]) -> None:
        """Sets each request's `embeds`: plain-text prompts that can share a text-encoder call (the same
        guidance, negative prompts or none, adapters) in one, the rest alone. A request whose encoding
        fails alone gets the error (prompts are validated text or embeddings of checked shapes: the
        fault is the model's)."""
        groups: dict[tuple, list[Admitted]] = defaultdict(list)
        for each in admitted:
            groups[self.sharing_key(each)].append(each)
        for group in groups.values():
            run_shared(group, self.encode_group)

    @staticmethod
    def sharing_key(admitted: Admitted) -> tuple:
        """Requests with equal keys share one encoder call."""
        request, texts = admitted.request, admitted.request.prompt_texts()
        if texts is None or (texts["negative_prompt"] is None) != (texts["negative_prompt_2"] is None):
            return ("alone", id(admitted))
        return (request.guidance_is_on(), texts["negative_prompt"] is None, request.lora_scales())

    def encode_group(self, group: list[Admitted]) -> None:
        """One encoder call for the group's texts (a lone request: exactly its solo encoding)."""
        if self.before_encoding is not None:
            self.before_encoding(group[0].request.lora_scales())
        if len(group) == 1:
            self.encode_alone(group[0])
            return
        started = time.perf_counter()
        texts = [each.request.prompt_texts() for each in group]
        joined = {
            name: None if texts[0][name] is None else [text for each in texts for text in each[name]]
            for name in TEXT_FIELDS
        }
        embeds = self.pipeline.encode_prompt(
            **joined,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=group[0].request.guidance_is_on(),
        )
        counts = [each.request.prompt_count for each in group]
        parts = [[None] * len(group) if tensor is None else tensor.split(counts) for tensor in embeds]
        for index, each in enumerate(group):
            images = each.request.num_images_per_prompt
            each.embeds = tuple(
                None if part[index] is None else part[index].repeat_interleave(images, dim=0)
                for part in parts
            )
            each.encode_s = time.perf_counter() - started

    def encode_alone(self, admitted: Admitted) -> None:
        """Encodes one request's prompts exactly as a solo pipeline call would."""
        started = time.perf_counter()
        request = admitted.request
        kwargs = request.to_pipeline_kwargs()
        admitted.embeds = self.pipeline.encode_prompt(
            **{name: kwargs[name] for name in TEXT_FIELDS},
            **{name: self.on_device(kwargs[name]) for name in EMBEDDING_FIELDS},
            device=self.device,
            num_images_per_prompt=request.num_images_per_prompt,
            do_classifier_free_guidance=request.guidance_is_on(),
        )
        admitted.encode_s = time.perf_counter() - started

    def on_device(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.to(self.device, self.dtype)
