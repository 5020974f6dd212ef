"""Drop-in Keras optimizers whose update step is one fused op.

Each class subclasses the Keras built-in of the same name, so constructor
arguments, defaults, slot variables (names and order), ``get_config`` and the
pure ``keras.ops`` ``update_step`` are Keras's own. Only the backend update
step changes: instead of one update per variable, all variables of a dtype
go to one fused call that updates params and slots in place through the C++
engine: on TensorFlow a custom op (``cpp/tf``), on JAX an XLA FFI custom call
(``cpp/xla``, `_xla_library`). Everything around it -- loss-scale
unscaling, clipping, gradient accumulation, EMA, constraints, iterations --
stays Keras's. Decoupled weight decay is done inside the fused call.

Falls back to Keras's own update (same formulas, same variables) for: the
torch backend; TensorFlow's XLA context (``jit_compile=True``) on a GPU or
where the op library has no XLA kernels (else the op's XLA kernel makes it
one custom call); a Keras distribution, a non-CPU variable or one under
32768 elements on JAX; sparse (``IndexedSlices``) gradients (Keras's sparse
semantics); dtypes other than float32/float64; GPU variables where the op
library has no GPU kernels (or with ``l1``/``l2``/``proximal_l1``, which only
the CPU kernels fuse); and a machine where the library cannot be built (one
warning).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import numpy as np

from fusedopt import _core
from fusedopt.keras import _op_library, _xla_library
from fusedopt import optimizers as fusedopt_optimizers
from fusedopt.optimizers import _check_number as check_number

__all__ = [
    "SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "AdamW", "Adamax", "Nadam", "Ftrl",
    "Lion", "Lamb", "Adafactor", "ScheduleFreeAdamW", "Muon", "Adan",
]

def _float64(value: Any) -> Any:
    """`value` as a float64 tensor; a Python number exactly.

    tf.cast(0.999, tf.float64) is 0.99900001287...: it converts the number to
    a float32 tensor first. Keras computes its (1 - beta) factors from the
    Python floats, so hyperparameters must reach the op unrounded.
    """
    import tensorflow as tf

    if isinstance(value, (bool, int, float)):
        return tf.constant(float(value), tf.float64)
    return tf.cast(value, tf.float64)


def _keras_cast(value: Any) -> Any:
    """A hyperparameter as Keras's `ops.cast(value, variable.dtype)` sees it.

    On TensorFlow that cast rounds a Python float to float32 first, whatever
    the variable dtype. Where a built-in casts a hyperparameter this way
    before using it (e.g. Nadam's and Lion's ``1 - beta``), pass it rounded.
    """
    if isinstance(value, (bool, int, float)):
        return float(np.float32(value))
    return value


def _op_function(rule: str) -> Callable[..., Any]:
    return getattr(_op_library.load(), "fusedopt_" + rule)


_SPECIALIZED: dict = {}


def _with_backend_specialization(cls: type) -> type:
    """`cls`, or on a backend where Keras's constructor returns a subclass of the
    built-in (torch), a subclass of both, so that Keras's update is that one."""
    if cls in _SPECIALIZED:
        return _SPECIALIZED[cls]
    built_in = next(c for c in cls.__mro__ if c.__module__.startswith("keras."))
    specialized = type(built_in.__new__(built_in))
    if specialized is built_in or issubclass(cls, specialized):
        result = cls
    else:
        result = type(cls.__name__, (cls, specialized),
                      {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                       "__doc__": cls.__doc__})
        # Serialize as the fusedopt class; deserializing builds this one again.
        result = keras.saving.register_keras_serializable(package="fusedopt")(result)
        _SPECIALIZED[result] = result
    _SPECIALIZED[cls] = result
    return result


_REGULARIZATION_ARGS = ("l1", "l2", "proximal_l1")


