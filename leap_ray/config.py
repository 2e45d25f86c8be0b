"""Typed settings an operator may change, each with its default next to it.

Request limits are read once, at import, from the environment (prefix `LEAP_RAY_`, nested with `__`,
e.g. `LEAP_RAY_SDXL__MAX_STEPS=100`), because they become the bounds of the request schemas and so
of `/openapi.json`. In a Serve config, set them in `runtime_env.env_vars`.
"""

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SDXLLimits(BaseModel):
    min_size: int = Field(64, description="Smallest height/width in pixels.")
    max_size: int = Field(2048, description="Largest height/width in pixels.")
    max_pixels: int = Field(
        4 * 1024 * 1024, description="Budget per request: height × width × number of images."
    )
    max_steps: int = Field(150, description="Most num_inference_steps.")
    max_images_per_prompt: int = Field(8, description="Most num_images_per_prompt.")
    max_prompts: int = Field(8, description="Most prompts in one request's prompt list.")
    max_prompt_chars: int = Field(4000, description="Longest prompt, in characters.")
    max_guidance_scale: float = Field(50.0, description="Largest guidance_scale.")
    max_tensor_elements: int = Field(
        16 * 1024 * 1024, description="Most elements in one tensor sent with a request."
    )


class MusicGenLimits(BaseModel):
    max_duration_s: float = Field(60.0, description="Longest track in seconds.")
    max_prompt_chars: int = Field(2000, description="Longest prompt, in characters.")
    max_melody_bytes: int = Field(16 * 1024 * 1024, description="Largest encoded melody, in bytes.")
    max_melody_s: float = Field(60.0, description="Longest melody, in seconds.")


class Limits(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEAP_RAY_", env_nested_delimiter="__", extra="ignore")

    sdxl: SDXLLimits = SDXLLimits()
    musicgen: MusicGenLimits = MusicGenLimits()


LIMITS = Limits()
