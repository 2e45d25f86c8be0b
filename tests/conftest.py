from pathlib import Path

import pytest

from leap_ray.testing import write_tiny_models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny random-weight models, built once per test session."""
    return write_tiny_models(tmp_path_factory.mktemp("models"))