class _Fused:
    """Mixin over a Keras optimizer: the fused TensorFlow update step.

    Subclasses say which engine rule runs (`_fused_rule`), with which
    hyperparameters (`_fused_hyper`, by the engine's names) and which slot
    variables of a variable it updates (`_fused_slots`, Keras's order).

    Every optimizer also takes fusedopt's fused regularization (all 0, off,
    by default; applied to every variable the optimizer updates):

    - ``l1``, ``l2``: coupled, Keras's ``L1L2`` gradient
      ``g += l1*sign(p) + 2*l2*p``, from ``p`` before the weight decay (after
      clipping and the all-reduce). The same as a ``kernel_regularizer`` of
      ``keras.regularizers.L1L2(l1, l2)`` on every variable, except that it is
      not clipped with the loss gradient; sparse gradients become dense.
    - ``proximal_l1``: after the rule, the soft threshold
      ``p = sign(p) * max(|p| - lr*proximal_l1, 0)`` (FOBOS: Duchi & Singer,
      JMLR 2009), which gives exact zeros.

    The fused op does them in its one pass over memory; Keras's own update
    (the fallback) does the same arithmetic around it.
    """

    _fuse_weight_decay = True  # Muon decays with its own per-variable rule
    # Lamb's and Adafactor's CUDA kernels take scratch memory from the CUDA
    # runtime, beside TensorFlow's allocator (which may hold all of the GPU's
    # memory): on a GPU they keep Keras's update.
    _fused_on_gpu = True

    def __new__(cls, *args, **kwargs):
        # Off TensorFlow, be exactly the built-in: on torch, keras.optimizers.X()
        # builds a torch-specific subclass (multi-tensor torch._foreach update).
        return super().__new__(_with_backend_specialization(cls))

    def __init__(self, *args, l1: float = 0.0, l2: float = 0.0, proximal_l1: float = 0.0, **kwargs):
        strengths = {name: check_number(value, name, low=0.0)
                     for name, value in zip(_REGULARIZATION_ARGS, (l1, l2, proximal_l1))}
        super().__init__(*args, **kwargs)
        self.l1, self.l2, self.proximal_l1 = (strengths[n] for n in _REGULARIZATION_ARGS)

    def get_config(self):
        config = super().get_config()
        # Only when set, so that a default config is the built-in's.
        config.update({n: getattr(self, n) for n in _REGULARIZATION_ARGS if getattr(self, n)})
        return config

    @property
    def _coupled_regularization(self) -> bool:
        return bool(self.l1 or self.l2)

    # -- per-optimizer description -------------------------------------------
    def _fused_rule(self) -> str:
        raise NotImplementedError

    def _fused_hyper(self) -> dict:
        """The rule's hyperparameters by name (the engine's names: `fusedopt.ops.RULES`)."""
        raise NotImplementedError

    def _fused_slots(self, variable: Any) -> list:
        raise NotImplementedError

    def _fused_variable_ok(self, variable: Any) -> bool:
        return True

    def _fused_learning_rate(self, learning_rate: Any) -> Any:
        return learning_rate

    # -- when the fused op runs ------------------------------------------------
    def _fused_possible(self) -> bool:
        backend = keras.backend.backend()
        if backend == "jax":
            return _xla_library.usable()
        return backend == "tensorflow" and _op_library.usable()

    def _fusable(self, grad: Any, variable: Any) -> bool:
        if keras.backend.backend() == "jax":
            return grad is not None and _xla_library.takes(variable) and self._fused_variable_ok(variable)
        import tensorflow as tf

        # The GPU kernels have no fused regularization (Keras's update does it there).
        gpu = self._fused_on_gpu and not (self._coupled_regularization or self.proximal_l1)
        return (grad is not None and not isinstance(grad, tf.IndexedSlices)
                and _op_library.takes(variable, gpu=gpu)
                and self._fused_variable_ok(variable))

    def _apply_weight_decay(self, variables):
        # Keras calls this right before _backend_update_step; when the fused
        # op will run, decay is deferred to it (one pass over memory), and with
        # coupled regularization always (its gradient reads p before decay).
        if (self.weight_decay is not None and self._fuse_weight_decay
                and (self._coupled_regularization or self._fused_possible())):
            self._fused_decay_deferred = True
            return
        super()._apply_weight_decay(variables)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        return self._fused_update_step(grads, trainable_variables, learning_rate,
                                       super()._backend_update_step)

    def _fused_update_step(self, grads, variables, learning_rate, keras_update_step):
        decay_deferred = getattr(self, "_fused_decay_deferred", False)
        self._fused_decay_deferred = False
        if not self._fused_possible():
            return self._keras_update(grads, variables, learning_rate, keras_update_step,
                                      decay_deferred)
        fused, rest = [], []
        for g, v in zip(grads, variables):  # each pair judged once (eager: every step)
            (fused if self._fusable(g, v) else rest).append((g, v))
        if rest:
            self._keras_update([g for g, _ in rest], [v for _, v in rest], learning_rate,
                               keras_update_step, decay_deferred)
        if fused and keras.backend.backend() == "jax":
            self._fused_jax_update(fused, learning_rate, decay_deferred)
        elif fused:
            self._fused_tf_update(fused, learning_rate, decay_deferred)

    def _keras_update(self, grads, variables, learning_rate, keras_update_step, decay_deferred):
        """Keras's own update of `variables`, with the fused op's extras around
        it in the op's order: coupled gradient, decay, rule, proximal step."""
        if self._coupled_regularization:
            grads = self._add_coupled_gradient(grads, variables)
        if decay_deferred:
            super()._apply_weight_decay(variables)
        keras_update_step(grads, variables, learning_rate)
        if self.proximal_l1:
            for v in variables:  # at the rate the fused op gets (Muon: its Adam variables' own)
                lr = self._fused_learning_rate(learning_rate) if self._fused_variable_ok(v) else learning_rate
                t = keras.ops.cast(keras.ops.cast(lr, "float64") * self.proximal_l1, v.dtype)
                v.assign(v - keras.ops.clip(v, -t, t))  # soft threshold, as regularizers.h

    def _add_coupled_gradient(self, grads, variables):
        # Keras's TF update all-reduces (sums) the per-replica gradients after
        # this: each replica adds its share, so that the sum holds it once.
        replicas = 1
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            if not tf.distribute.in_cross_replica_context():
                replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        out = []
        for g, v in zip(grads, variables):
            if g is not None:
                dtype = v.dtype
                # Only the nonzero strengths' terms, as the fused op (0 * inf is NaN).
                reg = 0.0
                if self.l1:
                    reg = reg + keras.ops.cast(self.l1, dtype) * keras.ops.sign(v)
                if self.l2:
                    reg = reg + keras.ops.cast(2.0 * self.l2, dtype) * v
                g = keras.ops.convert_to_tensor(g) + (reg if replicas == 1 else reg / replicas)
            out.append(g)
        return out

    def _fused_tf_update(self, grads_and_keras_vars, learning_rate, decay):
        import tensorflow as tf

        keras_vars = [v for _, v in grads_and_keras_vars]
        grads_and_vars = self._all_reduce_sum_gradients(
            [(g, _op_library.tf_value(v)) for g, v in grads_and_keras_vars])
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._fused_distributed_update, self._distribution_strategy, grads_and_vars,
            keras_vars, learning_rate, decay)

    def _fused_distributed_update(self, distribution, grads_and_vars, keras_vars, learning_rate,
                                  decay):
        # One update call for all variables: inside it, a distributed
        # variable's handle is the current replica's, and per-replica
        # gradients arrive unwrapped.
        grads = [g for g, _ in grads_and_vars]

        def update_all(_anchor, *replica_grads):
            return self._run_fused_ops(list(replica_grads), keras_vars, learning_rate, decay)

        distribution.extended.update(grads_and_vars[0][1], update_all, args=tuple(grads),
                                     group=False)

    def _run_fused_ops(self, grads, keras_vars, learning_rate, decay):
        import tensorflow as tf

        lr = tf.cast(self._fused_learning_rate(learning_rate), tf.float64)
        step = tf.cast(self.iterations + 1, tf.int64)
        rule = self._fused_rule()
        hyper_names = _core.rules()[rule]["hyper"]
        named = self._checked_fused_hyper()
        hyper = (tf.stack([_float64(named[h]) for h in hyper_names]) if hyper_names
                 else tf.zeros([0], tf.float64))
        op = _op_function(rule)
        regularization = tf.constant([self.l1, self.l2, self.proximal_l1], tf.float64)
        ops = []
        groups = self._fused_groups(grads, keras_vars, decay, lambda v: _op_library.tf_value(v).device)
        for (dtype, decays, _), members in groups.items():
            # tf.cast rounds a Python weight_decay to float32 first: so does
            # Keras's TF _apply_weight_decay, whatever the variable dtype.
            wd = (tf.cast(self.weight_decay, tf.float64) * tf.cast(self.learning_rate, tf.float64)
                  if decays else tf.constant(0.0, tf.float64))
            params = [_op_library.tf_value(v).handle for _, v in members]
            slots = [self._fused_slots(v) for _, v in members]
            slot_vars = [_op_library.tf_value(s[k]) for k in range(len(slots[0])) for s in slots]
            state_list = self._fused_state_lists.get(slot_vars)
            states = [state_list] if state_list is not None else [s.handle for s in slot_vars]
            ops.append(op(params=params, states=states,
                          grads=[tf.cast(g, dtype) for g, _ in members],
                          hyper=hyper, learning_rate=lr, step=step, decay=wd,
                          regularization=regularization, state_list=state_list is not None,
                          hyper_names=hyper_names))
        return tf.group(*ops)

    def _checked_fused_hyper(self) -> dict:
        rule = self._fused_rule()
        hyper_names = _core.rules()[rule]["hyper"]
        named = self._fused_hyper()
        if sorted(named) != sorted(hyper_names):  # a bug in this file, not in user input
            raise AssertionError(f"{type(self).__name__} gives {sorted(named)} for {rule}, "
                                 f"whose hyperparameters are {hyper_names}")
        return named

    def _fused_groups(self, grads, keras_vars, decay, device_of) -> dict:
        """(dtype, decays?, device) -> [(grad, variable)]: one fused call per group,
        usually exactly one."""
        groups: dict = {}
        for g, v in zip(grads, keras_vars):
            decays = bool(decay and self._use_weight_decay(v))
            groups.setdefault((keras.backend.standardize_dtype(v.dtype), decays, device_of(v)), []).append((g, v))
        return groups

    def _fused_jax_update(self, grads_and_vars, learning_rate, decay):
        """One custom call per group (`_xla_library.fused_update`); the results are
        assigned to the variables, which under Keras's jitted train step (donated
        state) updates them in place."""
        ops = keras.ops
        lr = self._fused_learning_rate(learning_rate)
        step = self.iterations + 1
        rule = self._fused_rule()
        named = self._checked_fused_hyper()
        regularization = (float(self.l1), float(self.l2), float(self.proximal_l1))
        groups = self._fused_groups([g for g, _ in grads_and_vars], [v for _, v in grads_and_vars],
                                    decay, lambda v: None)
        for (dtype, decays, _), members in groups.items():
            # As Keras's _apply_weight_decay on JAX: wd and lr cast to the variable dtype.
            wd = (ops.cast(self.weight_decay, dtype) * ops.cast(self.learning_rate, dtype)
                  if decays else ops.zeros((), dtype))
            variables = [v for _, v in members]
            slots = [self._fused_slots(v) for v in variables]
            slot_vars = [s[k] for k in range(len(slots[0])) for s in slots]
            params, states = _xla_library.fused_update(
                rule, named, [v.value for v in variables], [ops.cast(g, dtype) for g, _ in members],
                [s.value for s in slot_vars], ops.cast(lr, dtype), step, wd, regularization)
            for variable, value in zip(variables + slot_vars, params + states):
                variable.assign(value)

    @property
    def _fused_state_lists(self) -> "_StateLists":
        lists = self.__dict__.get("_fusedopt_state_lists")
        if lists is None:
            lists = _StateLists()
            # Not through setattr: Keras would track it as optimizer state.
            self.__dict__["_fusedopt_state_lists"] = lists
        return lists


