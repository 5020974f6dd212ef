"""The fused TensorFlow op called directly, and the op library's build cache.

Bad input raises InvalidArgumentError and leaves every variable unchanged (the
kernel validates everything before it writes). The cache: a corrupt cached
library (its SHA-256 no longer matches the manifest) is rebuilt; two
processes building into an empty cache at once both succeed, with one build.
Each fresh build takes ~20-30 s, so this file does exactly three (one of
them without the GPU glue, whose compile is made to fail).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from fusedopt.keras import _op_library

F64 = tf.float64
FTRL_HYPER_NAMES = ["learning_rate_power", "l1_regularization_strength", "l2_regularization_strength",
                    "l2_shrinkage_regularization_strength", "beta"]


@pytest.fixture(scope="module")
def lib():
    return _op_library.load()


def _variables(shape=(3, 4), n_states=2, dtype="float32"):
    rng = np.random.default_rng(0)
    param = tf.Variable(rng.normal(size=shape).astype(dtype))
    states = [tf.Variable(np.abs(rng.normal(size=shape)).astype(dtype)) for _ in range(n_states)]
    return param, states


def _adam_args(param, states, **overrides):
    args = dict(params=[param.handle], states=[s.handle for s in states],
                grads=[tf.ones_like(param)], hyper=tf.constant([0.9, 0.999, 1e-7], F64),
                learning_rate=tf.constant(0.01, F64), step=tf.constant(1, tf.int64),
                decay=tf.constant(0.0, F64), regularization=tf.zeros([3], F64),
                hyper_names=["beta_1", "beta_2", "epsilon"])
    args.update(overrides)
    return args


def test_direct_call_matches_keras_adam(lib):
    param, states = _variables(n_states=2)
    for s in states:
        s.assign(tf.zeros_like(s))
    reference = keras.Variable(param.numpy())
    opt = keras.optimizers.Adam(learning_rate=0.01)
    opt.apply_gradients([(tf.ones_like(param) * 0.5, reference)])
    lib.fusedopt_adam(**_adam_args(param, states, grads=[tf.ones_like(param) * 0.5]))
    np.testing.assert_allclose(param.numpy(), reference.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(states[0].numpy(), opt.variables[2].numpy(), rtol=1e-7)
    np.testing.assert_allclose(states[1].numpy(), opt.variables[3].numpy(), rtol=1e-7)


def _state_list_args(lib, param, states, listed=None, **overrides):
    """_adam_args with the slots as one FusedoptVariableList (of `listed`, default `states`)."""
    handle = lib.fusedopt_variable_list(variables=[v.handle for v in (states if listed is None else listed)])
    return dict(_adam_args(param, states, **overrides), states=[handle], state_list=True)


def test_state_list_matches_separate_handles(lib):
    """Slots given as one list handle: the same update, bit for bit, also after
    the slots are assigned anew (as a checkpoint restore does)."""
    results = []
    for listed in (False, True):
        p1, s1 = _variables(shape=(3, 4))
        p2, s2 = _variables(shape=(7,))
        states = [s1[0], s2[0], s1[1], s2[1]]  # slot-major
        grads = [tf.fill((3, 4), 0.25), tf.fill((7,), -0.5)]
        if listed:
            args = _state_list_args(lib, p1, states, grads=grads)
        else:
            args = _adam_args(p1, states, grads=grads)
        args["params"] = [p1.handle, p2.handle]
        def op():
            lib.fusedopt_adam(**args)

        op = tf.function(op)
        op()
        for s in states:
            s.assign(s * 0.5)
        op()
        results.append([v.numpy() for v in (p1, p2, *states)])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def _bad_cases():
    """(id, builder) -> (op name, kwargs, variables to check)."""
    def grad_shape(p, s):
        return "fusedopt_adam", _adam_args(p, s, grads=[tf.ones((4, 3))])

    def hyper_length(p, s):
        return "fusedopt_adam", _adam_args(p, s, hyper=tf.constant([0.9, 0.999], F64))

    def hyper_names_reordered(p, s):
        # Regression: the op took an unnamed vector checked only for its
        # length, so swapped betas would have run silently.
        return "fusedopt_adam", _adam_args(p, s, hyper=tf.constant([0.999, 0.9, 1e-7], F64),
                                           hyper_names=["beta_2", "beta_1", "epsilon"])

    def hyper_names_of_another_rule(p, s):
        return "fusedopt_adam", _adam_args(p, s, hyper_names=["rho", "momentum", "epsilon"])

    def negative_lr(p, s):
        return "fusedopt_adam", _adam_args(p, s, learning_rate=tf.constant(-0.01, F64))

    def nan_lr(p, s):
        return "fusedopt_adam", _adam_args(p, s, learning_rate=tf.constant(np.nan, F64))

    def same_variable_twice(p, s):
        return "fusedopt_adam", _adam_args(p, [s[0], s[0]])

    def param_as_its_own_slot(p, s):
        return "fusedopt_adam", _adam_args(p, [p, s[1]])

    def bad_beta(p, s):
        return "fusedopt_adam", _adam_args(p, s, hyper=tf.constant([1.5, 0.999, 1e-7], F64))

    def nan_hyper(p, s):
        return "fusedopt_adam", _adam_args(p, s, hyper=tf.constant([0.9, np.nan, 1e-7], F64))

    def step_zero(p, s):
        return "fusedopt_adam", _adam_args(p, s, step=tf.constant(0, tf.int64))

    def negative_decay(p, s):
        return "fusedopt_adam", _adam_args(p, s, decay=tf.constant(-1.0, F64))

    def negative_l2(p, s):
        return "fusedopt_adam", _adam_args(p, s, regularization=tf.constant([0.0, -1.0, 0.0], F64))

    def nan_proximal_l1(p, s):
        return "fusedopt_adam", _adam_args(p, s, regularization=tf.constant([0.0, 0.0, np.nan], F64))

    def regularization_length(p, s):
        return "fusedopt_adam", _adam_args(p, s, regularization=tf.zeros([2], F64))

    def slot_shape(p, s):
        other = tf.Variable(np.zeros((12,), "float32"))
        return "fusedopt_adam", _adam_args(p, [s[0], other])

    def grad_dtype(p, s):
        return "fusedopt_adam", _adam_args(p, s, grads=[tf.ones((3, 4), tf.float64)])

    def wrong_slot_count(p, s):
        return "fusedopt_adam", _adam_args(p, s[:1])

    def state_list_too_short(p, s):
        return "fusedopt_adam", _state_list_args(_op_library.load(), p, s, listed=s[:1])

    def state_list_holds_the_param(p, s):
        return "fusedopt_adam", _state_list_args(_op_library.load(), p, s, listed=[p, s[1]])

    def state_list_of_wrong_slot_shape(p, s):
        other = tf.Variable(np.zeros((12,), "float32"))
        return "fusedopt_adam", _state_list_args(_op_library.load(), p, s, listed=[s[0], other])

    def variable_handle_as_state_list(p, s):
        return "fusedopt_adam", dict(_adam_args(p, s), states=[s[0].handle], state_list=True)

    def two_handles_as_state_list(p, s):
        return "fusedopt_adam", _adam_args(p, s, state_list=True)

    def ftrl_zero_lr(p, s):
        return "fusedopt_ftrl", _adam_args(p, s, hyper=tf.constant([-0.5, 0.0, 0.0, 0.0, 0.0], F64),
                                           hyper_names=FTRL_HYPER_NAMES,
                                           learning_rate=tf.constant(0.0, F64))

    def second_tensor_bad(p, s):
        # The first tensor is fine: it must not be updated either.
        p2, s2 = _variables(shape=(5,))
        args = _adam_args(p, s)
        args.update(params=[p.handle, p2.handle],
                    states=[s[0].handle, s2[0].handle, s[1].handle, s2[1].handle],
                    grads=[tf.ones_like(p), tf.ones((6,))])
        return "fusedopt_adam", args

    return [grad_shape, hyper_length, hyper_names_reordered, hyper_names_of_another_rule, negative_lr, nan_lr, same_variable_twice, param_as_its_own_slot,
            bad_beta, nan_hyper, step_zero, negative_decay, negative_l2, nan_proximal_l1,
            regularization_length, slot_shape, grad_dtype, wrong_slot_count,
            state_list_too_short, state_list_holds_the_param, state_list_of_wrong_slot_shape,
            variable_handle_as_state_list, two_handles_as_state_list,
            ftrl_zero_lr, second_tensor_bad]


@pytest.mark.parametrize("mode", ["eager", "tf_function"])
@pytest.mark.parametrize("build", _bad_cases(), ids=lambda f: f.__name__)
def test_bad_input_raises_and_changes_nothing(lib, build, mode):
    param, states = _variables(n_states=2)
    everything = [param, *states]
    before = [v.numpy().copy() for v in everything]
    op_name, kwargs = build(param, states)
    op = getattr(lib, op_name)
    def call():
        op(**kwargs)

    # In a tf.function, what the shape function can see (a wrong rank or
    # length) is refused while tracing, as ValueError (as TF's own ops do);
    # the rest by the kernel when it runs.
    expected = tf.errors.InvalidArgumentError
    if mode == "tf_function":
        call = tf.function(call)
        expected = (tf.errors.InvalidArgumentError, ValueError)
    with pytest.raises(expected):
        call()
    for v, b in zip(everything, before):
        np.testing.assert_array_equal(v.numpy(), b)


# -- the op library cache ------------------------------------------------------------------------
BUILD_SCRIPT = textwrap.dedent(r"""
    import json
    import numpy as np
    import tensorflow as tf
    from fusedopt.keras import _op_library as L

    builds = []
    run = L.subprocess.run

    def counting_run(cmd, *args, **kwargs):
        if "-shared" in cmd:
            builds.append(1)
        return run(cmd, *args, **kwargs)

    L.subprocess.run = counting_run
    lib = L.load()
    p = tf.Variable(np.ones(4, "float32"))
    lib.fusedopt_sgd(params=[p.handle], states=[], grads=[tf.ones(4)], hyper=tf.zeros([0], tf.float64),
                     learning_rate=tf.constant(0.5, tf.float64), step=tf.constant(1, tf.int64),
                     decay=tf.constant(0.0, tf.float64), regularization=tf.zeros([3], tf.float64), hyper_names=[])
    print("REPORT" + json.dumps({"builds": len(builds), "path": L.status()["path"],
                                 "value": p.numpy().tolist()}))
