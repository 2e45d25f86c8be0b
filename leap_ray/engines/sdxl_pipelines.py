"""SDXL's pipelines and schedulers: the diffusers pipelines the engines derive from the loaded one (a
workflow's pipeline, a request's sampler), and the few diffusers methods the step batch calls on a
request's own view of a pipeline.

diffusers keeps some of the methods a step batch needs private (`_get_add_time_ids`,
`_encode_vae_image`); they are called here and only here, so an upgrade of diffusers that renames
them breaks one module."""

from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

SCHEDULER_CLASSES = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
}
# The diffusers pipeline of each workflow other than text2img, made from the loaded one (`from_pipe`).
WORKFLOW_PIPELINES = {
    "img2img": StableDiffusionXLImg2ImgPipeline,
    "inpaint": StableDiffusionXLInpaintPipeline,
}


def own_scheduler(loaded: DiffusionPipeline, name: str | None) -> Any:
    """A scheduler instance of one's own (schedulers hold state): the named one, or one like the loaded
    pipeline's, with its configuration."""
    scheduler_class = SCHEDULER_CLASSES[name] if name else type(loaded.scheduler)
    return scheduler_class.from_config(loaded.scheduler.config)


def derived_pipeline(loaded: DiffusionPipeline, pipeline_class: type) -> Any:
    """A `pipeline_class` sharing `loaded`'s modules (its methods are what the step batch calls)."""
    if isinstance(loaded, pipeline_class):
        return loaded
    pipeline = pipeline_class.from_pipe(loaded)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


class WorkflowPipelines:
    """The loaded pipeline and the workflows' pipelines derived from it, made on first use."""

    def __init__(self, loaded: DiffusionPipeline, image_workflows: dict[str, type] = WORKFLOW_PIPELINES):
        self.loaded = loaded
        self.image_workflows = image_workflows
        self.made: dict[str, Any] = {}

    def for_workflow(self, workflow: str) -> Any:
        """The pipeline whose methods start and condition a request of the workflow (text2img: the
        loaded one)."""
        if workflow not in self.made:
            pipeline_class = self.image_workflows.get(workflow, type(self.loaded))
            self.made[workflow] = derived_pipeline(self.loaded, pipeline_class)
        return self.made[workflow]


class PipelineView:
    """A pipeline with some attributes of its own (a request's scheduler, its number of steps) and the
    rest the pipeline's: what one request's pipeline methods and callbacks see in a step batch."""

    def __init__(self, pipeline: StableDiffusionXLPipeline, **own: Any) -> None:
        self.pipeline = pipeline
        self.__dict__.update(own)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipeline, name)


def add_time_ids(pipeline: Any, *sizes: Any, dtype: torch.dtype) -> Any:
    """The pipeline's own added time ids for these sizes (text2img: original, crop, target; img2img
    and inpainting: the same with aesthetic scores, and the negative ones), as its `__call__` builds
    them, with the width of its second text encoder's projection."""
    width = pipeline.text_encoder_2.config.projection_dim
    return type(pipeline)._get_add_time_ids(pipeline, *sizes, dtype=dtype, text_encoder_projection_dim=width)


def encode_vae_image(pipeline: Any, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """An image's latents sampled from the VAE with `generator`, as the inpainting pipeline makes them."""
    return type(pipeline)._encode_vae_image(pipeline, image, generator)