class _StateLists:
    """One FusedoptVariableList handle per set of slot variables, made once.

    The fused op then takes an optimizer's slots as one handle instead of one
    per slot, which is most of its cost per call in a tf.function with many
    small variables (each captured resource costs microseconds per call).
    The parameters stay separate inputs, so TensorFlow still orders reads of
    them (EMA, constraints, the forward pass) around the update. The slots
    are read by nothing else in a training step. Where the function being
    traced already uses a slot (an optimizer built in this trace), the op
    takes the slots' handles instead; a read of a slot variable later in the
    same tf.function is not ordered after the update. (A function that
    captures the list cannot be exported with tf.saved_model: nothing tracks
    it. Keras's exports hold no training step.)

    Only for plain CPU variables made eagerly (not distributed, not on a GPU,
    not made inside a graph): elsewhere `get` returns None and the op takes
    one handle per slot.
    """

    def __init__(self) -> None:
        self._lists: dict = {}

    def get(self, slot_vars: list) -> Any:
        import tensorflow as tf

        if not slot_vars or any(isinstance(s, tf.distribute.DistributedValues)
                                or _op_library.device_type(s) != "CPU" for s in slot_vars):
            return None  # (FusedoptVariableList has a CPU kernel only)
        if _used_in_this_function(slot_vars) or _op_library.in_xla_context():
            return None  # (under XLA the op reads and assigns each slot variable)
        key = tuple(id(s) for s in slot_vars)
        entry = self._lists.get(key)
        if entry is None or any(a is not b for a, b in zip(entry[1], slot_vars)):
            with tf.init_scope():
                if not tf.executing_eagerly():
                    return None
                handles = [s.handle for s in slot_vars]
                if any(tf.is_symbolic_tensor(h) for h in handles):
                    return None
                handle = _op_library.load().fusedopt_variable_list(variables=handles)
            entry = self._lists[key] = (handle, list(slot_vars))
        return entry[0]


