"""A request run as parts (bigger than a batch) reports one progress stream across the base and the
refiner stages, and a hand-off to the refiner splits to the refiner's own batch size."""

import torch

from leap_ray.api.handoff import RefineRequest
from leap_ray.api.progress import StepProgress
from leap_ray.api.sdxl import SDXLRequest
from leap_ray.serve.parts import PartsProgress


def test_progress_of_parts_is_the_mean_in_the_earliest_stage_and_never_goes_back():
    told = []
    parts = PartsProgress(2, told.append)
    first, second = parts.part(0), parts.part(1)
    first(StepProgress(4, 4, 1.0, stage="base"))
    first(StepProgress(1, 2, 1.0, stage="refiner"))  # part 0 refines while part 1 is still at its base
    second(StepProgress(2, 4, 1.0, stage="base"))
    second(StepProgress(4, 4, 1.0, stage="base"))
    first(StepProgress(2, 2, 1.0, stage="refiner"))
    second(StepProgress(1, 2, 1.0, stage="refiner"))
    second(StepProgress(2, 2, 1.0, stage="refiner"))
    reported = [(event.stage, event.step, event.total) for event in told]
    assert reported == [
        ("base", 2, 4),
        ("base", 3, 4),
        ("base", 4, 4),
        ("refiner", 1, 2),
        ("refiner", 2, 2),
    ]


def test_a_hand_off_splits_into_the_refiners_batches_in_image_order():
    request = SDXLRequest(
        prompt=["a", "b"], num_images_per_prompt=3, seed=10, refiner={}, height=64, width=64
    )
    latents = torch.arange(6.0).view(6, 1, 1, 1)
    states = [torch.tensor([index]) for index in range(6)]
    job = RefineRequest(request, latents, states, list(range(10, 16)), {"generate_s": 1.0})
    parts = job.split(2)
    assert [part.image_count for part in parts] == [2, 1, 2, 1]
    assert [part.request.prompt for part in parts] == [["a"], ["a"], ["b"], ["b"]]
    assert torch.cat([part.latents for part in parts]).flatten().tolist() == list(range(6))
    assert [part.seeds for part in parts] == [[10, 11], [12], [13, 14], [15]]
    assert [part.request.seed for part in parts] == [10, 12, 13, 15]
    assert [int(state) for part in parts for state in part.generator_states] == list(range(6))
    (whole,) = job.split(6)
    assert whole.image_count == 6 and whole.request is request
