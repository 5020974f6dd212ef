"""Regression tests for the ways fusedopt failed when embedded in other
people's pipelines (issue 12): a hang after fork, a process abort from the TF
ops, raw tf.Variables refused by fusedopt.keras, misaligned arrays accepted,
unbounded or unchecked engine inputs. Each test names the bug it guards and
why the earlier tests missed it. Anything that could crash or hang runs in a
child process with a timeout, so that a regression fails the test instead of
ending the test run.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fusedopt
from fusedopt import _core

HERE = Path(__file__).resolve().parent


def run_child(code: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -c code` in a fresh process; the result, whatever its exit status."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    full_env.setdefault("KERAS_BACKEND", "tensorflow")
    full_env.update(env or {})
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                              text=True, timeout=timeout, env=full_env, cwd=HERE)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"the child process hung (> {timeout} s):\n{err.stdout}\n{err.stderr}") from None


def assert_child_ok(proc: subprocess.CompletedProcess, expect: str = "OK") -> None:
    died = f" (killed by signal {-proc.returncode})" if proc.returncode < 0 else ""
    assert proc.returncode == 0 and expect in proc.stdout, (
        f"child exited with {proc.returncode}{died}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")


# -- 1. fork -------------------------------------------------------------------------------------
def test_forked_child_steps_after_the_parent_started_its_thread_pool():
    """Bug: after one multi-threaded step in the parent, a child made with the
    `fork` start method waited forever in its first step (the pool's workers
    do not exist in a forked child). Earlier tests never forked."""
    proc = run_child("""
        import multiprocessing as mp
        import numpy as np
        import fusedopt

        def adam_twice(threads):
            w = [np.zeros(4_000_000, np.float32)]
            opt = fusedopt.Adam(w, learning_rate=0.1)
            opt.step([np.ones_like(w[0])])
            if threads:
                fusedopt.set_num_threads(threads)
            opt.step([np.ones_like(w[0])])
            return w[0]

        def child(queue):
            w = adam_twice(threads=3)  # set_num_threads works in the child too
            queue.put((fusedopt.get_num_threads(), w[:4].tolist(), bool(np.all(w == w[0]))))

        fusedopt.set_num_threads(2)
        expected = adam_twice(threads=None)
        ctx = mp.get_context("fork")
        for _ in range(2):
            queue = ctx.Queue()
            p = ctx.Process(target=child, args=(queue,))
            p.start()
            p.join(60)
            assert not p.is_alive(), "the forked child hung"
            assert p.exitcode == 0, p.exitcode
            threads, head, uniform = queue.get(timeout=5)
            assert threads == 3 and uniform and head == expected[:4].tolist(), (threads, head)
        assert fusedopt.get_num_threads() == 2
        print("OK")
    """)
    assert_child_ok(proc)


def test_fork_while_another_thread_is_inside_a_step():
    """Bug: fork() taken while another thread ran a step left the child with
    the engine lock held by a thread that does not exist there. The fork now
    waits for the step; the child's engine works."""
    proc = run_child("""
        import os, threading
        import numpy as np
        import fusedopt

        fusedopt.set_num_threads(2)
        w = [np.zeros(2_000_000, np.float32)]
        opt = fusedopt.SGD(w, learning_rate=0.01, momentum=0.9)
        g = [np.ones_like(w[0])]
        stop = threading.Event()

        def busy():
            while not stop.is_set():
                opt.step(g)

        t = threading.Thread(target=busy)
        t.start()
        try:
            for _ in range(8):
                pid = os.fork()
                if pid == 0:  # the child: its own optimizer, two parallel steps
                    code = 1
                    try:
                        v = [np.zeros(1_000_000, np.float32)]
                        o = fusedopt.Adam(v, learning_rate=0.5)
                        o.step([np.ones_like(v[0])])
                        o.step([np.ones_like(v[0])])
                        code = 0 if np.all(v[0] == v[0][0]) and v[0][0] < 0 else 2
                    finally:
                        os._exit(code)
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0, status
        finally:
            stop.set()
            t.join()
        print("OK")
    """, timeout=180)
    assert_child_ok(proc)