def _used_in_this_function(variables: list) -> bool:
    """Whether the tf.function being traced already uses one of `variables`
    (e.g. an optimizer built in this trace assigns its slots): then the op
    takes their handles, so that TensorFlow orders it after those uses."""
    import tensorflow as tf
    from tensorflow.python.framework import func_graph

    graph = tf.compat.v1.get_default_graph()
    if not isinstance(graph, func_graph.FuncGraph):
        return False
    while isinstance(getattr(graph, "outer_graph", None), func_graph.FuncGraph):
        graph = graph.outer_graph  # captures from the eager context live in the outermost
    captured = {id(t) for t in graph.external_captures}
    return any(id(v.handle) in captured for v in variables)


def _slot(slots: Sequence[Any], optimizer: Any, variable: Any) -> Any:
    return slots[optimizer._get_variable_index(variable)]


def _register(cls):
    return keras.saving.register_keras_serializable(package="fusedopt")(cls)


@_register
class SGD(_Fused, keras.optimizers.SGD):
    __doc__ = keras.optimizers.SGD.__doc__

    def _fused_rule(self):
        if self.momentum == 0:
            return "sgd"
        return "sgd_nesterov" if self.nesterov else "sgd_momentum"

    def _fused_hyper(self):
        return {} if self.momentum == 0 else {"momentum": _keras_cast(self.momentum)}

    def _fused_slots(self, variable):
        return [] if self.momentum == 0 else [_slot(self.momentums, self, variable)]


