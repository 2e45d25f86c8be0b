"""The suggestions a client may start an SDXL request from (GET /v1/sdxl/defaults): the model's own
size and steps, kept within the request's bounds; the request's defaults where the model says nothing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from leap_ray.api.sdxl import SDXLRequest
from leap_ray.api.sdxl_checks import SDXLModelSpec
from leap_ray.api.sdxl_defaults import sdxl_defaults
from leap_ray.config import SDXLLimits, SDXLSettings

ROOT = Path(__file__).parents[2]
SPEC = SDXLModelSpec(
    latent_channels=4, vae_scale_factor=8, text_embed_width=96, pooled_embed_width=32, text_tokens=77
)


def test_a_model_that_says_nothing_gets_the_requests_own_defaults():
    defaults = sdxl_defaults(SPEC)
    request = SDXLRequest(prompt="a")
    assert defaults.model_dump() == {
        "height": request.height,
        "width": request.width,
        "num_inference_steps": request.num_inference_steps,
    }


def test_the_models_native_size_and_suggested_steps_are_offered():
    spec = SDXLModelSpec(**{**SPEC.__dict__, "native_size": 256, "suggested_steps": 8})
    assert sdxl_defaults(spec).model_dump() == {"height": 256, "width": 256, "num_inference_steps": 8}


@pytest.mark.parametrize(
    ("native_size", "steps", "expected"),
    [(16, 1000, (64, 150)), (4000, 1, (2048, 1)), (300, 3, (296, 3))],
    ids=["too-small-and-too-many", "too-large", "not-a-multiple-of-8"],
)
def test_suggestions_stay_within_the_requests_bounds(native_size, steps, expected):
    spec = SDXLModelSpec(**{**SPEC.__dict__, "native_size": native_size, "suggested_steps": steps})
    defaults = sdxl_defaults(spec)
    assert (defaults.height, defaults.num_inference_steps) == expected
    SDXLRequest(prompt="a", **defaults.model_dump())  # a request the service accepts


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"model": "tiny:sdxl"}, 8),
        ({"model": "tiny:sdxl", "suggested_steps": 3}, 3),
        ({"model": "stabilityai/stable-diffusion-xl-base-1.0"}, None),
        ({"model": "stabilityai/stable-diffusion-xl-base-1.0", "suggested_steps": 30}, 30),
    ],
    ids=["tiny", "tiny-set", "real", "real-set"],
)
def test_the_operator_suggests_steps_and_a_tiny_model_suggests_few(settings, expected):
    assert SDXLSettings(**settings).suggested() == expected


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"max_pixels": 500_000}, 704),  # isqrt(500000) = 707, down to a multiple of 8
        ({"min_size": 100}, 1024),
        ({"min_size": 100, "max_pixels": 100 * 100}, 104),  # the first multiple of 8 from 100
        ({"max_size": 1000}, 1000),
        ({"max_size": 1001}, 1000),
    ],
    ids=["pixel-budget", "min-size-off-8", "budget-below-the-min-multiple", "max-size", "max-size-off-8"],
)
def test_the_suggested_size_fits_the_operators_limits(limits, expected):
    spec = SDXLModelSpec(**{**SPEC.__dict__, "native_size": 1024})
    defaults = sdxl_defaults(spec, SDXLLimits(**limits))
    assert (defaults.height, defaults.width) == (expected, expected)


def test_the_service_accepts_its_own_suggestions_under_an_operators_limits():
    """The limits are read at import (they are the schema's bounds): a fresh interpreter with them."""
    check = (
        "from leap_ray.api.sdxl import SDXLRequest; from leap_ray.api.sdxl_defaults import sdxl_defaults;"
        "from tests.api.test_sdxl_defaults import SPEC; import dataclasses;"
        "d = sdxl_defaults(dataclasses.replace(SPEC, native_size=1024)).model_dump();"
        "SDXLRequest(prompt='a', **d); print(d)"
    )
    env = os.environ | {"LEAP_RAY_SDXL__MIN_SIZE": "100", "LEAP_RAY_SDXL__MAX_PIXELS": "500000"}
    done = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "'height': 704, 'width': 704" in done.stdout
