"""The PyTorch I3D port against logits of the original Flax model (tests/fixtures/i3d_reference.npz).

Relative error = max |ours - reference| / max |reference| over a case's logits. The port reaches
~2e-6 (float32 rounding), so TOL = 1e-5 leaves a 5x margin and still catches porting bugs of the
size of a wrong batch-norm epsilon (1.4e-3) by two orders of magnitude.
"""
import io
import os
import pickle
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from osplab.metrics import i3d

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from i3d_recipe import make_clips, summary  # noqa: E402

REF = np.load(FIXTURES / "i3d_reference.npz")
TOL = 1e-5


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OSPLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield i3d.load_i3d()


def case_inputs(name: str) -> torch.Tensor:
    clips = make_clips(*REF[f"{name}_recipe"].tolist())
    # The recipe must rebuild exactly the inputs the reference saw.
    np.testing.assert_allclose(summary(clips), REF[f"{name}_summary"], rtol=0, atol=1e-6)
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).contiguous()  # (N, 3, T, H, W)


def rel_err(out: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(out.numpy() - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", ["main", "odd"])
def test_logits_match_flax_reference(model, name):
    with torch.inference_mode():
        out = model(case_inputs(name))
    ref = REF[f"{name}_logits"]
    assert out.shape == ref.shape
    assert rel_err(out, ref) < TOL
    assert np.array_equal(out.numpy().argmax(1), ref.argmax(1))


def test_batch_norm_epsilon_bug_would_fail_the_match(model, monkeypatch):
    """Negative control: epsilon 1e-4 instead of Sonnet's 1e-3 keeps every argmax but misses TOL."""
    monkeypatch.setattr(i3d, "BN_EPS", 1e-4)
    wrong = i3d.load_i3d()
    with torch.inference_mode():
        out = wrong(case_inputs("main"))
    err = rel_err(out, REF["main_logits"])
    assert err > 100 * TOL, err
    assert np.array_equal(out.numpy().argmax(1), REF["main_logits"].argmax(1))  # the argmax alone would pass


def test_symmetric_padding_would_fail_the_match(model, monkeypatch):
    """Negative control: the reference test sees where the odd padding pixel goes (TF: at the end)."""
    same_pads = i3d.same_pads
    monkeypatch.setattr(i3d, "same_pads", lambda n, k, s: same_pads(n, k, s)[::-1])
    with torch.inference_mode():
        out = model(case_inputs("odd"))
    assert rel_err(out, REF["odd_logits"]) > 100 * TOL


@pytest.mark.parametrize("size,k,s,pads", [(224, 7, 2, (2, 3)), (16, 7, 2, (2, 3)), (112, 3, 2, (0, 1)),
                                           (25, 3, 2, (1, 1)), (13, 2, 2, (0, 1)), (4, 2, 2, (0, 0)),
                                           (14, 3, 1, (1, 1))])
def test_same_pads(size, k, s, pads):
    assert i3d.same_pads(size, k, s) == pads


def test_cache_named_by_source_hash_and_reused(model):
    from safetensors import safe_open

    path, sha = i3d.cached_weights()
    assert sha == model.weights_sha256 == str(REF["ckpt_sha256"])
    assert path.name == f"i3d-kinetics-400-{sha[:16]}.safetensors"
    with safe_open(str(path), "np") as f:
        assert f.metadata()["source_sha256"] == sha
        assert f.get_tensor("batch_stats/Conv3d_1a_7x7/BatchNorm_0/var").shape == (64,)
    mtime = path.stat().st_mtime_ns
    assert i3d.cached_weights()[0] == path and path.stat().st_mtime_ns == mtime


def test_cache_rebuild_is_atomic_and_world_readable(tmp_path, monkeypatch):
    monkeypatch.setenv("OSPLAB_CACHE", str(tmp_path))
    path, _ = i3d.cached_weights()
    assert path.parent == tmp_path / "i3d" and [p.name for p in path.parent.iterdir()] == [path.name]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600: the cache is shared


def test_module_is_frozen_eval(model):
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    from safetensors import safe_open

    with safe_open(str(i3d.cached_weights()[0]), "np") as f:  # batch-norm biases become conv biases
        n_flax = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys() if k.startswith("params/"))
    assert sum(p.numel() for p in model.parameters()) == n_flax


def test_bad_shapes_get_clear_errors(model):
    with pytest.raises(ValueError, match="at least 9 frames"):
        model(torch.zeros(1, 3, 8, 224, 224))
    with pytest.raises(ValueError, match="RGB"):
        model(torch.zeros(1, 16, 3, 224, 224))


def _pickle(obj) -> io.BytesIO:
    return io.BytesIO(pickle.dumps(obj, protocol=4))


def test_unpickler_rebuilds_nested_arrays():
    tree = {"params": {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.ones(2, np.float64)}
    got = i3d.NumpyOnlyUnpickler(_pickle(tree)).load()
    np.testing.assert_array_equal(got["params"]["a"], tree["params"]["a"])


def test_unpickler_refuses_other_globals():
    with pytest.raises(pickle.UnpicklingError, match="collections.OrderedDict"):
        i3d.NumpyOnlyUnpickler(_pickle({"a": OrderedDict(x=np.zeros(2))})).load()
    with pytest.raises(pickle.UnpicklingError, match="posix.system|nt.system"):
        i3d.NumpyOnlyUnpickler(_pickle({"evil": __import__("os").system})).load()


def test_read_checkpoint_refuses_non_float_arrays(tmp_path):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(pickle.dumps({"params": {"x": np.array(["a", "b"])}}))
    with pytest.raises(ValueError, match="params/x"):
        i3d.read_checkpoint(path)
