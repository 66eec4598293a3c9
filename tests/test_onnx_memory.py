"""Building a low-bit session leaves no float copy of its weights behind in Python.

The deploy runtime expands bit-packed weights in numpy and hands them to
onnxruntime, which copies them while it builds the session (issue 19: a 2-bit
subsystem peaked above the float model). What a user relies on, without
timing or RSS thresholds: once ``runtime.onnx_session`` returns, no array it
expanded is still referenced; the model bytes onnxruntime's Python session
keeps for its lifetime hold the graph, not the weights; the session still
gives the bits of onnxruntime's own constant folding; and handing the heap's
free memory back is safe to call.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from helpers.toy_experiment import shared_toy_experiment

from espnet_allinone.deploy import expand, heap
from espnet_allinone.deploy.build import ensure_exported, export_dir_for
from espnet_allinone.deploy.runtime import onnx_session
from espnet_allinone.export.extract import Extractor


@pytest.fixture(scope="module")
def int2_file(tmp_path_factory):
    """A 2-bit subsystem exported with every Linear a float MatMul of its bit-packed weight
    (kernels "float"): the most the runtime expands."""
    paths = shared_toy_experiment()
    directory = Extractor(paths["config"], paths["model"]).extract(
        "d4-w1-int2", tmp_path_factory.mktemp("memory"), verify=False).directory
    ensure_exported(directory, kernels="float", log=lambda _m: None)
    return export_dir_for(directory) / "model.onnx"


def _feeds():
    rng = np.random.default_rng(0)
    return {"feats": rng.standard_normal((1, 120, 20), dtype=np.float32),
            "feats_lengths": np.array([120], dtype=np.int64)}


def test_no_expanded_weight_outlives_the_session_build(int2_file, monkeypatch):
    import onnx

    seen, original = [], expand.expand

    def recording(model, detach_bytes=None):
        result = original(model, detach_bytes)
        seen.append(result)
        return result

    monkeypatch.setattr(expand, "expand", recording)
    session = onnx_session(int2_file)
    monkeypatch.undo()
    (result,) = seen
    assert result is not None and result.nodes_evaluated > 0
    # the graph onnxruntime's Python session keeps holds no stored weight
    kept = onnx.load_from_string(result.model).graph.initializer
    stubs = {i.name for i in kept if i.data_location == onnx.TensorProto.EXTERNAL}
    assert stubs == set(result.names)
    assert all(len(i.raw_data) < expand.DETACH_BYTES for i in kept if i.name not in stubs)
    refs = [weakref.ref(a) for a in result.arrays]
    big = sum(a.nbytes for a in result.arrays)
    assert big > 100_000  # the float weights of the toy's 2-bit layers
    del result
    seen.clear()
    gc.collect()
    alive = [r for r in refs if r() is not None]
    assert not alive, f"{len(alive)} expanded arrays still referenced after the build"
    # still exactly onnxruntime's own folding of the packed file
    import onnxruntime as ort

    folded = ort.InferenceSession(str(int2_file), providers=["CPUExecutionProvider"])
    for a, b in zip(session.run(None, _feeds()), folded.run(None, _feeds())):
        assert a.tobytes() == b.tobytes()


def test_detached_initialisers_are_views_not_copies(int2_file):
    """Stored initialisers handed in memory are views of the file's bytes (no second copy
    in Python while onnxruntime copies them)."""
    data = int2_file.read_bytes()
    result = expand.expand(data, expand.DETACH_BYTES)
    produced = expand.expand(data)
    assert produced is not None and set(produced.names) < set(result.names)
    for name, array in zip(result.names, result.arrays):
        if name not in produced.names:
            assert array.nbytes >= expand.DETACH_BYTES
            assert not array.flags.owndata, name


def test_release_free_memory_is_safe():
    assert isinstance(heap.release_free_memory(), bool)
    assert isinstance(heap.release_free_memory(), bool)
