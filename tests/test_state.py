"""state_dict()/load_state_dict() round trips (bitwise continuation), their
validation, and get_config() round trips."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from registry import (
    CASE_IDS,
    CASES,
    assert_same_bits,
    assert_states_same_bits,
    copies,
    grad_sequence,
    make_arrays,
    shapes_for,
    slot_copies,
)


def _setup(case, dtype=np.float32, steps=7, **overrides):
    shapes = shapes_for(case, "list")
    seed = zlib.crc32(f"state/{case.id}".encode())
    params = make_arrays(shapes, dtype, np.random.default_rng(seed))
    return params, grad_sequence(shapes, dtype, seed + 1, steps), case.make(params, **overrides)


@pytest.mark.parametrize("schedule", [False, True], ids=["constant-lr", "schedule"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_state_dict_round_trip_continues_bitwise(case, schedule):
    base = case.kwargs.get("learning_rate", 0.01)
    overrides = {"learning_rate": (lambda step: base * 0.9 ** step)} if schedule else {}
    params, grads, opt = _setup(case, **overrides)
    for g in grads[:3]:
        opt.step(g)
    saved = opt.state_dict()
    saved_params = copies(params)
    assert saved["iterations"] == 3
    assert list(saved["slots"]) == list(opt.slots)
    for name, arrays in saved["slots"].items():
        for a, live in zip(arrays, opt.slots[name]):
            assert (a is None) == (live is None)
            if a is not None:
                assert not np.shares_memory(a, live), "state_dict must copy"
    frozen = slot_copies(saved["slots"])

    for g in grads[3:]:
        opt.step(g)
    for name in frozen:  # continuing did not touch the saved copy
        for a, b in zip(saved["slots"][name], frozen[name]):
            if a is not None:
                assert_same_bits(a, b, f"saved {name}")

    fresh_params = copies(saved_params)
    fresh = case.make(fresh_params, **overrides)
    fresh.load_state_dict(saved)
    assert fresh.iterations == 3
    assert fresh.state_dict()["extra"] == saved["extra"]
    for g in grads[3:]:
        fresh.step(g)
    assert fresh.iterations == opt.iterations == len(grads)
    assert_states_same_bits(fresh, opt, "loaded optimizer vs original")
    assert fresh.state_dict()["extra"] == opt.state_dict()["extra"]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bad_state_dict_changes_nothing(case):
    params, grads, opt = _setup(case, steps=2)
    for g in grads:
        opt.step(g)
    good = opt.state_dict()
    slot = next(iter(opt.slots), None)

    def variants():
        yield TypeError, "mapping", [1, 2]
        yield TypeError, "iterations", {"slots": good["slots"]}
        yield ValueError, "iterations", {**good, "iterations": -1}
        yield ValueError, "iterations", {**good, "iterations": 1.5}
        yield ValueError, "slots", {**good, "slots": {**good["slots"], "bogus": []}}
        yield ValueError, "extra", {**good, "extra": {**good["extra"], "bogus": 1.0}}
        if slot is not None:
            arrays = good["slots"][slot]
            i = next(k for k, a in enumerate(arrays) if a is not None and a.size > 1)
            bad_shape = copies(arrays)
            bad_shape[i] = np.zeros(arrays[i].size + 1, arrays[i].dtype)
            yield ValueError, rf"{slot}.*\[{i}\].*shape", {**good, "slots": {**good["slots"], slot: bad_shape}}
            non_finite = copies(arrays)
            non_finite[i] = non_finite[i].copy()
            non_finite[i].flat[0] = np.nan
            yield ValueError, rf"{slot}.*\[{i}\].*non-finite", {**good, "slots": {**good["slots"], slot: non_finite}}
            yield ValueError, slot, {**good, "slots": {**good["slots"], slot: arrays[:-1]}}
            # Every array is checked before any is written: a bad last array
            # must leave the earlier ones alone.
            last_bad = copies(arrays)
            last_bad[-1] = np.zeros(np.size(arrays[-1]) + 3)
            zeros_first = [None if a is None else np.zeros_like(a) for a in last_bad[:-1]]
            yield ValueError, slot, {**good, "slots": {**good["slots"], slot: zeros_first + [last_bad[-1]]}}

    for exc, match, state in variants():
        before_slots = slot_copies(opt.slots)
        before_params = copies(params)
        with pytest.raises(exc, match=match):
            opt.load_state_dict(state)
        assert opt.iterations == 2
        assert opt.state_dict()["extra"] == good["extra"]
        for name in before_slots:
            for a, b in zip(opt.slots[name], before_slots[name]):
                if a is not None:
                    assert_same_bits(a, b, f"{name} after rejected state")
        for a, b in zip(params, before_params):
            assert_same_bits(a, b, "params after rejected state")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_get_config_round_trip(case):
    params, grads, opt = _setup(case, steps=3)
    config = opt.get_config()
    for key, value in case.kwargs.items():
        assert config[key] == value, key
    for key in ("learning_rate", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "name"):
        assert key in config
    twin_params = copies(params)
    twin = case.cls(twin_params, **config)
    assert twin.get_config() == config
    for g in grads:
        opt.step(g)
        twin.step(g)
    assert_states_same_bits(twin, opt, "optimizer rebuilt from get_config()")


def test_get_config_keeps_a_callable_learning_rate():
    from fusedopt import Adam

    def schedule(step):
        return 0.1 / (1 + step)

    opt = Adam([np.zeros(3, np.float32)], learning_rate=schedule)
    assert opt.get_config()["learning_rate"] is schedule
    assert opt.learning_rate == pytest.approx(0.1)
