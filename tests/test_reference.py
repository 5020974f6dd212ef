"""Every registry case against the float64 NumPy reference, after each step:
params and every slot, on sizes that hit vector tails, one tensor, a list of
tensors and a thousand tiny tensors, float32 and float64."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import fusedopt

from reference import Reference
from registry import (
    CASE_IDS,
    CASES,
    DTYPES,
    LAYOUTS,
    NUM_STEPS,
    assert_lists_close,
    grad_sequence,
    make_arrays,
    shapes_for,
)


def seed_of(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def check_against_reference(case, shapes, dtype, seed, steps=NUM_STEPS, **overrides):
    rng = np.random.default_rng(seed)
    params = make_arrays(shapes, dtype, rng)
    initial = [p.copy() for p in params]
    kwargs = {**case.kwargs, **overrides}
    ref = Reference(case.cls.__name__, kwargs, params)
    opt = case.cls(params, **kwargs)
    assert opt.params[0] is params[0] or np.shares_memory(opt.params[0], params[0])
    assert list(opt.slots) == list(ref.slots), "slot names / Keras order"
    for name in ref.slots:
        assert_lists_close(opt.slots[name], ref.slots[name], dtype, f"initial slots[{name!r}]")
    for t, grads in enumerate(grad_sequence(shapes, dtype, seed + 1, steps), start=1):
        opt.step(grads)
        ref.step(grads)
        assert opt.iterations == ref.iterations == t
        assert all(p.dtype == dtype for p in opt.params)
        assert_lists_close(params, ref.params, dtype, f"step {t}: params")
        for name in ref.slots:
            assert all(s is None or s.dtype == dtype for s in opt.slots[name])
            assert_lists_close(opt.slots[name], ref.slots[name], dtype, f"step {t}: slots[{name!r}]")
        if case.cls.__name__ == "Nadam":
            assert opt.state_dict()["extra"]["u_product"] == pytest.approx(ref.u_product, rel=1e-14)
    # The updates really happened, in place in the caller's arrays.
    assert any(not np.array_equal(p, p0) for p, p0 in zip(params, initial))
    return opt, ref


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_reference_after_each_step(case, layout, dtype):
    check_against_reference(case, shapes_for(case, layout), dtype, seed_of(case.id, layout, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_learning_rate_schedule_matches_reference(case, dtype):
    """A callable learning rate is evaluated at `iterations` (Keras: the schedule
    is called with the iteration count before the step); weight decay uses it too."""
    base = case.kwargs.get("learning_rate", 0.01)

    def schedule(step):
        return base * (1.5 if step < 2 else 0.8 ** step)

    opt, _ = check_against_reference(case, shapes_for(case, "list"), dtype,
                                     seed_of("schedule", case.id, dtype), learning_rate=schedule)
    assert opt.learning_rate == pytest.approx(schedule(NUM_STEPS))


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "muon"], ids=lambda c: c.id)
def test_muon_use_adam_override_matches_reference(case):
    """use_adam (our stand-in for Keras's path-based exclusions) sends a 2-D
    parameter through the Adam branch."""
    shapes = [(4, 8), (6, 3), (5,)]
    use_adam = [False, True, True]
    rng = np.random.default_rng(7)
    params = make_arrays(shapes, np.float64, rng)
    ref = Reference("Muon", case.kwargs, params, use_adam=use_adam)
    opt = case.make(params, use_adam=use_adam)
    assert [s is None for s in opt.slots["velocity"]] == [True, False, False]
    for grads in grad_sequence(shapes, np.float64, 8):
        opt.step(grads)
        ref.step(grads)
        assert_lists_close(params, ref.params, np.float64, "params")
        for name in ref.slots:
            assert_lists_close(opt.slots[name], ref.slots[name], np.float64, name)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_zero_size_tensors_are_carried_along(case):
    """Zero-size tensors in the list are accepted and left empty; the other
    tensors still match the reference computed without them."""
    shapes = [(0,), (3, 5), (0,), (4,)]
    if case.kind != "adafactor":  # Adafactor: r/c of a (0, n) matrix have no Keras meaning
        shapes.append((0, 3))
    rng = np.random.default_rng(seed_of("empty", case.id))
    params = make_arrays(shapes, np.float64, rng)
    keep = [i for i, s in enumerate(shapes) if np.prod(s) > 0]
    ref = Reference(case.cls.__name__, case.kwargs, [params[i] for i in keep])
    opt = case.make(params)
    for grads in grad_sequence(shapes, np.float64, 3, steps=3):
        opt.step(grads)
        ref.step([grads[i] for i in keep])
    assert [p.shape for p in params] == shapes
    assert_lists_close([params[i] for i in keep], ref.params, np.float64, "params")
    for name in ref.slots:
        assert_lists_close([opt.slots[name][i] for i in keep], ref.slots[name], np.float64, name)


@pytest.mark.parametrize("shape", [(5,), (4097,), ()])
def test_adafactor_unfactored_updates_every_element(shape):
    """Regression: Adafactor on a rank < 2 parameter updated only element 0.

    The bindings left the [batch, rows, cols] view at its default 1 x 1 x 1
    for unfactored tensors, so the kernel's loop ran over one element; every
    other element kept a zero velocity and never moved. No test existed, and
    single-tensor runs used matrices only.
    """
    rng = np.random.default_rng(11)
    p = rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    ref = Reference("Adafactor", {"learning_rate": 0.01}, [p])
    opt = fusedopt.Adafactor([p], learning_rate=0.01)
    before = p.copy()
    opt.step([g])
    ref.step([g])
    assert np.all(p != before)
    assert np.all(opt.slots["velocity"][0] > 0)
    assert_lists_close([p], ref.params, np.float64, "params")
    assert_lists_close(opt.slots["velocity"], ref.slots["velocity"], np.float64, "velocity")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_zero_params_and_zero_grads_match_reference(case):
    """Degenerate values: all-zero params (Lamb's trust ratio falls back to 1,
    Adafactor's rms(p) to epsilon_2) and all-zero grads for the first steps
    (Muon orthogonalizes a zero matrix, Lion takes sign(0) = 0)."""
    shapes = shapes_for(case, "list")
    params = [np.zeros(s) for s in shapes]
    ref = Reference(case.cls.__name__, case.kwargs, params)
    opt = case.make(params)
    grads = [[np.zeros(s) for s in shapes]] * 2 + grad_sequence(shapes, np.float64, 12, steps=3)
    for t, g in enumerate(grads, start=1):
        opt.step(g)
        ref.step(g)
        assert all(np.all(np.isfinite(p)) for p in params), f"step {t}"
        assert_lists_close(params, ref.params, np.float64, f"step {t}: params")
        for name in ref.slots:
            assert_lists_close(opt.slots[name], ref.slots[name], np.float64, f"step {t}: {name}")


def test_registry_covers_every_optimizer_variant_and_weight_decay():
    import fusedopt.ops as F

    classes = {getattr(fusedopt, n) for n in fusedopt.__all__
               if isinstance(getattr(fusedopt, n), type) and n != "Optimizer"}
    assert classes == {c.cls for c in CASES}
    for cls in classes:
        decayed = [c for c in CASES if c.cls is cls and c.make([np.zeros(3)]).weight_decay]
        assert decayed, f"{cls.__name__} has no case with weight decay"
    rules = {c.make([np.zeros((2, 2)), np.zeros(3)])._rule for c in CASES if c.kind != "muon"}
    assert rules | {"muon_momentum"} == set(F.RULES)
    assert {c.kind for c in CASES if c.cls is fusedopt.Muon} == {"muon"}
    assert any(c.kwargs.get("learning_rate_power", -0.5) != -0.5 and c.kwargs.get("beta")
               for c in CASES if c.cls is fusedopt.Ftrl)
    assert any(c.kwargs.get("warmup_steps") for c in CASES if c.cls is fusedopt.ScheduleFreeAdamW)
