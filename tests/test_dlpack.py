"""DLPack CPU tensors (PyTorch): optimizers and kernels update them in place,
without copies, with the same bits as a NumPy run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fusedopt
import fusedopt.ops as F
from registry import CASE_IDS, CASES, DTYPES, assert_same_bits, copies, grad_sequence, make_arrays, shapes_for

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_optimizer_updates_torch_tensors_in_place(case, dtype):
    shapes = shapes_for(case, "list")
    start = make_arrays(shapes, dtype, np.random.default_rng(8))
    tensors = [torch.from_numpy(a.copy()) for a in start]
    assert all(t.dtype == TORCH_DTYPE[dtype] for t in tensors)
    pointers = [t.data_ptr() for t in tensors]
    np_params = copies(start)
    opt = case.make(tensors)
    np_opt = case.make(np_params)
    for i, (p, t) in enumerate(zip(opt.params, tensors)):  # views, not copies
        assert p.ctypes.data == t.data_ptr(), f"params[{i}] was copied"
    for grads in grad_sequence(shapes, dtype, 9):
        opt.step([torch.from_numpy(g.copy()) for g in grads])
        np_opt.step(grads)
    assert [t.data_ptr() for t in tensors] == pointers
    assert any(not np.array_equal(t.numpy(), a) for t, a in zip(tensors, start)), "tensors changed"
    for i, (t, a) in enumerate(zip(tensors, np_params)):
        assert_same_bits(t.numpy(), a, f"torch params[{i}] vs NumPy run")
    for name in opt.slots:
        for i, (s, q) in enumerate(zip(opt.slots[name], np_opt.slots[name])):
            if s is not None:
                assert_same_bits(s, q, f"{name}[{i}]")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_kernel_updates_torch_params_and_states_in_place(dtype):
    shapes = [(33,), (4, 8), (2, 3, 5)]
    start = make_arrays(shapes, dtype, np.random.default_rng(10))
    tp = [torch.from_numpy(a.copy()) for a in start]
    tm = [torch.zeros(s, dtype=TORCH_DTYPE[dtype]) for s in shapes]
    tv = [torch.zeros(s, dtype=TORCH_DTYPE[dtype]) for s in shapes]
    pointers = [t.data_ptr() for t in tp + tm + tv]
    np_p, np_m, np_v = copies(start), [np.zeros(s, dtype) for s in shapes], [np.zeros(s, dtype) for s in shapes]
    for step, grads in enumerate(grad_sequence(shapes, dtype, 11), start=1):
        F.adam_(tp, [torch.from_numpy(g) for g in grads], tm, tv, learning_rate=0.01, step=step,
                weight_decay=0.02)
        F.adam_(np_p, grads, np_m, np_v, learning_rate=0.01, step=step, weight_decay=0.02)
    assert [t.data_ptr() for t in tp + tm + tv] == pointers
    for t, a in zip(tp + tm + tv, np_p + np_m + np_v):
        assert_same_bits(t.numpy(), a, "torch vs NumPy")
    assert not np.array_equal(tp[0].numpy(), start[0])


def _snapshot(tensors):
    return [t.detach().clone() for t in tensors]


def _unchanged(tensors, saved):
    for t, s in zip(tensors, saved):
        assert torch.equal(t.detach(), s)


@pytest.mark.parametrize("bad, exc, match", [
    ("requires-grad", TypeError, r"params\[1\].*DLPack"),
    ("non-contiguous", ValueError, r"params\[1\].*contiguous"),
    ("transposed", ValueError, r"params\[1\].*contiguous"),
    ("float16", TypeError, r"params\[1\].*float16"),
    ("int64", TypeError, r"params\[1\].*int64"),
    ("bfloat16", TypeError, r"params\[1\]"),
])
def test_bad_torch_params_are_rejected(bad, exc, match):
    good = torch.ones(3, 4)
    second = {
        "requires-grad": lambda: torch.ones(3, 4, requires_grad=True),
        "non-contiguous": lambda: torch.ones(3, 8)[:, ::2],
        "transposed": lambda: torch.ones(4, 3).T,
        "float16": lambda: torch.ones(3, 4, dtype=torch.float16),
        "int64": lambda: torch.ones(3, 4, dtype=torch.int64),
        "bfloat16": lambda: torch.ones(3, 4, dtype=torch.bfloat16),
    }[bad]()
    saved = _snapshot([good, second])
    with pytest.raises(exc, match=match):
        fusedopt.Adam([good, second])
    _unchanged([good, second], saved)


def test_bad_torch_grads_are_rejected_and_change_nothing():
    params = [torch.ones(5), torch.ones(3, 4)]
    opt = fusedopt.Adam(params, learning_rate=0.1)
    opt.step([torch.full((5,), 0.5), torch.full((3, 4), 0.5)])
    for grads, exc, match in [
        ([torch.ones(5), torch.ones(3, 4, requires_grad=True)], TypeError, r"grads\[1\].*DLPack"),
        ([torch.ones(5), torch.ones(3, 4, dtype=torch.float64)], TypeError, r"grads\[1\].*float64"),
        ([torch.ones(5), torch.ones(4, 3)], ValueError, r"grads\[1\].*shape"),
        ([torch.ones(10)[::2], torch.ones(3, 4)], ValueError, r"grads\[0\].*contiguous"),
        ([params[0], torch.ones(3, 4)], ValueError, r"shares memory"),
        (torch.ones(5), TypeError, r"grads must be a list"),
    ]:
        saved = _snapshot(params) + [s.copy() for v in opt.slots.values() for s in v]
        with pytest.raises(exc, match=match):
            opt.step(grads)
        _unchanged(params, saved[:2])
        for s, s0 in zip([s for v in opt.slots.values() for s in v], saved[2:]):
            assert_same_bits(s, s0, "slot")
        assert opt.iterations == 1
