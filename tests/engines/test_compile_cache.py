"""The compile cache (leap_ray.engines.compile_cache): an archive saved after a replica compiled is
loaded by a replica on another node, through a folder or an object store; a missing, corrupt or
foreign archive is ignored with a log line, never a failed replica. The end-to-end check (a second
replica with an empty inductor cache compiles nothing) is in test_compile_start.py."""

import logging
import zipfile
from pathlib import Path

import pytest
import torch

from leap_ray.engines.compile_cache import KERNEL, CompileCache, kernel_files, kernels_in_use
from tests.helpers import BUCKET, CREDENTIALS

KEY = {"torch": "2.13.0", "device": "cpu AVX2", "options": {"batch_buckets": [1, 2]}}


@pytest.fixture
def inductor_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh inductor cache folder for this process, as on a new node."""
    folder = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder))
    return folder


def compile_something(rows: int) -> None:
    """Inductor compiles a small function: a graph for the Mega-Cache and a C++ kernel (of its own
    for each `rows`: inductor keeps kernels in memory too, so a test process builds each once)."""
    compiled = torch.compile(lambda x: (x.sin() + 1).relu(), dynamic=False)
    compiled(torch.randn(rows, 7))


def test_without_an_archive_a_replica_compiles_from_scratch(tmp_path, caplog):
    cache = CompileCache(str(tmp_path), "sdxl", KEY)
    with caplog.at_level(logging.INFO):
        assert not cache.load()
    assert f"no compile cache at {tmp_path}/sdxl-" in caplog.text


@pytest.mark.parametrize(
    "contents",
    [b"not a zip", b"PK\x03\x04 torn"],
    ids=["garbage", "torn-zip"],
)
def test_a_corrupt_archive_is_ignored_with_a_log_line(tmp_path, caplog, contents):
    cache = CompileCache(str(tmp_path), "sdxl", KEY)
    (tmp_path / cache.file_name).write_bytes(contents)
    assert not cache.load() and not cache.loaded
    assert "ignoring the compile cache" in caplog.text


def test_an_unreadable_mega_cache_is_ignored_and_no_kernel_is_written(tmp_path, inductor_cache, caplog):
    cache = CompileCache(str(tmp_path), "sdxl", KEY)
    kernel = inductor_cache / "ab" / "cabc.so"
    kernel.parent.mkdir(parents=True)
    kernel.write_bytes(b"\x7fELF")
    (tmp_path / cache.file_name).write_bytes(cache.pack([b"\x00garbage"], ["ab/cabc.so"]))
    kernel.unlink()
    assert not cache.load()
    assert "its Mega-Cache could not be read" in caplog.text and kernel_files() == set()


def test_an_archive_made_for_another_setup_is_ignored(tmp_path, caplog):
    other = CompileCache(str(tmp_path), "sdxl", {**KEY, "torch": "2.12.0"})
    cache = CompileCache(str(tmp_path), "sdxl", KEY)
    assert other.file_name != cache.file_name  # the key names the archive
    (tmp_path / cache.file_name).write_bytes(other.pack([b""], []))  # as if renamed, or a hash collision
    assert not cache.load()
    assert "made for another setup (differs in torch)" in caplog.text


@pytest.mark.slow  # inductor builds a C++ kernel
@pytest.mark.parametrize("where", ["folder", "s3"])
def test_what_a_replica_compiled_is_loaded_by_a_replica_on_a_new_node(
    tmp_path, inductor_cache, monkeypatch, s3_endpoint, where
):
    location = str(tmp_path / "shared")
    if where == "s3":
        for name, value in {**CREDENTIALS, "AWS_ENDPOINT": s3_endpoint, "AWS_ALLOW_HTTP": "true"}.items():
            monkeypatch.setenv(name, value)
        location = f"s3://{BUCKET}/{tmp_path.name}/compile"
    first = CompileCache(location, "sdxl", KEY)
    compile_something(rows=5 if where == "folder" else 6)
    built = kernel_files() - first.kernels_before
    assert built and all(KERNEL.fullmatch(name) for name in built)
    first.save()

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "new-node"))
    second = CompileCache(location, "sdxl", KEY)
    assert second.kernels_before == set() and second.load()
    assert kernel_files() == built  # the kernels are in the new node's inductor cache
    for name in built:
        assert (tmp_path / "new-node" / name).read_bytes() == (inductor_cache / name).read_bytes()
    if where == "folder":
        archive = Path(location) / second.file_name
        saved = archive.read_bytes()
        second.save()  # loaded, and nothing compiled since: the archive is left as it was
        assert archive.read_bytes() == saved


@pytest.mark.slow  # inductor builds C++ kernels
def test_a_replica_that_compiled_more_than_the_archive_held_saves_a_fresh_one(tmp_path, inductor_cache):
    location = str(tmp_path / "shared")
    first = CompileCache(location, "sdxl", KEY)
    compile_something(rows=11)
    first.save()
    archive = Path(location) / first.file_name
    stale = set(zipfile.ZipFile(archive).namelist())

    second = CompileCache(location, "sdxl", KEY)
    assert second.load()
    compile_something(rows=12)  # a graph the archive lacks (code or a library changed since)
    second.save()
    assert set(zipfile.ZipFile(archive).namelist()) > stale


@pytest.mark.slow  # inductor builds a C++ kernel
def test_a_node_with_a_warm_inductor_cache_saves_the_kernels_it_loaded(tmp_path, inductor_cache):
    compile_something(rows=13)  # an earlier replica on this node compiled (its archive since lost)
    on_disk = kernel_files()
    cache = CompileCache(str(tmp_path / "shared"), "sdxl", KEY)
    assert cache.kernels_before == on_disk and cache.built_kernels() == set()
    cache.save()
    packed = set(zipfile.ZipFile(tmp_path / "shared" / cache.file_name).namelist())
    assert kernels_in_use() & on_disk <= packed and any(name.endswith(".main.so") for name in packed)


@pytest.mark.slow  # inductor builds a C++ kernel
def test_a_replica_that_cannot_save_still_serves(tmp_path, inductor_cache, caplog):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    cache = CompileCache(str(blocked), "sdxl", KEY)
    compile_something(rows=4)
    cache.save()  # does not raise
    assert "could not save the compile cache" in caplog.text
