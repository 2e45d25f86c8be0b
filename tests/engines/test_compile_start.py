"""A compiled SDXL replica on a new node, end to end: each replica start is a fresh process
(benchmarks.compile_start's `replica`) with an empty inductor cache folder of its own, sharing one
compile cache folder. The first compiled start draws eager's image within 2/255; the second compiles
no graph, builds no kernel and draws the first one's image."""

import argparse

import numpy as np
import pytest

from benchmarks.compile_start import start

FAST = '{"fuse_qkv": true, "channels_last": true}'  # the fast path's other options, as in production


@pytest.mark.integration  # three replica starts in fresh processes, inductor on the CPU: about 90 s
def test_a_replica_on_a_new_node_loads_the_compile_cache_instead_of_compiling(tmp_path, tiny_models):
    model, cache = str(tiny_models["sdxl"]), tmp_path / "cache"
    replica = argparse.Namespace(size=64, buckets=[1, 2])
    start("eager", model, replica, cache, tmp_path / "eager.npy")
    cold = start("regional", model, replica, cache, tmp_path / "cold.npy", FAST)
    assert np.abs(np.load(tmp_path / "cold.npy") - np.load(tmp_path / "eager.npy")).max() <= 2 / 255
    assert not cold["cache_loaded"] and cold["kernels_built"] > 0
    graphs = cold["inductor"]["fxgraph_cache_miss"]
    assert graphs > 0 and len(list(cache.glob("sdxl-*.zip"))) == 1

    new_node = start("regional", model, replica, cache, tmp_path / "new-node.npy", FAST)
    assert new_node["cache_loaded"]
    assert new_node["inductor"].get("fxgraph_cache_miss", 0) == 0  # dynamo/inductor: no graph from scratch
    assert new_node["inductor"]["fxgraph_cache_hit"] == graphs
    assert new_node["aot_autograd"].get("autograd_cache_miss", 0) == 0
    assert new_node["kernels_built"] == 0 and new_node["kernels_loaded"] == cold["kernels_built"]
    assert np.array_equal(np.load(tmp_path / "new-node.npy"), np.load(tmp_path / "cold.npy"))
