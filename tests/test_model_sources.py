"""Model sources: hub ids and folders pass through; `tiny:<name>` builds that tiny model once, offline,
into the cache, importing only the builder it needs; production code never imports leap_ray.testing."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from leap_ray import model_sources
from leap_ray.model_sources import TINY_BUILDERS, resolve_model, tiny_builders_digest, tiny_model

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("source", ["stabilityai/stable-diffusion-xl-base-1.0", "/models/sdxl", "./local"])
def test_hub_ids_and_folders_pass_through(source):
    assert resolve_model(source) == source


def test_a_tiny_name_is_built_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAP_RAY_TINY_MODELS", str(tmp_path))
    folder = Path(resolve_model("tiny:musicgen"))
    assert (
        folder == tmp_path / tiny_builders_digest() / "musicgen" and (folder / "model.safetensors").exists()
    )
    built = (folder / "model.safetensors").stat().st_mtime_ns
    assert tiny_model("musicgen") == folder and (folder / "model.safetensors").stat().st_mtime_ns == built


def test_a_changed_builder_builds_its_model_again(tmp_path, monkeypatch):
    """A machine that built the tiny models before their builders changed gets the new ones."""
    monkeypatch.setenv("LEAP_RAY_TINY_MODELS", str(tmp_path))
    before = tiny_model("musicgen")
    monkeypatch.setattr(model_sources, "tiny_builders_digest", lambda: "changed")
    after = tiny_model("musicgen")
    assert after == tmp_path / "changed" / "musicgen" != before
    assert (after / "model.safetensors").exists()


def test_the_digest_follows_the_builders_source(tmp_path, monkeypatch):
    digest = tiny_builders_digest()
    assert len(digest) == 12 and digest == tiny_builders_digest()
    copy = tmp_path / "leap_ray"
    shutil.copytree(ROOT / "leap_ray" / "tiny", copy / "tiny")
    (copy / "tiny" / "sdxl.py").write_text((copy / "tiny" / "sdxl.py").read_text() + "\n# changed\n")
    monkeypatch.setattr(model_sources, "__file__", str(copy / "model_sources.py"))
    model_sources.tiny_builders_digest.cache_clear()
    try:
        assert model_sources.tiny_builders_digest() != digest
    finally:
        model_sources.tiny_builders_digest.cache_clear()


def test_an_unknown_tiny_name_says_which_there_are():
    with pytest.raises(ValueError, match="musicgen-melody"):
        resolve_model("tiny:nope")
    assert set(TINY_BUILDERS) == {
        "sdxl",
        "sdxl-refiner",
        "sdxl-lora",
        "sdxl-lora-2",
        "musicgen",
        "musicgen-melody",
    }


def test_production_code_never_imports_the_testing_package():
    for path in (ROOT / "leap_ray").rglob("*.py"):
        if "testing" not in path.parts:
            assert "leap_ray.testing" not in path.read_text(), path


@pytest.mark.slow  # a subprocess builds the tiny SDXL
def test_resolving_a_tiny_sdxl_does_not_import_the_musicgen_builder(tmp_path):
    code = (
        "import sys; from leap_ray.model_sources import resolve_model; resolve_model('tiny:sdxl'); "
        "print('leap_ray.tiny.musicgen' in sys.modules)"
    )
    env = {"LEAP_RAY_TINY_MODELS": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "False"