# -- 5. engine inputs ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, -1, 1025, 2**31, 2**40])
def test_set_num_threads_out_of_range_is_a_value_error(n):
    """Bug: set_num_threads had no upper bound (10**6 threads: std::terminate
    when the system refused them); 2**31 overflowed the C++ int."""
    before = fusedopt.get_num_threads()
    with pytest.raises(ValueError, match="num_threads"):
        fusedopt.set_num_threads(n)
    assert fusedopt.get_num_threads() == before


def test_set_num_threads_takes_the_bounds():
    fusedopt.set_num_threads(1)
    assert fusedopt.get_num_threads() == 1
    assert _core.max_threads == 1024


@pytest.mark.parametrize("value", ["abc", "4x", "0", "-2", "99999", "1e3", " "])
def test_bad_num_threads_environment_variable_warns_and_uses_the_default(value):
    """Bug: FUSEDOPT_NUM_THREADS was read with atoi ("4x" -> 4, "abc" -> 0,
    silently), and an absurd count was taken as it was."""
    code = """
        import os, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import fusedopt
        print("THREADS", fusedopt.get_num_threads())
        print("WARNINGS", [str(w.message) for w in caught if "FUSEDOPT_NUM_THREADS" in str(w.message)])
    """
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, env=dict(env, FUSEDOPT_NUM_THREADS=value))
    assert proc.returncode == 0, proc.stderr
    threads = int(proc.stdout.split("THREADS ")[1].split()[0])
    assert threads == min(os.cpu_count() or 1, 1024)
    if value.strip():
        assert f"FUSEDOPT_NUM_THREADS='{value}'" in proc.stdout, proc.stdout


def test_good_num_threads_environment_variable_is_used():
    proc = subprocess.run([sys.executable, "-c", "import fusedopt; print(fusedopt.get_num_threads())"],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, FUSEDOPT_NUM_THREADS="3"))
    assert proc.returncode == 0 and proc.stdout.strip() == "3", proc.stderr


def test_thread_start_failure_is_a_runtime_error():
    """Bug: when the system could not start the pool's threads, the partly
    built pool's std::thread destructors called std::terminate (SIGABRT).
    Here the address space is capped so that thread stacks cannot be mapped."""
    proc = run_child("""
        import resource
        import numpy as np
        import fusedopt

        fusedopt.set_num_threads(2)
        w = [np.zeros(1_000_000, np.float32)]
        opt = fusedopt.SGD(w, learning_rate=0.1)
        opt.step([np.ones_like(w[0])])
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + 64 * 2**20, resource.RLIM_INFINITY))
        try:
            fusedopt.set_num_threads(1000)  # ~8 MB of stack each
        except RuntimeError as err:
            print("RuntimeError", err)
        else:
            raise SystemExit("no error")
        assert fusedopt.get_num_threads() == 2
        opt.step([np.ones_like(w[0])])  # the old pool still works
        assert np.all(w[0] == np.float32(-0.2))
        print("OK")
    """)
    assert_child_ok(proc)
    assert "could not start 1000 threads" in proc.stdout


def test_exception_inside_a_pool_task_reaches_the_caller():
    """Bug: an exception thrown inside a task on a worker thread (here
    Adafactor's per-tensor scratch allocation failing) escaped the thread
    function: std::terminate. It now reaches Python as MemoryError, and the
    engine keeps working."""
    proc = run_child("""
        import resource
        import numpy as np
        import fusedopt

        fusedopt.set_num_threads(2)
        # Two factored tensors of 8 x 4M: each task allocates 32 MB of column sums.
        shape = (8, 4_000_000)
        w = [np.zeros(shape, np.float32) for _ in range(2)]
        g = [np.ones(shape, np.float32) for _ in range(2)]
        small = [np.zeros((4, 4), np.float32) for _ in range(2)]
        warm = fusedopt.Adafactor(small, learning_rate=0.1)
        warm.step([np.ones_like(x) for x in small])  # the pool's threads exist before the cap
        opt = fusedopt.Adafactor(w, learning_rate=0.1)
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + 8 * 2**20, resource.RLIM_INFINITY))
        try:
            opt.step(g)
        except MemoryError:
            print("MemoryError")
        else:
            raise SystemExit("no error")
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        warm.step([np.ones_like(x) for x in small])
        print("OK")
    """)
    assert_child_ok(proc)
    assert "MemoryError" in proc.stdout


