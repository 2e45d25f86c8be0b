"""Seeds stay in the range the API accepts, and empty prompts are taken as the libraries take them."""

import pytest

from leap_ray.api.common import MAX_SEED, draw_seed, offset_seed, with_seed
from leap_ray.api.musicgen import MusicGenRequest
from leap_ray.api.sdxl import SDXLRequest, seeds_for


def test_the_last_seed_with_two_images_wraps_to_zero_instead_of_leaving_the_range():
    request = SDXLRequest(prompt="a", num_images_per_prompt=2, seed=MAX_SEED)
    assert seeds_for(request, MAX_SEED) == [MAX_SEED, 0]
    # Every returned seed is one the API accepts again.
    for seed in seeds_for(request, MAX_SEED):
        assert SDXLRequest(prompt="a", seed=seed).seed == seed


@pytest.mark.parametrize("offset", [0, 1, 7, 2**60])
def test_offset_seeds_never_leave_the_range(offset):
    assert 0 <= offset_seed(MAX_SEED - 3, offset) <= MAX_SEED


def test_drawn_seeds_are_in_the_range():
    assert all(0 <= draw_seed() <= MAX_SEED for _ in range(1000))


@pytest.mark.parametrize("request_type", [SDXLRequest, MusicGenRequest])
def test_with_seed_fixes_a_missing_seed_and_keeps_a_given_one(request_type):
    assert with_seed(request_type(prompt="a", seed=5)).seed == 5
    drawn = with_seed(request_type(prompt="a"))
    assert drawn.seed is not None and 0 <= drawn.seed <= MAX_SEED


@pytest.mark.parametrize("prompt", ["", "   "], ids=["empty", "blank"])
@pytest.mark.parametrize("request_type", [SDXLRequest, MusicGenRequest])
def test_an_empty_prompt_is_accepted_as_diffusers_and_transformers_accept_it(request_type, prompt):
    assert request_type(prompt=prompt).prompt == prompt