@_register
class RMSprop(_Fused, keras.optimizers.RMSprop):
    __doc__ = keras.optimizers.RMSprop.__doc__

    def _fused_rule(self):
        return "rmsprop" + ("_centered" if self.centered else "") + ("_momentum" if self.momentum > 0 else "")

    def _fused_hyper(self):
        return {"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon}

    def _fused_slots(self, variable):
        slots = [_slot(self._velocities, self, variable)]
        if self.momentum > 0:
            slots.append(_slot(self._momentums, self, variable))
        if self.centered:
            slots.append(_slot(self._average_gradients, self, variable))
        return slots


@_register
class Adagrad(_Fused, keras.optimizers.Adagrad):
    __doc__ = keras.optimizers.Adagrad.__doc__

    def _fused_rule(self):
        return "adagrad"

    def _fused_hyper(self):
        return {"epsilon": self.epsilon}

    def _fused_slots(self, variable):
        return [_slot(self._accumulators, self, variable)]


@_register
class Adadelta(_Fused, keras.optimizers.Adadelta):
    __doc__ = keras.optimizers.Adadelta.__doc__

    def _fused_rule(self):
        return "adadelta"

    def _fused_hyper(self):
        return {"rho": self.rho, "epsilon": self.epsilon}

    def _fused_slots(self, variable):
        return [_slot(self._accumulated_grads, self, variable),
                _slot(self._accumulated_delta_vars, self, variable)]


class _AdamSlots:
    def _fused_hyper(self):
        # Keras's Adam/Lamb take (1 - beta) from the Python floats (exact, as
        # here) but their bias corrections 1 - beta^t from float32-rounded
        # betas in the variable dtype; the engine computes those in double.
        # For beta_2 = 0.999 the step size differs by ~6e-6 relative.
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}

    def _fused_slots(self, variable):
        slots = [_slot(self._momentums, self, variable), _slot(self._velocities, self, variable)]
        if getattr(self, "amsgrad", False):
            slots.append(_slot(self._velocity_hats, self, variable))
        return slots