# -- 4. alignment --------------------------------------------------------------------------------
def _misaligned(n: int, dtype=np.float32, fill: float = 1.0) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    a = np.ndarray((n,), dtype, buffer=bytearray(n * itemsize + itemsize + 1), offset=1)
    a[...] = fill
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("which", ["params", "grads", "m"])
def test_misaligned_arrays_are_refused_with_nothing_written(dtype, which):
    """Bug: a C-contiguous view at byte offset 1 went into the kernels cast to
    float* (undefined behaviour). The checks looked at contiguity only."""
    arrays = {"params": np.ones(1000, dtype), "grads": np.ones(1000, dtype), "m": np.zeros(1000, dtype),
              "v": np.zeros(1000, dtype)}
    arrays[which] = _misaligned(1000, dtype, fill=0.5)
    before = {k: v.copy() for k, v in arrays.items()}
    with pytest.raises(ValueError, match=rf"{which}\[0\] is not aligned"):
        fusedopt.ops.adam_([arrays["params"]], [arrays["grads"]], [arrays["m"]], [arrays["v"]],
                           learning_rate=0.01)
    for k, v in arrays.items():
        np.testing.assert_array_equal(v, before[k])


def test_misaligned_arrays_refused_by_every_numpy_entry_point():
    bad = _misaligned(64)
    ok = np.ones(64, np.float32)
    with pytest.raises(ValueError, match="aligned"):
        fusedopt.Adam([bad], learning_rate=0.01).step([ok])
    with pytest.raises(ValueError, match="aligned"):
        fusedopt.ops.dropout(bad, 0.5, seed=(1, 2))
    with pytest.raises(ValueError, match="aligned"):
        fusedopt.regularizers.l1l2_penalty([bad], l1=0.1, l2=0.1)
    np.testing.assert_array_equal(bad, np.ones(64, np.float32))


# -- 5. the C API ---------------------------------------------------------------------------------
class _Tensor(ctypes.Structure):
    _fields_ = [("param", ctypes.c_void_p), ("grad", ctypes.c_void_p), ("state", ctypes.c_void_p * 4),
                ("size", ctypes.c_int64), ("batch", ctypes.c_int64), ("rows", ctypes.c_int64),
                ("cols", ctypes.c_int64), ("factored", ctypes.c_int32)]


@pytest.fixture(scope="module")
def capi():
    lib = ctypes.CDLL(str(Path(fusedopt.__file__).parent / "libfusedopt_engine.so"))
    lib.fusedopt_last_error.restype = ctypes.c_char_p
    lib.fusedopt_apply.restype = ctypes.c_int
    lib.fusedopt_apply.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Tensor), ctypes.c_int64,
                                   ctypes.POINTER(ctypes.c_double), ctypes.c_int64, ctypes.c_double,
                                   ctypes.c_double]
    lib.fusedopt_rule_id.argtypes = [ctypes.c_char_p]
    lib.fusedopt_rule_num_states.argtypes = [ctypes.c_int]
    lib.fusedopt_l1l2_gradient.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                           ctypes.c_double, ctypes.c_double]
    lib.fusedopt_dropout.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                     ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64),
                                     ctypes.c_int, ctypes.c_double, ctypes.c_uint64, ctypes.c_uint64,
                                     ctypes.c_void_p, ctypes.c_void_p]
    return lib


