"""Big buffers freed by the ingress go back to the operating system (leap_ray.serve.memory)."""

import platform
import subprocess
import sys

import pytest

# Four threads each make 20 bodies of about 24 MB, keeping a small object made after each (as a
# request leaves a log line or a job record behind); the MB of RSS the process has kept after.
KEPT_AFTER_BODIES = """
import sys, threading, psutil
from leap_ray.serve.memory import return_big_buffers
if sys.argv[1] == "fixed":
    assert return_big_buffers()
kept = []
def requests():
    for index in range(20):
        body = bytearray(24_000_000 + index * 1000)
        kept.append(bytes(1000))
        del body
before = psutil.Process().memory_info().rss
threads = [threading.Thread(target=requests) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print((psutil.Process().memory_info().rss - before) / 2**20)
"""


def kept_mb(mode: str) -> float:
    run = subprocess.run([sys.executable, "-c", KEPT_AFTER_BODIES, mode], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return float(run.stdout)


# In a process of its own: the setting lasts for the process.
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a setting of glibc's malloc")
def test_freed_bodies_are_given_back_once_the_mmap_threshold_is_fixed():
    if kept_mb("default") < 48:  # less than two bodies: this allocator gives them back anyway
        pytest.skip("this C library's malloc returns freed big buffers without being told")
    assert kept_mb("fixed") < 24  # not one body's worth
