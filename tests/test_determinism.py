"""Results are bitwise identical for every thread count and every ISA, on sizes
that split into several 65536-element chunks and cross the parallel threshold;
and those large, multi-chunk runs are still right (checked against the reference)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import fusedopt
from fusedopt import _core
from reference import Reference
from registry import (
    CASE_IDS,
    CASES,
    DTYPES,
    MANY_SHAPES,
    NUM_STEPS,
    PARALLEL_SHAPES,
    assert_lists_close,
    assert_states_same_bits,
    grad_sequence,
    make_arrays,
)

LAYOUTS = {"parallel": PARALLEL_SHAPES, "many": MANY_SHAPES}


def test_shapes_really_exercise_chunks_and_threads():
    chunk = _core.chunk_elements
    assert chunk == 65536
    for kind, shapes in PARALLEL_SHAPES.items():
        sizes = [int(np.prod(s)) for s in shapes]
        assert max(sizes) > chunk, kind  # one tensor spans several chunks
        assert sum(sizes) > 32768, kind  # above the parallel threshold
    for kind, shapes in MANY_SHAPES.items():
        assert len(shapes) >= 1000 and sum(int(np.prod(s)) for s in shapes) > 32768, kind


def _run(case, shapes, dtype, seed, steps=NUM_STEPS):
    rng = np.random.default_rng(seed)
    params = make_arrays(shapes, dtype, rng)
    opt = case.make(params)
    for grads in grad_sequence(shapes, dtype, seed + 1, steps):
        opt.step(grads)
    return opt


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_thread_count_does_not_change_bits(case, layout, dtype):
    shapes = LAYOUTS[layout][case.kind]
    seed = zlib.crc32(f"threads/{case.id}/{layout}".encode())
    fusedopt.set_num_threads(1)
    assert fusedopt.get_num_threads() == 1
    single = _run(case, shapes, dtype, seed)
    start = make_arrays(shapes, dtype, np.random.default_rng(seed))
    assert any(not np.array_equal(p, p0) for p, p0 in zip(single.params, start))
    for threads in (2, 3):
        fusedopt.set_num_threads(threads)
        assert fusedopt.get_num_threads() == threads
        assert_states_same_bits(_run(case, shapes, dtype, seed), single, f"{threads} threads vs 1")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_isa_gives_the_same_bits(case, dtype):
    isas = _core.available_isas()
    assert "baseline" in isas and _core.active_isa() in isas
    shapes = PARALLEL_SHAPES[case.kind] + [(7,), (1,)]  # vector tails too
    seed = zlib.crc32(f"isa/{case.id}".encode())
    results = {}
    for isa in isas:
        _core.set_isa(isa)
        assert _core.active_isa() == isa
        results[isa] = _run(case, shapes, dtype, seed, steps=4)
    for isa in isas[1:]:
        assert_states_same_bits(results[isa], results[isas[0]], f"{isa} vs {isas[0]}")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_multi_chunk_run_matches_reference(case):
    """Chunk boundaries, task grouping and the per-tensor reductions (Lamb,
    Adafactor) on the large shapes, with threads: still the reference's numbers."""
    fusedopt.set_num_threads(2)
    shapes = PARALLEL_SHAPES[case.kind]
    rng = np.random.default_rng(5)
    params = make_arrays(shapes, np.float64, rng)
    ref = Reference(case.cls.__name__, case.kwargs, params)
    opt = case.make(params)
    for grads in grad_sequence(shapes, np.float64, 6, steps=2):
        opt.step(grads)
        ref.step(grads)
    assert_lists_close(params, ref.params, np.float64, "params")
    for name in ref.slots:
        assert_lists_close(opt.slots[name], ref.slots[name], np.float64, name)


def test_engine_controls_validate():
    with pytest.raises(ValueError, match="num_threads"):
        fusedopt.set_num_threads(0)
    with pytest.raises(TypeError, match="num_threads"):
        fusedopt.set_num_threads("2")
    with pytest.raises(TypeError, match="num_threads"):
        fusedopt.set_num_threads(True)
    with pytest.raises(ValueError, match="ISA"):
        _core.set_isa("not-an-isa")
    info = fusedopt.build_info()
    assert info["isa"] == _core.active_isa()
    assert info["available_isas"] == _core.available_isas()
    assert info["num_threads"] == fusedopt.get_num_threads()
    assert info["chunk_elements"] == _core.chunk_elements
