"""What one model deployment hands another through a handle (Ray's object store), as Python objects
with torch tensors: not part of the HTTP API, so not in its wire schemas."""

from dataclasses import dataclass

import torch

from leap_ray.api.sdxl import SDXLRequest


@dataclass(frozen=True)
class RefinerSpec:
    """What the refiner's loaded model takes: latents of this many channels."""

    latent_channels: int


@dataclass
class RefineRequest:
    """What the SDXL deployment sends the refiner deployment: a request's latents where the base
    stopped, with the state of its generators (the refiner goes on drawing from them)."""

    request: SDXLRequest
    latents: torch.Tensor  # (images, channels, height/8, width/8), the base's, not decoded
    generator_states: list[torch.Tensor]
    seeds: list[int]
    timings: dict[str, float]  # the base stage's
    model: str = ""  # the base's model, which the refined images name beside the refiner's

    @property
    def image_count(self) -> int:
        return len(self.seeds)

    def split(self, max_images: int) -> list["RefineRequest"]:
        """This hand-off as hand-offs of at most `max_images` images each, in image order."""
        parts, start = [], 0
        for part in self.request.split(max_images):
            rows = slice(start, start + part.image_count)
            states = self.generator_states[rows]
            job = RefineRequest(part, self.latents[rows], states, self.seeds[rows], self.timings, self.model)
            parts.append(job)
            start += part.image_count
        return parts