""")


def _start(cache_dir):
    # (the cache's behaviour does not depend on the XLA kernels: built without them, a
    # minute less per build; tests/test_keras_xla.py builds and tests them)
    env = dict(os.environ, FUSEDOPT_CACHE_DIR=str(cache_dir), TF_CPP_MIN_LOG_LEVEL="2",
               FUSEDOPT_DISABLE_TF_XLA_KERNELS="1")
    env.pop("FUSEDOPT_DISABLE_TF_OPS", None)
    return subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=420):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err[-4000:]
    line = [ln for ln in out.splitlines() if ln.startswith("REPORT")][-1]
    return json.loads(line[len("REPORT"):])


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_cache_concurrent_build_and_corrupt_rebuild(tmp_path):
    cache = tmp_path / "cache"
    # Two processes, empty cache, at once: both succeed, one compiles, the other waits.
    reports = [_finish(p) for p in [_start(cache), _start(cache)]]
    assert sorted(r["builds"] for r in reports) == [0, 1], reports
    assert all(r["value"] == [0.5] * 4 for r in reports)
    assert reports[0]["path"] == reports[1]["path"]
    entries = [e for e in cache.iterdir() if e.is_dir()]
    assert len(entries) == 1
    lib_path = entries[0] / "fusedopt_tf_ops.so"
    manifest = entries[0] / "manifest.json"
    assert json.loads(manifest.read_text())["sha256"] == _sha256(lib_path)
    assert not list(entries[0].glob(".build-*")), "temporary build files left behind"

    # Corrupt the cached library in place: the manifest no longer matches, so it is rebuilt.
    data = bytearray(lib_path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = b"\xde\xad\xbe\xef" * 1024
    lib_path.write_bytes(bytes(data))
    corrupt_sha = _sha256(lib_path)
    report = _finish(_start(cache))
    assert report["builds"] == 1 and report["value"] == [0.5] * 4
    assert _sha256(lib_path) != corrupt_sha
    assert json.loads(manifest.read_text())["sha256"] == _sha256(lib_path)

    # A valid entry is reused as is.
    assert _finish(_start(cache))["builds"] == 0
    assert not list(entries[0].glob(".objects-*")), "object files left behind"


def test_gpu_and_xla_kernels_failing_to_compile_leave_a_cpu_library(tmp_path, monkeypatch):
    """Where the GPU glue or the XLA kernels (TensorFlow-internal APIs) do not compile,
    the library is built without them and the manifest says why (the CPU kernels never
    depend on them)."""
    monkeypatch.setenv("FUSEDOPT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(_op_library.DISABLE_XLA_KERNELS_ENV, raising=False)
    monkeypatch.setattr(_op_library, "gpu_kernels_wanted", lambda: True)
    compile_command = _op_library.compile_command

    def failing_optional_compile(source, output):
        if source in _op_library._GPU_SOURCES + _op_library._XLA_SOURCES:
            return [sys.executable, "-c", f"import sys; sys.exit('no {source} here')"]
        return compile_command(source, output)

    monkeypatch.setattr(_op_library, "compile_command", failing_optional_compile)
    path = _op_library.build()
    manifest = json.loads((path.parent / "manifest.json").read_text())
    for part, sources in (("gpu", _op_library._GPU_SOURCES), ("xla", _op_library._XLA_SOURCES)):
        assert manifest[f"{part}_kernels"] is False and f"no {sources[0]} here" in manifest[f"{part}_error"]
        assert not any(s in " ".join(manifest["command"]) for s in sources)
    assert "libtensorflow_cc" not in " ".join(manifest["command"])
    assert manifest["sha256"] == _sha256(path)
    # The library links and holds the CPU kernels (checked in a fresh process: this
    # one has the op library loaded already).
    code = (f"import tensorflow as tf; lib = tf.load_op_library({str(path)!r}); "
            "print('ops', hasattr(lib, 'fusedopt_adam'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert "ops True" in out.stdout, out.stderr[-3000:]
