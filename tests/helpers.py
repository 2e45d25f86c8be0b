"""Test helpers shared by several test modules: decoded pixels, hostile audio files built by hand,
the diffusers references of SDXL workflows (img2img, inpainting, LoRA, the refiner ensemble)."""

import base64
import io
import struct
from typing import Any

import numpy as np
import psutil
import soundfile
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from PIL import Image

from leap_ray.api.sdxl import SDXLRequest
from leap_ray.engines.sdxl import SCHEDULER_CLASSES, WORKFLOW_PIPELINES
from leap_ray.engines.sdxl_steps import StepBatch

SMALL = {"height": 64, "width": 64, "num_inference_steps": 3}  # an SDXL request that costs little


def ingress_processes(app: str) -> list[psutil.Process]:
    """The processes of an application's ingress replicas (Ray names them in their command line)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(f"ServeReplica:{app}:Ingress" in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def pixels(data: bytes) -> np.ndarray:
    """An encoded image's RGB pixels, as int16 so that differences may be taken."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def wav_bytes(sample_rate: int, *, frames: int = 1600, data_size: int | None = None) -> bytes:
    """A mono 16-bit WAV written by hand, so that its header may say what soundfile would not write."""
    fmt = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2 % 2**32, 2, 16)
    data = bytes(2 * frames)
    size = len(data) if data_size is None else data_size
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def encoded(samples: np.ndarray, rate: int, container: str = "FLAC") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=container)
    return buffer.getvalue()


def flac_silence(seconds: float, *, rate: int = 8000, channels: int = 1) -> bytes:
    return encoded(np.zeros((round(seconds * rate), channels), dtype=np.int16), rate)


def with_total_samples(flac: bytes, total: int) -> bytes:
    """Patches the FLAC STREAMINFO's 36-bit total-samples field; 0 means the length is unknown."""
    patched = bytearray(flac)
    assert patched[:4] == b"fLaC" and patched[4] & 0x7F == 0  # STREAMINFO is the first block
    # After "fLaC", the block header and 10 bytes: 20 bits of rate, 3 of channels, 5 of sample size.
    at = 4 + 4 + 13
    patched[at] = patched[at] & 0xF0 | total >> 32
    patched[at + 1 : at + 5] = (total & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(patched)


def solo(
    reference: StableDiffusionXLPipeline, request: SDXLRequest, seeds: list[int], **overrides: object
) -> np.ndarray:
    """What a direct diffusers call with the request's parameters gives: the workflow's own pipeline
    (text2img, img2img, inpaint) on the reference's modules, with the request's sampler."""
    pipeline_class = WORKFLOW_PIPELINES.get(request.workflow, StableDiffusionXLPipeline)
    if request.scheduler is not None or pipeline_class is not type(reference):
        scheduler = reference.scheduler
        if request.scheduler is not None:
            scheduler = SCHEDULER_CLASSES[request.scheduler].from_config(reference.scheduler.config)
        reference = pipeline_class.from_pipe(reference, scheduler=scheduler)
        reference.set_progress_bar_config(disable=True)
    kwargs = request.to_pipeline_kwargs()
    if request.workflow != "text2img":
        del kwargs["latents"]
        kwargs.update(image=request.image, strength=request.effective_strength())
    if request.workflow == "img2img":
        del kwargs["height"], kwargs["width"]
    if request.workflow == "inpaint":
        kwargs["mask_image"] = request.mask_image
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    return reference(**kwargs | {"generator": generators, "output_type": "np"} | overrides).images


def seeds_of(request: SDXLRequest) -> list[int]:
    return [request.seed + j for j in range(request.image_count)]


def run_steps(batch: StepBatch, arrivals: dict[int, list[SDXLRequest]]) -> dict[int, object]:
    """Steps the batch until it is empty, admitting `arrivals[k]` before step k; outcomes by seed."""
    outcomes, step = {}, 0
    while batch.load or any(k >= step for k in arrivals):
        for request in arrivals.get(step, []):
            assert batch.admit(request) is None
        outcomes.update((request.seed, outcome) for request, outcome in batch.step())
        step += 1
    return outcomes


def png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def lora_solo(reference: StableDiffusionXLPipeline, request: SDXLRequest) -> np.ndarray:
    """diffusers' own way: set_adapters with the request's scales (or LoRA off)."""
    if request.loras:
        reference.enable_lora()
        reference.set_adapters([lora.name for lora in request.loras], [lora.scale for lora in request.loras])
    else:
        reference.disable_lora()
    return solo(reference, request, seeds_of(request))


def ensemble_reference(
    base: StableDiffusionXLPipeline, refiner: StableDiffusionXLImg2ImgPipeline, request: SDXLRequest
) -> np.ndarray:
    """diffusers' documented two-pipeline call, one process, the same generators through both: the
    base (of the request's workflow) to denoising_end as latents, then the refiner from denoising_start
    (an inpainting's refiner: the inpainting pipeline with the refiner's weights, image and mask)."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds_of(request)]
    latents = solo(base, request, seeds_of(request), generator=generators, output_type="latent")
    refiner_class = WORKFLOW_PIPELINES.get(request.workflow, StableDiffusionXLImg2ImgPipeline)
    scheduler_class = SCHEDULER_CLASSES[request.scheduler] if request.scheduler else type(refiner.scheduler)
    refiner = refiner_class.from_pipe(
        refiner, scheduler=scheduler_class.from_config(refiner.scheduler.config)
    )
    refiner.set_progress_bar_config(disable=True)
    inputs = {}
    if request.workflow == "inpaint":
        inputs = {"mask_image": request.mask_image, "height": request.height, "width": request.width}
    options = request.refiner
    return refiner(
        prompt=request.prompt,
        negative_prompt=request.to_pipeline_kwargs()["negative_prompt"],
        image=latents,
        generator=generators,
        num_images_per_prompt=request.num_images_per_prompt,
        num_inference_steps=options.num_inference_steps or request.num_inference_steps,
        denoising_start=options.denoising_start or request.denoising_end,
        guidance_scale=request.guidance_scale,
        aesthetic_score=options.aesthetic_score,
        negative_aesthetic_score=options.negative_aesthetic_score,
        output_type="np",
        **inputs,
    ).images


def reference_pipeline(pipeline_class: type, folder: object) -> Any:
    """A diffusers pipeline loaded from a tiny model's folder, quiet, as the references use them."""
    pipeline = pipeline_class.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