def _sgd_momentum_call(capi, p, g, m, **overrides):
    args = dict(rule=capi.fusedopt_rule_id(b"sgd_momentum"), dtype=0 if p.dtype == np.float32 else 1,
                n=1, hyper=(0.9,), step=1, lr=0.1, decay=0.0)
    args.update(overrides)
    t = _Tensor(p.ctypes.data, g.ctypes.data, (ctypes.c_void_p * 4)(m.ctypes.data, None, None, None), p.size,
                1, 1, 1, 0)
    for key in ("param", "grad", "size", "factored", "batch", "rows", "cols"):
        if key in overrides:
            setattr(t, key, overrides.pop(key))
            args.pop(key)
    if "state0" in overrides:
        t.state[0] = overrides.pop("state0")
        args.pop("state0")
    hyper = (ctypes.c_double * max(1, len(args["hyper"])))(*args["hyper"]) if args["hyper"] is not None else None
    tensors = ctypes.pointer(t) if args.pop("tensors", True) else None
    return capi.fusedopt_apply(args["rule"], args["dtype"], tensors, args["n"], hyper, args["step"],
                               args["lr"], args["decay"])


def test_c_api_step_matches_the_reference(capi):
    p, g, m = np.ones(100, np.float32), np.full(100, 0.5, np.float32), np.zeros(100, np.float32)
    assert _sgd_momentum_call(capi, p, g, m) == 0
    assert capi.fusedopt_last_error() == b""
    # Keras's momentum SGD: m = 0.9 * 0 - 0.1 * 0.5; p += m.
    np.testing.assert_allclose(p, np.float32(1 - 0.05), rtol=0)
    np.testing.assert_allclose(m, np.float32(-0.05), rtol=0)


BAD_C_CALLS = {
    "rule_out_of_range": dict(rule=10_000),
    "negative_rule": dict(rule=-3),
    "unknown_dtype": dict(dtype=7),
    "negative_n": dict(n=-1),
    "null_tensors": dict(tensors=False),
    "null_hyper": dict(hyper=None),
    "bad_hyper": dict(hyper=(1.5,)),
    "nan_hyper": dict(hyper=(float("nan"),)),
    "step_zero": dict(step=0),
    "negative_lr": dict(lr=-1.0),
    "nan_lr": dict(lr=float("nan")),
    "inf_decay": dict(decay=float("inf")),
    "null_param": dict(param=None),
    "null_state": dict(state0=None),
    "negative_size": dict(size=-5),
    "factored_for_sgd": dict(factored=1),
}


@pytest.mark.parametrize("case", list(BAD_C_CALLS), ids=list(BAD_C_CALLS))
def test_c_api_refuses_bad_arguments_with_nothing_written(capi, case):
    """Bug: the installed C API indexed its rule table without a range check,
    took any dtype code other than 1 as float32, and wrote through whatever
    it was given (it returned void: no error could be reported)."""
    p, g, m = np.ones(100, np.float32), np.full(100, 0.5, np.float32), np.zeros(100, np.float32)
    before = [a.copy() for a in (p, g, m)]
    assert _sgd_momentum_call(capi, p, g, m, **BAD_C_CALLS[case]) == -1
    assert capi.fusedopt_last_error(), "no message"
    for a, b in zip((p, g, m), before):
        np.testing.assert_array_equal(a, b)


def test_c_api_refuses_misaligned_and_overlapping_buffers(capi):
    p, g, m = np.ones(100, np.float32), np.full(100, 0.5, np.float32), np.zeros(100, np.float32)
    assert _sgd_momentum_call(capi, p, g, m, param=p.ctypes.data + 1) == -1
    assert b"aligned" in capi.fusedopt_last_error()
    assert _sgd_momentum_call(capi, p, g, m, state0=p.ctypes.data + 40) == -1
    assert b"shares memory" in capi.fusedopt_last_error()
    assert _sgd_momentum_call(capi, p, g, m, grad=p.ctypes.data) == -1
    assert b"shares memory" in capi.fusedopt_last_error()
    np.testing.assert_array_equal(p, 1.0)
    np.testing.assert_array_equal(m, 0.0)


