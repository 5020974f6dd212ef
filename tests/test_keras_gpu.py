"""The fused update ops' GPU kernels (cpp/tf/fused_update_kernels_gpu.cc).

Everywhere: the op library has GPU kernels exactly where TensorFlow has CUDA
and the engine its CUDA kernels (they compile and register on a machine
without a GPU), with the scalars in host memory, for every fused op; the CPU
kernel's copy-on-write (the GPU one's too, on a GPU).

Marked ``gpu`` (skipped unless TensorFlow sees a GPU): every optimizer trains
a model whose variables live on the GPU through the fused op and matches the
Keras built-in there; the op copies a buffer that a read still shares (TF's
copy-on-write) instead of changing the value that read returned; it refuses
fused regularization and changes nothing; with fused
regularization on, GPU variables go to Keras's update and match the CPU op.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras_helpers import CASE_IDS, CASES, assert_close, compare_fit
from tensorflow.python.framework import kernels

import fusedopt.keras as fk
from fusedopt.keras import _op_library

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FUSED_OPS = ["Fusedopt" + "".join(w.capitalize() for w in rule.split("_"))
             for rule in ("sgd", "sgd_momentum", "sgd_nesterov", "sgd_dampened", "rmsprop",
                          "rmsprop_momentum", "rmsprop_centered", "rmsprop_centered_momentum",
                          "adagrad", "adadelta", "adam", "adam_amsgrad", "adamax", "nadam", "ftrl",
                          "lion", "lamb", "adafactor", "schedule_free_adamw")]
HOST_SCALARS = {"hyper", "learning_rate", "step", "decay", "regularization"}


def _kernels(op_name: str, device: str) -> list:
    return [k for k in kernels.get_registered_kernels_for_op(op_name).kernel if k.device_type == device]


def test_gpu_kernels_where_tensorflow_and_the_engine_have_cuda():
    _op_library.load()
    status = _op_library.status()
    assert status["gpu_kernels"] == _op_library.gpu_kernels_wanted(), status["gpu_error"]
    for op_name in FUSED_OPS:
        gpu = _kernels(op_name, "GPU")
        if not status["gpu_kernels"]:
            assert not gpu, op_name
            continue
        dtypes = sorted(c.allowed_values.list.type[0] for k in gpu for c in k.constraint)
        assert dtypes == [tf.float32.as_datatype_enum, tf.float64.as_datatype_enum], op_name
        for k in gpu:
            assert set(k.host_memory_arg) == HOST_SCALARS, (op_name, list(k.host_memory_arg))
        assert len(_kernels(op_name, "CPU")) == 2, op_name


# --------------------------------------------------------------------------
# On a GPU
# --------------------------------------------------------------------------
GPUS = tf.config.list_physical_devices("GPU")
gpu = pytest.mark.gpu
needs_tf_gpu = pytest.mark.skipif(
    not GPUS or not _op_library.gpu_kernels_wanted(),
    reason="needs a GPU that TensorFlow sees, and a CUDA build of TensorFlow and of fusedopt's engine")


@gpu
@needs_tf_gpu
@pytest.mark.parametrize("case", CASE_IDS)
def test_every_optimizer_on_gpu_matches_builtin(case):
    _, name, kwargs = CASES[case]
    with tf.device("/GPU:0"):
        model_a, _, model_b, _, _ = compare_fit(name, kwargs, expect_fused=True)
    assert all("GPU" in v.value.device.upper() for v in model_b.trainable_variables)


@pytest.mark.parametrize("device", [
    "/CPU:0", pytest.param("/GPU:0", marks=[gpu, needs_tf_gpu])])
def test_op_copies_a_buffer_a_read_still_holds(device):
    """TF's copy-on-write: a value read before the update keeps its numbers."""
    lib = _op_library.load()
    with tf.device(device):
        param = tf.Variable(np.full((64,), 1.0, "float32"))
        held = param.read_value()  # shares param's buffer
        before = held.numpy().copy()
        lib.fusedopt_sgd(params=[param.handle], states=[], grads=[tf.fill((64,), 0.5)],
                         hyper=tf.zeros([0], tf.float64), learning_rate=tf.constant(0.1, tf.float64),
                         step=tf.constant(1, tf.int64), decay=tf.constant(0.0, tf.float64),
                         regularization=tf.zeros([3], tf.float64), hyper_names=[])
    np.testing.assert_array_equal(held.numpy(), before)
    np.testing.assert_allclose(param.numpy(), before - 0.05, rtol=1e-7)


@gpu
@needs_tf_gpu
def test_gpu_kernel_rejects_regularization_and_changes_nothing():
    lib = _op_library.load()
    with tf.device("/GPU:0"):
        param = tf.Variable(np.full((8,), 1.0, "float32"))
        with pytest.raises(tf.errors.InvalidArgumentError, match="l2"):
            lib.fusedopt_sgd(params=[param.handle], states=[], grads=[tf.ones((8,))],
                             hyper=tf.zeros([0], tf.float64), learning_rate=tf.constant(0.1, tf.float64),
                             step=tf.constant(1, tf.int64), decay=tf.constant(0.0, tf.float64),
                             regularization=tf.constant([0.0, 0.01, 0.0], tf.float64), hyper_names=[])
    np.testing.assert_array_equal(param.numpy(), np.ones(8, np.float32))


@gpu
@needs_tf_gpu
def test_regularized_gpu_variables_take_keras_update_and_match_cpu_op():
    results = []
    for device in ("/CPU:0", "/GPU:0"):
        with tf.device(device):
            w = keras.Variable(np.linspace(-1, 1, 12, dtype="float32").reshape(3, 4))
            opt = fk.Adam(0.01, l1=1e-3, l2=1e-2, proximal_l1=1e-3)
            for step in range(5):
                opt.apply_gradients([(tf.fill((3, 4), 0.1 * (step + 1)), w)])
        results.append(w.numpy())
    assert_close(results[1], results[0], what="weights")