@_register
class Adam(_AdamSlots, _Fused, keras.optimizers.Adam):
    __doc__ = keras.optimizers.Adam.__doc__

    def _fused_rule(self):
        return "adam_amsgrad" if self.amsgrad else "adam"


@_register
class AdamW(_AdamSlots, _Fused, keras.optimizers.AdamW):
    __doc__ = keras.optimizers.AdamW.__doc__

    def _fused_rule(self):
        return "adam_amsgrad" if self.amsgrad else "adam"


@_register
class Adamax(_Fused, keras.optimizers.Adamax):
    __doc__ = keras.optimizers.Adamax.__doc__

    def _fused_rule(self):
        return "adamax"

    def _fused_hyper(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}

    def _fused_slots(self, variable):
        return [_slot(self._m, self, variable), _slot(self._u, self, variable)]


@_register
class Nadam(_AdamSlots, _Fused, keras.optimizers.Nadam):
    __doc__ = keras.optimizers.Nadam.__doc__

    def _fused_rule(self):
        return "nadam"

    def _fused_hyper(self):
        return {"beta_1": _keras_cast(self.beta_1), "beta_2": _keras_cast(self.beta_2),
                "epsilon": self.epsilon, "u_product": self._u_product}

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not self._fused_possible():  # Keras's own (per backend) Nadam update
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        # Keras's Nadam advances its momentum-schedule product, then updates;
        # do the first part here, once, for fused and unfused variables alike.
        dtype = self._u_product.dtype
        self.assign(self._u_product,
                    self._u_product * self.beta_1
                    * (1.0 - 0.5 * keras.ops.power(0.96, keras.ops.cast(self.iterations + 1, dtype))))
        unfused_update = super(keras.optimizers.Nadam, self)._backend_update_step
        return self._fused_update_step(grads, trainable_variables, learning_rate, unfused_update)