def test_c_api_rule_queries_are_range_checked(capi):
    assert capi.fusedopt_rule_id(None) == -1
    assert capi.fusedopt_rule_id(b"no_such_rule") == -1
    assert capi.fusedopt_rule_num_states(10_000) == -1
    assert capi.fusedopt_rule_num_states(-1) == -1


def test_c_api_regularizer_and_dropout_check_their_arguments(capi):
    w, out = np.ones(16, np.float32), np.zeros(16, np.float32)
    assert capi.fusedopt_l1l2_gradient(9, w.ctypes.data, out.ctypes.data, 16, 0.1, 0.1) == -1
    assert capi.fusedopt_l1l2_gradient(0, w.ctypes.data, out.ctypes.data, 16, -0.1, 0.1) == -1
    assert capi.fusedopt_l1l2_gradient(0, None, out.ctypes.data, 16, 0.1, 0.1) == -1
    np.testing.assert_array_equal(out, 0.0)
    assert capi.fusedopt_l1l2_gradient(0, w.ctypes.data, out.ctypes.data, 16, 0.1, 0.2) == 0
    np.testing.assert_allclose(out, np.float32(0.1 + 2 * 0.2), rtol=1e-7)
    shape = (ctypes.c_int64 * 1)(16)
    noise = (ctypes.c_int64 * 1)(3)  # does not broadcast
    assert capi.fusedopt_dropout(0, w.ctypes.data, out.ctypes.data, shape, noise, 1, 0.5, 1, 2, None, None) == -1
    assert b"noise_shape" in capi.fusedopt_last_error()
    assert capi.fusedopt_dropout(0, w.ctypes.data, out.ctypes.data, shape, shape, 1, 1.5, 1, 2, None, None) == -1
    assert capi.fusedopt_dropout(0, w.ctypes.data, out.ctypes.data, None, None, 1, 0.5, 1, 2, None, None) == -1


