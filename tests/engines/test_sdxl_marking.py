"""SDXL's marking workers (`sdxl_marking.Marking`) on their own: a request submitted when no worker can
run it (the workers closed, or the interpreter exiting) still gets an outcome, and its images leave
the load when that outcome is taken."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from leap_ray.engines.sdxl_marking import Marking
from leap_ray.errors import ModelUnavailable

PATIENCE_S = 10


def taken(marking: Marking) -> list:
    """Every outcome the marking holds, taken as the driving thread does."""
    outcomes = []
    for _ in range(int(PATIENCE_S / 0.02)):
        outcomes += marking.take(wait=True)
        if not marking.load:
            break
    return outcomes


def test_a_marked_request_holds_its_images_until_its_outcome_is_taken():
    marking, release = Marking(workers=1), threading.Event()
    marking.submit("request", 3, lambda: release.wait(PATIENCE_S) and "marked")
    assert marking.load == 3 and marking.take(wait=False) == []
    release.set()
    assert taken(marking) == [("request", "marked")] and marking.load == 0
    marking.close()


def test_a_request_submitted_after_close_gets_an_error_and_leaves_the_load():
    marking = Marking(workers=1)
    marking.close()
    marking.submit("request", 2, lambda: pytest.fail("no worker should run it"))
    [(request, outcome)] = taken(marking)
    assert request == "request" and isinstance(outcome, ModelUnavailable) and marking.load == 0


def test_a_request_the_executor_refuses_at_interpreter_exit_gets_an_error_and_leaves_the_load(monkeypatch):
    def refused(*args, **kwargs):
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(ThreadPoolExecutor, "submit", refused)
    marking = Marking(workers=1)
    marking.submit("request", 2, lambda: pytest.fail("no worker should run it"))
    [(request, outcome)] = taken(marking)
    assert request == "request" and isinstance(outcome, ModelUnavailable) and marking.load == 0
    marking.close()


def test_close_stops_the_workers_once_the_marking_in_flight_is_done():
    marking, release, before = Marking(workers=1), threading.Event(), set(threading.enumerate())
    marking.submit("request", 1, lambda: release.wait(PATIENCE_S) and "marked")
    workers = [
        thread for thread in set(threading.enumerate()) - before if thread.name.startswith("sdxl-watermark")
    ]
    assert len(workers) == 1
    marking.close()
    release.set()
    assert taken(marking) == [("request", "marked")]
    for worker in workers:
        worker.join(PATIENCE_S)
        assert not worker.is_alive()