@_register
class Ftrl(_Fused, keras.optimizers.Ftrl):
    __doc__ = keras.optimizers.Ftrl.__doc__

    def _fused_rule(self):
        return "ftrl"

    def _fused_hyper(self):
        return {"learning_rate_power": self.learning_rate_power,
                "l1_regularization_strength": self.l1_regularization_strength,
                "l2_regularization_strength": self.l2_regularization_strength,
                "l2_shrinkage_regularization_strength": self.l2_shrinkage_regularization_strength,
                "beta": self.beta}

    def _fused_slots(self, variable):
        return [_slot(self._accumulators, self, variable), _slot(self._linears, self, variable)]


@_register
class Lion(_Fused, keras.optimizers.Lion):
    __doc__ = keras.optimizers.Lion.__doc__

    def _fused_rule(self):
        return "lion"

    def _fused_hyper(self):
        return {"beta_1": _keras_cast(self.beta_1), "beta_2": _keras_cast(self.beta_2)}

    def _fused_slots(self, variable):
        return [_slot(self._momentums, self, variable)]


@_register
class Lamb(_AdamSlots, _Fused, keras.optimizers.Lamb):
    __doc__ = keras.optimizers.Lamb.__doc__
    _fused_on_gpu = False

    def _fused_rule(self):
        return "lamb"


@_register
class Adafactor(_Fused, keras.optimizers.Adafactor):
    __doc__ = keras.optimizers.Adafactor.__doc__
    _fused_on_gpu = False

    def _fused_rule(self):
        return "adafactor"

    def _fused_hyper(self):
        return {"beta_2_decay": self.beta_2_decay, "epsilon_1": self.epsilon_1,
                "epsilon_2": _keras_cast(self.epsilon_2), "clip_threshold": self.clip_threshold}

    def _fused_slots(self, variable):
        return [_slot(self._r, self, variable), _slot(self._c, self, variable),
                _slot(self._v, self, variable)]

    def _fused_variable_ok(self, variable):
        # Rank < 2 variables have 0-d r/c placeholders; they must share the dtype.
        return all(keras.backend.standardize_dtype(s.dtype) == keras.backend.standardize_dtype(variable.dtype) for s in self._fused_slots(variable))


@_register
class ScheduleFreeAdamW(_Fused, keras.optimizers.ScheduleFreeAdamW):
    __doc__ = keras.optimizers.ScheduleFreeAdamW.__doc__

    def _fused_rule(self):
        return "schedule_free_adamw"

    def _fused_hyper(self):
        # The built-in on TensorFlow recovers x from the updated z, on JAX
        # from the old one (see rules/schedule_free_adamw.h); match each.
        x_from_new_z = 1.0 if keras.backend.backend() == "tensorflow" else 0.0
        return {"beta_1": _keras_cast(self.beta_1), "beta_2": _keras_cast(self.beta_2),
                "epsilon": _keras_cast(self.epsilon), "warmup_steps": self.warmup_steps,
                "x_from_new_z": x_from_new_z}

    def _fused_slots(self, variable):
        return [_slot(self._momentums, self, variable), _slot(self._velocities, self, variable)]


@_register
class Muon(_Fused, keras.optimizers.Muon):
    """Keras's Muon; its AdamW variables run in the fused op, its Muon
    variables (orthogonalized momentum, a matrix multiply) keep Keras's update."""

    _fuse_weight_decay = False  # Muon decays Muon and Adam variables differently

    def _fused_rule(self):
        return "adam"

    def _fused_hyper(self):
        return {"beta_1": self.adam_beta_1, "beta_2": self.adam_beta_2, "epsilon": self.epsilon}

    def _fused_slots(self, variable):
        index = self._get_variable_index(variable)
        return [self.momentums[index], self.adam_velocities[index]]

    def _fused_variable_ok(self, variable):
        return self.adam_velocities[self._get_variable_index(variable)] is not None

    def _fused_learning_rate(self, learning_rate):
        return learning_rate * self.adam_lr_ratio


