r"""A drop-in ``keras.layers.Dropout`` whose masks come from a fused C++ kernel.

::

    from fusedopt.keras.layers import Dropout     # instead of keras.layers.Dropout
    x = Dropout(0.5, seed=1)(x)

Same arguments, ``get_config``, ``training`` flag and ``SeedGenerator``
semantics (its state advances on every training call) as the built-in. On
the TensorFlow backend (CPU, float32/float64, outside XLA) a training call is
one custom op, ``FusedoptDropout``: multi-threaded Philox4x32-10 keep bits,
bit-identical to ``keras.random.dropout`` with the same seed (TF's stateless
uniform on CPU: the same key, counter and float conversion), and a packed
mask of 1 bit per element of the noise shape, which its registered gradient
(``FusedoptDropoutGrad``) reads, against the 1-byte-per-element mask TF's
dropout keeps for backward. Elsewhere the built-in runs.

.. math::
    y = \mathrm{keep} \cdot x \cdot \frac{1}{1 - \text{rate}}, \qquad
    \mathrm{keep}_j = (u_j \ge \text{rate}),\ u_j \sim U[0, 1)

(Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from
Overfitting", JMLR 2014.)
"""

from __future__ import annotations

import keras

from fusedopt.keras import _op_library

__all__ = ["Dropout"]

@keras.saving.register_keras_serializable(package="fusedopt")
class Dropout(keras.layers.Dropout):
    __doc__ = keras.layers.Dropout.__doc__

    def call(self, inputs, training=False):
        if not (training and self.rate > 0):
            return inputs
        self._check_noise_shape(inputs.shape)
        module = None if self.rate >= 1 else _op_library.module_for(inputs)
        if module is None:
            return super().call(inputs, training=training)
        import tensorflow as tf
        from keras.src.backend.tensorflow.random import _cast_seed, _get_concrete_noise_shape
        from keras.src.random.seed_generator import draw_seed

        # What keras.random.dropout draws and passes to stateless_dropout.
        seed = tf.cast(_cast_seed(draw_seed(self.seed_generator)), tf.int64)
        noise_shape = tf.cast(_get_concrete_noise_shape(inputs, self.noise_shape), tf.int64)
        missing = len(inputs.shape) - int(noise_shape.shape[0])
        if missing > 0:  # broadcast right-aligned, as stateless_dropout does
            noise_shape = tf.concat([tf.ones([missing], tf.int64), noise_shape], 0)
        y, _ = module.fusedopt_dropout(
            x=inputs, rate=tf.constant(float(self.rate), tf.float64), seed=seed,
            noise_shape=noise_shape)
        return y

    def _check_noise_shape(self, shape):
        """A ValueError naming noise_shape where it cannot broadcast to the input's
        static shape (right-aligned; each entry 1 or the input's size there)."""
        if self.noise_shape is None:
            return
        dims = list(shape)
        ok = len(self.noise_shape) <= len(dims)
        for n, d in zip(reversed(self.noise_shape), reversed(dims)):
            ok = ok and (n is None or n == 1 or d is None or n == d)
        if not ok:
            raise ValueError(f"noise_shape {tuple(self.noise_shape)} does not broadcast to the input "
                             f"shape {tuple(dims)}: each entry must be 1, None or the input's size there")