# -- 2. the TF ops -------------------------------------------------------------------------------
def test_tf_ops_refuse_non_scalar_inputs_instead_of_aborting():
    """Bug: FusedoptAdam with a learning_rate (or step, decay) of shape [2]
    killed the process with SIGABRT (a CHECK in Tensor::scalar) in eager mode;
    the shape function accepted it. The earlier bad-input tests only varied
    values and vector lengths, never a scalar's rank. Run in a child: on the
    old code the abort ends the process."""
    proc = run_child("""
        import numpy as np
        import tensorflow as tf
        from fusedopt.keras import _op_library

        lib = _op_library.load()
        F64 = tf.float64
        p = tf.Variable(np.ones((3, 4), np.float32))
        m = tf.Variable(np.zeros((3, 4), np.float32))
        v = tf.Variable(np.zeros((3, 4), np.float32))

        def args(**kw):
            a = dict(params=[p.handle], states=[m.handle, v.handle], grads=[tf.ones((3, 4))],
                     hyper=tf.constant([0.9, 0.999, 1e-7], F64), learning_rate=tf.constant(0.01, F64),
                     step=tf.constant(1, tf.int64), decay=tf.constant(0.0, F64),
                     regularization=tf.zeros([3], F64), hyper_names=["beta_1", "beta_2", "epsilon"])
            a.update(kw)
            return a

        bad = {
            "learning_rate": dict(learning_rate=tf.constant([0.01, 0.02], F64)),
            "step": dict(step=tf.constant([1, 2], tf.int64)),
            "decay": dict(decay=tf.constant([0.0, 0.0], F64)),
            "hyper_matrix": dict(hyper=tf.constant([[0.9, 0.999, 1e-7]], F64)),
            "regularization_scalar": dict(regularization=tf.constant(0.0, F64)),
            "handle_vector": dict(params=[tf.stack([p.handle, p.handle])]),
        }
        before = [x.numpy().copy() for x in (p, m, v)]
        for name, kw in bad.items():
            for mode in ("eager", "function"):
                call = lambda: lib.fusedopt_adam(**args(**kw))
                if mode == "function":
                    call = tf.function(call)
                try:
                    call()
                except (tf.errors.InvalidArgumentError, ValueError) as err:
                    assert "must" in str(err) or "rank" in str(err).lower() or "Shape" in str(err), (name, err)
                else:
                    raise SystemExit(f"{name} {mode}: no error")
                for x, b in zip((p, m, v), before):
                    np.testing.assert_array_equal(x.numpy(), b)
        # The regularizer and dropout ops: non-scalar strengths and rates, a bad seed.
        x = tf.ones([8])
        for call in (lambda: lib.fusedopt_elastic_penalty(x=x, l1=tf.constant([0.1, 0.1], F64), l2=tf.constant(0.0, F64)),
                     lambda: lib.fusedopt_sp_gradient(x=x, reference=x, alpha=tf.constant([1.0], F64)),
                     lambda: lib.fusedopt_dropout(x=x, rate=tf.constant([0.5], F64), seed=tf.constant([1, 2], tf.int64),
                                                  noise_shape=tf.constant([8], tf.int64)),
                     lambda: lib.fusedopt_dropout(x=x, rate=tf.constant(0.5, F64), seed=tf.constant(1, tf.int64),
                                                  noise_shape=tf.constant([8], tf.int64)),
                     lambda: lib.fusedopt_variable_list(variables=[tf.stack([p.handle, p.handle])])):
            try:
                call()
            except (tf.errors.InvalidArgumentError, ValueError):
                pass
            else:
                raise SystemExit("no error")
        # Valid calls still work.
        lib.fusedopt_adam(**args())
        assert not np.array_equal(p.numpy(), before[0])
        print("OK")
    """, timeout=300)
    assert_child_ok(proc)


# -- 3. fusedopt.keras with raw tf.Variables ------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", [("Adam", {"learning_rate": 0.01}),
                                         ("SGD", {"learning_rate": 0.05, "momentum": 0.9}),
                                         ("RMSprop", {"learning_rate": 0.01}),
                                         ("AdamW", {"learning_rate": 0.01, "weight_decay": 0.05})])
def test_keras_optimizer_applies_to_raw_tf_variables_in_tf_function(name, kwargs):
    """Bug: fusedopt.keras.Adam().apply(grads, vars) inside tf.function, with
    `vars` plain tf.Variables (a custom loop over a tf.Module), raised
    "Cannot convert ... <dtype: 'float32'> to a TensorFlow DType" (the op
    groups were keyed by str(tf.DType)). The Keras built-in accepts it; every
    earlier test used keras.Variables. Mixed lists too."""
    import keras
    import tensorflow as tf

    from fusedopt import keras as fk
    from keras_helpers import assert_close, fused_op_probe

    rng = np.random.default_rng(0)
    init = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(5,)).astype(np.float32),
            rng.normal(size=(2, 2)).astype(np.float64)]
    grads = [[rng.normal(size=x.shape).astype(x.dtype) for x in init] for _ in range(4)]
    results = []
    for cls in (getattr(keras.optimizers, name), getattr(fk, name)):
        variables = [tf.Variable(init[0]), keras.Variable(init[1]), tf.Variable(init[2])]
        opt = cls(**kwargs)

        @tf.function
        def step(gs):
            opt.apply(gs, variables)

        with fused_op_probe() as calls:
            for gs in grads:
                step([tf.constant(g) for g in gs])
        results.append(([np.array(v.numpy()) for v in variables], calls))
    (expected, _), (actual, calls) = results
    assert calls, "the fused op was not used"
    for a, e in zip(actual, expected):
        assert_close(a, e)
