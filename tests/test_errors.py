"""Typed errors: every one carries a machine-readable code, and a failed union is explained by the
member the input was meant for."""

import pytest
from pydantic import ValidationError

from leap_ray import errors
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.errors import InvalidRequest, LeapRayError, invalid_request_from, name_field


@pytest.mark.parametrize(
    "error_class",
    [value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, LeapRayError)],
)
def test_every_error_has_a_code_even_when_none_is_given(error_class):
    error = error_class("message")
    assert error.body()["error"]["code"]


@pytest.mark.parametrize(
    ("prompt", "says"),
    [
        (["a"] * 9, "at most 8 items"),
        ([], "at least 1 item"),
        (["a", 3], "valid string"),
        (5, "valid string"),
    ],
    ids=["nine-prompts", "no-prompts", "a-number-in-the-list", "a-number"],
)
def test_a_bad_prompt_list_is_explained_as_a_list(prompt, says):
    with pytest.raises(ValidationError) as caught:
        SDXLRequest.model_validate({"prompt": prompt})
    error = invalid_request_from(caught.value.errors())
    assert error.param == "prompt" and says in error.message


@pytest.mark.parametrize(
    ("message", "param", "renamed"),
    [
        ("num_images_per_prompt: too many", "num_images_per_prompt", ("batch_size: too many", "batch_size")),
        ("loras.0.scale: too big", "loras", ("prompt: too big", "prompt")),
        ("input.loras.0.scale: too big", "input.loras", ("prompt: too big", "input.prompt")),
        ("no such adapter", "loras", ("no such adapter", "prompt")),  # no field at its head
        ("seed: too big", "seed", ("seed: too big", "seed")),  # a field of both
    ],
    ids=["field", "field-part", "prefixed", "no-head", "not-renamed"],
)
def test_name_field_renames_the_param_and_the_messages_head(message, param, renamed):
    error = InvalidRequest(message, param=param)
    name_field(error, {"num_images_per_prompt": "batch_size", "loras": "prompt"}, prefix="input.")
    assert (error.message, error.param) == renamed
