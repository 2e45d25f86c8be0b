"""The device check runs end to end on any machine with the tiny models (a GPU machine's session has
minutes: it must not meet its first bug there)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.integration  # a subprocess loading both tiny models: about 20 s
def test_the_gpu_check_runs_on_the_cpu_with_the_tiny_models(tmp_path):
    sections = "sdxl:eager,musicgen:eager,musicgen:cuda_graphs"  # graphs: eager on a CPU
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--only", sections, "--steps", "2"]
    finished = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = results["sdxl"] + results["musicgen"]
    assert {row["variant"] for row in rows} == {"eager", "cuda_graphs"}
    assert all(row.get("finite") is True and row["seconds"] > 0 for row in rows), rows
    assert results["musicgen_cuda_graphs_vs_eager_greedy_max_diff"] == 0.0
    stream = results["musicgen_stream"]
    assert (
        stream["same_length"] and stream["snr_db"] >= 30 and 0 < stream["first_chunk_s"] < stream["whole_s"]
    )
    assert results["musicgen_host_sync"]["host_syncs"] in ("none", "no CUDA device")
    assert results["musicgen_seeded_solo_vs_batched"]["equal"]  # on the CPU, sample for sample
    assert [row["prefill"] for row in results["musicgen_prefill"]["prefills"]][-1].startswith("next window")
