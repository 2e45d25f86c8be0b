from dataclasses import dataclass, field

import pytest
import torch

from leap_ray.engines.failures import blame, request_error, run_shared
from leap_ray.errors import InvalidRequest, LeapRayError, ModelError, Overloaded


def test_an_input_that_fails_is_named_by_its_parameter():
    with pytest.raises(InvalidRequest) as raised, blame("melody"):
        raise ValueError("up and down must be positive")
    error = raised.value
    assert (error.status_code, error.param, error.code) == (422, "melody", "invalid_input")
    assert "up and down must be positive" in error.message


@pytest.mark.parametrize(
    "fault",
    [MemoryError(), torch.OutOfMemoryError("CUDA out of memory"), RuntimeError("MPS backend out of memory")],
    ids=["MemoryError", "torch.OutOfMemoryError", "out-of-memory-message"],
)
def test_running_out_of_memory_is_the_models_fault_whatever_the_input(fault):
    with pytest.raises(ModelError) as raised, blame("latents"):
        raise fault
    assert (raised.value.status_code, raised.value.code, raised.value.param) == (503, "model_error", None)


def test_typed_errors_pass_unchanged():
    typed = Overloaded("busy")
    with pytest.raises(Overloaded) as raised, blame("melody"):
        raise typed
    assert raised.value is typed
    assert request_error(typed) is typed
    assert isinstance(request_error(KeyError("x")), ModelError)


@dataclass
class Member:
    name: str
    state: list[str] = field(default_factory=list)
    error: LeapRayError | None = None


def runner(culprit: str, calls: list[list[str]], fails_on_its_own: str = ""):
    """A shared call that faults whenever `culprit` is in it; `fails_on_its_own` meets its own error."""

    def run(members: list[Member]) -> None:
        calls.append([member.name for member in members])
        for member in members:
            member.state.append("ran")
            if member.name == fails_on_its_own:
                member.error = InvalidRequest("bad callback", param="callback_on_step_end")
        if any(member.name == culprit for member in members):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    return run


def test_a_shared_fault_reruns_each_member_alone():
    members = [Member("a"), Member("b"), Member("c")]
    calls: list[list[str]] = []
    run_shared(members, runner("b", calls))
    assert calls == [["a", "b", "c"], ["a"], ["b"], ["c"]]
    assert members[0].error is None and members[2].error is None
    assert isinstance(members[1].error, ModelError) and members[1].error.code == "model_error"


def test_a_member_that_failed_on_its_own_keeps_its_error_and_is_not_rerun():
    members = [Member("a"), Member("b"), Member("c")]
    calls: list[list[str]] = []
    run_shared(members, runner("c", calls, fails_on_its_own="a"))
    assert calls == [["a", "b", "c"], ["b"], ["c"]]
    assert isinstance(members[0].error, InvalidRequest)
    assert members[1].error is None and isinstance(members[2].error, ModelError)
