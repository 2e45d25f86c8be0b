"""The serve tests' fixtures on the session's Ray (`local_ray`, `graph` and `client` live in
tests/conftest.py, so that tests outside serve/ share the one Ray): replica counters and applications
deployed beside the main one; and the ingress's app in-process, with a stub model side, for the tests
that need no Ray."""

from collections.abc import Iterator

import pytest
from ray import serve

from tests.conftest import APP, Graph
from tests.helpers import InProcessApp, in_process_app


def stats(deployment: str, app: str = APP) -> dict[str, int]:
    """A model deployment's replica counters (requests, cancelled, ongoing, steps)."""
    return serve.get_deployment_handle(deployment, app).stats.remote().result()


@pytest.fixture
def replica_stats():
    """Requests each model deployment's replica has run."""
    return lambda: {name: stats(name)["requests"] for name in ("SDXL", "MusicGen")}


@pytest.fixture(scope="module")
def variants(graph: Graph) -> Iterator[Graph]:
    """For a test module that deploys its own applications beside the main one: removes them after."""
    yield graph
    graph.deploy_with()


@pytest.fixture
def in_process(tmp_path) -> Iterator[InProcessApp]:
    """The ingress's HTTP app with a stub model side (no Ray), served on an event loop of its own, and
    a sync client into it; its jobs run as the ingress's do."""
    with in_process_app(tmp_path) as app:
        yield app