class _RuleOptimizer(_Fused):
    """A rule Keras does not ship, on ``keras.optimizers.Optimizer``: its slots
    are the rule's states (names and order from the engine's registry, one
    variable per state and model variable, zeros) and its hyperparameters are
    the attributes of the same names. A subclass gives `_rule` (the engine
    rule), its constructor and `update_step` in ``keras.ops`` (Keras's update:
    the fallback, and every backend but TensorFlow's)."""

    _rule: str

    @property
    def _state_names(self) -> list:
        return _core.rules()[self._rule]["states"]

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._rule_slots = {
            name: [self.add_variable_from_reference(v, name) for v in variables]
            for name in self._state_names}

    def _fused_rule(self):
        return self._rule

    def _fused_hyper(self):
        return {name: getattr(self, name) for name in _core.rules()[self._rule]["hyper"]}

    def _fused_slots(self, variable):
        index = self._get_variable_index(variable)
        return [self._rule_slots[name][index] for name in self._state_names]

    def _slots_of(self, variable) -> list:
        """This variable's slot variables, in the rule's order (for `update_step`)."""
        return self._fused_slots(variable)

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in _core.rules()[self._rule]["hyper"]})
        return config


@_register
class Adan(_RuleOptimizer, keras.optimizers.Optimizer):
    __doc__ = """Adan for Keras (Keras has none): ``keras.optimizers.Optimizer``'s
    arguments plus ``beta_1``, ``beta_2``, ``beta_3`` and ``epsilon``. On the
    TensorFlow backend the step is one fused op; elsewhere (and under XLA) it
    is `update_step`, the same formulas in ``keras.ops``. ``weight_decay`` is
    Keras's decoupled decay. The update, as ``fusedopt.Adan``:

    """ + fusedopt_optimizers.Adan.__doc__

    _rule = "adan"

    def __init__(self, learning_rate=0.001, beta_1=0.98, beta_2=0.92, beta_3=0.99, epsilon=1e-8,
                 weight_decay=None, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 use_ema=False, ema_momentum=0.99, ema_overwrite_frequency=None,
                 loss_scale_factor=None, gradient_accumulation_steps=None, name="adan", **kwargs):
        for arg, value in (("beta_1", beta_1), ("beta_2", beta_2), ("beta_3", beta_3)):
            check_number(value, arg, low=0.0, high=1.0, high_open=True)
        check_number(epsilon, "epsilon", low=0.0)
        super().__init__(learning_rate=learning_rate, name=name, weight_decay=weight_decay,
                         clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm,
                         use_ema=use_ema, ema_momentum=ema_momentum,
                         ema_overwrite_frequency=ema_overwrite_frequency,
                         loss_scale_factor=loss_scale_factor,
                         gradient_accumulation_steps=gradient_accumulation_steps, **kwargs)
        self.beta_1, self.beta_2, self.beta_3, self.epsilon = beta_1, beta_2, beta_3, epsilon

    def update_step(self, gradient, variable, learning_rate):
        ops = keras.ops
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        t = ops.cast(self.iterations + 1, dtype)
        b1, b2, b3 = (ops.cast(b, dtype) for b in (self.beta_1, self.beta_2, self.beta_3))
        m, v, n, g_prev = self._slots_of(variable)
        d = ops.where(ops.equal(self.iterations, 0), ops.zeros_like(gradient),
                      ops.subtract(gradient, g_prev))
        self.assign(m, ops.add(ops.multiply(b1, m), ops.multiply(1 - b1, gradient)))
        self.assign(v, ops.add(ops.multiply(b2, v), ops.multiply(1 - b2, d)))
        w = ops.add(gradient, ops.multiply(b2, d))
        self.assign(n, ops.add(ops.multiply(b3, n), ops.multiply(1 - b3, ops.square(w))))
        self.assign(g_prev, gradient)
        step_m = lr / (1 - ops.power(b1, t))
        step_v = lr * b2 / (1 - ops.power(b2, t))
        denominator = ops.sqrt(n) / ops.sqrt(1 - ops.power(b3, t)) + ops.cast(self.epsilon, dtype)
        self.assign_sub(variable, ops.divide(ops.add(step_m * m, step_v * v), denominator))
