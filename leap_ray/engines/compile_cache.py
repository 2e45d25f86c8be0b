"""A compile cache that travels: what torch.compile made for a replica, saved after its warm-up to a
folder or an object store every node reads, and loaded by a replica on a node whose own inductor cache
is empty, so that it loads compiled code instead of compiling it.

An archive (a zip) holds:
- PyTorch's Mega-Cache (`torch.compiler.save_cache_artifacts`): inductor's FX graphs, AOTAutograd's
  graphs, and on a GPU the Triton kernels and autotuning results, portable across machines with the
  same torch, Triton and GPU. Chosen over AOTInductor (`torch.export` to a .pt2 package) because it
  keeps the replica on the one torch.compile path it would take anyway: a cache that does not match
  is a cache miss and a compile, never a failed replica, and nothing about the UNet must be exportable.
- On the CPU, the C++ kernels the process's compiled code loaded (the `.so` files): Mega-Cache leaves
  them out, and rebuilding them was 52 of the 60 s a replica took with the Mega-Cache alone. Their
  file names hash their source and compiler command; the key names the CPU's vector ISA, but two CPUs
  of one ISA level with different extensions (`-march=native`) would share them: keep one CPU model
  per compile cache.

An archive's name is a hash of everything the compiled code depends on (`key_parts`); its manifest
repeats them, and a replica loads only an archive whose manifest equals its own. A missing, foreign or
corrupt archive is ignored with a log line. A replica that compiled anything that the archive did not
hold (a cache miss in inductor or AOTAutograd, a kernel built) saves a fresh one, so a stale archive
mends itself. Loading runs pickled code: the location must be as trusted as the inductor cache."""

import hashlib
import io
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch._dynamo.utils import counters
from torch._inductor.codecache import CppCodeCache, CppPythonBindingsCodeCache
from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir

from leap_ray.config import is_object_store_url

logger = logging.getLogger(__name__)

LOCATION_ENV = "LEAP_RAY_COMPILE_CACHE"  # the default location, when set
FORMAT = 2  # of the archive; part of every key
MEGA_CACHE = re.compile(r"mega-cache-([0-9]+)\.bin")  # one per save of the process that wrote it
MANIFEST = "manifest.json"
KERNEL = re.compile(r"[0-9a-z]{2}/[0-9A-Za-z_.]+\.so")  # inductor's C++ kernels: <2 chars>/<hash>.so
RETRY = {"max_retries": 3, "retry_timeout": timedelta(seconds=20)}  # a store that is down: seconds


def default_location() -> str:
    return os.environ.get(LOCATION_ENV) or str(Path.home() / ".cache" / "leap_ray" / "compile")


def kernel_files() -> set[str]:
    """The C++ kernels in this process's inductor cache folder, relative to it."""
    root = Path(inductor_cache_dir())
    if not root.is_dir():
        return set()
    return {str(path.relative_to(root)) for path in root.glob("*/*.so")}


def kernels_in_use() -> set[str]:
    """The C++ kernels this process's compiled code loaded, wherever they were built: inductor's code
    caches hold them by the hash that names their file (<hash[1:3]>/<hash>*.so)."""
    root = Path(inductor_cache_dir())
    hashes = [*CppPythonBindingsCodeCache.cache, *CppCodeCache.cache]
    return {str(path.relative_to(root)) for key in hashes for path in root.glob(f"{key[1:3]}/{key}*.so")}


def cache_misses() -> int:
    """Graphs this process compiled that no cache held (inductor's and AOTAutograd's counters)."""
    return counters["inductor"]["fxgraph_cache_miss"] + counters["aot_autograd"]["autograd_cache_miss"]


