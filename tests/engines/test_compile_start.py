"""A compiled SDXL replica on a new node, end to end: each replica start is a fresh process
(benchmarks.compile_start's `replica`) with an empty inductor cache folder of its own, sharing one
compile cache folder. The second start compiles no graph and builds no kernel, and draws the same
image."""

import argparse

import numpy as np
import pytest

from benchmarks.compile_start import start


@pytest.mark.integration  # two replica starts in fresh processes, inductor on the CPU: about 80 s
def test_a_replica_on_a_new_node_loads_the_compile_cache_instead_of_compiling(tmp_path, tiny_models):
    model, cache, replica = (
        str(tiny_models["sdxl"]),
        tmp_path / "cache",
        argparse.Namespace(size=64, buckets=[1, 2]),
    )
    cold = start("regional", model, replica, cache, tmp_path / "cold.npy")
    assert not cold["cache_loaded"] and cold["kernels_built"] > 0
    graphs = cold["inductor"]["fxgraph_cache_miss"]
    assert graphs > 0 and len(list(cache.glob("sdxl-*.zip"))) == 1

    new_node = start("regional", model, replica, cache, tmp_path / "new-node.npy")
    assert new_node["cache_loaded"]
    assert new_node["inductor"].get("fxgraph_cache_miss", 0) == 0  # dynamo/inductor: no graph from scratch
    assert new_node["inductor"]["fxgraph_cache_hit"] == graphs
    assert new_node["aot_autograd"].get("autograd_cache_miss", 0) == 0
    assert new_node["kernels_built"] == 0 and new_node["kernels_loaded"] == cold["kernels_built"]
    assert np.array_equal(np.load(tmp_path / "new-node.npy"), np.load(tmp_path / "cold.npy"))