class CompileCache:
    """One archive at `location` (a folder or an object-store URL), named by its key parts."""

    def __init__(self, location: str, name: str, key_parts: Mapping[str, Any]) -> None:
        """Raises TypeError for key parts that JSON cannot hold (a compile backend given as an
        object): the key would name an object's address, not a setup."""
        self.location = location
        self.key_parts = json.loads(json.dumps({"format": FORMAT, **key_parts}))
        digest = hashlib.sha256(json.dumps(self.key_parts, sort_keys=True).encode()).hexdigest()
        self.file_name = f"{name}-{digest[:24]}.zip"
        self.kernels_before = kernel_files()  # those not made by this replica's compiles
        self.kernels_loaded: set[str] = set()
        self.loaded = False
        self.misses_before = cache_misses()
        # Every Mega-Cache this process saved, each kept: a second save_cache_artifacts() returns the
        # first's artifacts and its own, but loading it keeps only its own (torch 2.13 collects the
        # artifacts by type into a dict, the later list of a type replacing the earlier).
        self.saves: list[bytes] = []

    def __str__(self) -> str:
        return f"{self.location.rstrip('/')}/{self.file_name}"

    def load(self) -> bool:
        """Fills this process's compile caches from the archive; False (logged) when there is none
        or it cannot be used."""
        try:
            data = read(self.location, self.file_name)
        except FileNotFoundError:
            logger.info("no compile cache at %s: compiling from scratch", self)
            return False
        except Exception as error:
            logger.warning("could not read the compile cache %s (%s): compiling from scratch", self, error)
            return False
        try:
            kernels = self.unpack(data)
        except Exception as error:
            logger.warning("ignoring the compile cache %s (%s): compiling from scratch", self, error)
            return False
        self.loaded = True
        logger.info("loaded the compile cache %s (%d kernels)", self, kernels)
        return True

    def unpack(self, data: bytes) -> int:
        """Checks the archive against this replica's key, then loads it; the count of kernels."""
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            manifest = json.loads(archive.read(MANIFEST))
            if manifest != self.key_parts:
                keys = {*manifest, *self.key_parts}
                changed = sorted(key for key in keys if manifest.get(key) != self.key_parts.get(key))
                raise ValueError(f"made for another setup (differs in {', '.join(changed)})")
            kernels = [name for name in archive.namelist() if KERNEL.fullmatch(name)]
            saves = sorted(
                (match for match in map(MEGA_CACHE.fullmatch, archive.namelist()) if match), key=save_number
            )
            if not saves:
                raise ValueError("it holds no Mega-Cache")
            for match in saves:
                if torch.compiler.load_cache_artifacts(archive.read(match.string)) is None:
                    raise ValueError("its Mega-Cache could not be read")
            root = Path(inductor_cache_dir())
            for name in kernels:
                write_file(root / name, archive.read(name), replace=False)
        self.kernels_loaded = set(kernels)
        return len(kernels)

    def save(self) -> None:
        """Saves what this process compiled, unless it loaded the archive and compiled nothing more.
        Never raises: a replica serves without saving."""
        if self.loaded and cache_misses() == self.misses_before and not self.built_kernels():
            return
        try:
            artifacts = torch.compiler.save_cache_artifacts()
            if artifacts is not None:
                self.saves.append(artifacts[0])
            if not self.saves:
                return
            # Those built here, and those loaded from this node's own cache (a warm node's).
            kernels = sorted(self.built_kernels() | kernels_in_use())
            write(self.location, self.file_name, self.pack(self.saves, kernels))
            logger.info("saved the compile cache %s (%d kernels)", self, len(kernels))
        except Exception as error:
            logger.warning("could not save the compile cache %s: %s", self, error)

    def built_kernels(self) -> set[str]:
        """The C++ kernels this process built: in the inductor cache, neither there before nor loaded."""
        return kernel_files() - self.kernels_before - self.kernels_loaded

    def pack(self, saves: list[bytes], kernels: list[str]) -> bytes:
        buffer, root = io.BytesIO(), Path(inductor_cache_dir())
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST, json.dumps(self.key_parts, sort_keys=True))
            for number, mega_cache in enumerate(saves):
                archive.writestr(f"mega-cache-{number}.bin", mega_cache)
            for name in kernels:
                archive.write(root / name, name)
        return buffer.getvalue()


def save_number(match: re.Match) -> int:
    return int(match.group(1))


def write_file(path: Path, data: bytes, replace: bool = True) -> None:
    """Writes by an atomic rename: a reader (another replica) never sees half a file."""
    if path.exists() and not replace:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(staging, 0o644)  # mkstemp's 0600 would hide it from the other users of a shared folder
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def read(location: str, name: str) -> bytes:
    """An archive's bytes; FileNotFoundError when there is none."""
    if not is_object_store_url(location):
        return (Path(location).expanduser() / name).read_bytes()
    import obstore
    from obstore.exceptions import NotFoundError

    try:
        return bytes(obstore.get(object_store(location), name).bytes())
    except NotFoundError:
        raise FileNotFoundError(name) from None


def write(location: str, name: str, data: bytes) -> None:
    if not is_object_store_url(location):
        write_file(Path(location).expanduser() / name, data)
        return
    import obstore

    obstore.put(object_store(location), name, data)  # a put is atomic: readers see all or nothing


def object_store(location: str) -> Any:
    """The store at an object-store URL, credentials and endpoint from the environment (as obstore
    reads them: AWS_*, GOOGLE_*, AZURE_*)."""
    from obstore.store import from_url

    # No client_options: given at all, they replace the environment's (AWS_ALLOW_HTTP).
    return from_url(location, retry_config=RETRY)
