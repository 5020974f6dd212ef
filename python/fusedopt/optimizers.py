"""Stateful optimizers over NumPy arrays, with Keras's names, arguments and numerics.

Each optimizer owns a list of parameter arrays and updates them in place with
one native call per step (all tensors at once, GIL released)::

    import numpy as np, fusedopt
    w = np.zeros((3, 2), np.float32)
    opt = fusedopt.Adam([w], learning_rate=1e-2)
    for _ in range(10):
        grad = 2 * (w - 1)               # d/dw of ||w - 1||^2
        opt.step([grad])

Slots (optimizer state) have Keras's names and order (``opt.slots``), so that
``state_dict()`` mirrors a Keras optimizer's variables. Weight decay is Keras's
decoupled form ``p -= p * weight_decay * lr``, applied before the rule in the
same pass over memory.

Every optimizer also takes fused regularization (``fusedopt/regularizers.h``),
in the same pass, all 0 (off) by default:

- ``l1``, ``l2``: coupled, Keras's ``L1L2`` gradient added to the gradient,
  computed from ``p`` before the weight decay: ``g += l1*sign(p) + 2*l2*p``.
  (After gradient clipping: a Keras ``kernel_regularizer`` gradient would be
  clipped together with the loss gradient.)
- ``proximal_l1``: after the rule, the proximal soft threshold
  ``p = sign(p) * max(|p| - lr*proximal_l1, 0)``, which gives exact zeros
  (FOBOS: Duchi & Singer, JMLR 2009).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from fusedopt import _core, _cuda
from fusedopt._arrays import as_array_list, copy, full_like, zeros, zeros_like

LearningRate = Union[float, Callable[[int], Any]]

__all__ = [
    "Optimizer", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "AdamW", "Adamax",
    "Nadam", "Ftrl", "Lion", "Lamb", "Adafactor", "ScheduleFreeAdamW", "Muon", "Adan",
]


def _check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    try:
        x = float(value)
    except OverflowError:  # an int too large for a double
        raise ValueError(f"{name} must be finite, got an int of {int(value).bit_length()} bits") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    if low is not None and (x < low or (low_open and x == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {x}")
    if high is not None and (x > high or (high_open and x == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {x}")
    return x


def _check_beta(value: Any, name: str) -> float:
    return _check_number(value, name, low=0.0, high=1.0, high_open=True)


class Optimizer:
    """Base class: parameter list, slots, iteration count, learning rate, clipping.

    Subclasses set the engine rule and its hyperparameters (``_rule``,
    ``_hyper()``); the slots are the rule's states, named and ordered as the
    engine declares them (its ``kStateNames``: Keras's slot names).
    """

    def __init__(
        self,
        params: Sequence[Any],
        learning_rate: LearningRate,
        *,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        name: str | None = None,
        l1: float = 0.0,
        l2: float = 0.0,
        proximal_l1: float = 0.0,
    ) -> None:
        self.params: list[np.ndarray] = as_array_list(params, "params")
        # CUDA arrays (PyTorch, CuPy: fusedopt._cuda) run on the CUDA engine.
        self._on_cuda = bool(self.params) and _cuda.is_cuda_array(self.params[0])
        if self._on_cuda:
            _cuda.check_params(self.params)
        for i, p in enumerate(() if self._on_cuda else self.params):
            if not isinstance(p, np.ndarray):
                raise TypeError(f"params[{i}] must be a numpy.ndarray or DLPack CPU tensor, "
                                f"got {type(p).__name__}")
            if p.dtype not in (np.float32, np.float64):
                raise TypeError(f"params[{i}] has dtype {p.dtype}; supported: float32, float64")
            if p.dtype != self.params[0].dtype:
                raise TypeError(f"params[{i}] has dtype {p.dtype} but params[0] has {self.params[0].dtype}")
            if not p.flags.c_contiguous:
                raise ValueError(f"params[{i}] must be C-contiguous")
            if not p.flags.aligned:  # the engine's vector loads need dtype alignment
                raise ValueError(f"params[{i}] is not aligned to its dtype ({p.dtype.itemsize} bytes)")
            if not p.flags.writeable:
                raise ValueError(f"params[{i}] is read-only")
        if callable(learning_rate):
            self._learning_rate: LearningRate = learning_rate
        else:
            self._learning_rate = _check_number(learning_rate, "learning_rate", low=0.0)
        self.weight_decay = None if weight_decay is None else _check_number(weight_decay, "weight_decay", low=0.0)
        if clipnorm is not None and global_clipnorm is not None:
            raise ValueError("only one of clipnorm and global_clipnorm can be set")
        self.clipnorm = None if clipnorm is None else _check_number(clipnorm, "clipnorm", low=0.0, low_open=True)
        self.clipvalue = None if clipvalue is None else _check_number(clipvalue, "clipvalue", low=0.0, low_open=True)
        self.global_clipnorm = (None if global_clipnorm is None
                                else _check_number(global_clipnorm, "global_clipnorm", low=0.0, low_open=True))
        self.l1 = _check_number(l1, "l1", low=0.0)
        self.l2 = _check_number(l2, "l2", low=0.0)
        self.proximal_l1 = _check_number(proximal_l1, "proximal_l1", low=0.0)
        self.name = name or type(self).__name__.lower()
        self.iterations = 0
        self.slots: dict[str, list[np.ndarray]] = {}
        self._build()

    # -- subclass interface -------------------------------------------------
    @property
    def _rule(self) -> str:
        raise NotImplementedError

    def _hyper(self) -> dict[str, float]:
        return {}

    @property
    def _slot_names(self) -> tuple[str, ...]:
        """This optimizer's slots: its rule's states, in the engine's order."""
        return tuple(_core.rules()[self._rule]["states"])

    def _build(self) -> None:
        for slot in self._slot_names:
            self.slots[slot] = [zeros_like(p) for p in self.params]

    def _extra_state(self) -> dict[str, float]:
        """Scalars beyond the slots that a state dict must carry."""
        return {}

    def _load_extra_state(self, extra: Mapping[str, float]) -> None:
        pass

    # -- public API -----------------------------------------------------------
    @property
    def learning_rate(self) -> float:
        """The learning rate for the next step (a schedule is evaluated at `iterations`)."""
        lr = self._learning_rate
        value = lr(self.iterations) if callable(lr) else lr
        try:  # a schedule may return a NumPy or framework scalar
            value = float(value) if hasattr(value, "__float__") else value
        except (TypeError, ValueError):
            pass
        return _check_number(value, "learning_rate", low=0.0)

    @learning_rate.setter
    def learning_rate(self, value: LearningRate) -> None:
        self._learning_rate = value if callable(value) else _check_number(value, "learning_rate", low=0.0)

    def step(self, grads: Sequence[Any]) -> None:
        """Apply one update with `grads` (one array per parameter, same shapes and dtype)."""
        grads = as_array_list(grads, "grads")
        lr = self.learning_rate
        if self.clipnorm or self.clipvalue or self.global_clipnorm:
            self._apply(grads, lr, dry_run=True)  # validate before computing on the grads
            grads = self._clip(grads)
        self._apply(grads, lr, dry_run=False)
        self.iterations += 1

    def _regularization(self) -> dict[str, float]:
        """The engine's fused-regularization arguments."""
        return {"l1": self.l1, "l2": self.l2, "proximal_l1": self.proximal_l1}

    def _engine_apply(self, *args, **kwargs) -> None:
        """The engine's apply for this optimizer's device (CPU or CUDA)."""
        if self._on_cuda:
            _cuda.apply(*args, **kwargs)
        else:
            _cuda.engine_apply(*args, **kwargs, state_names=self._slot_names)

    def _apply(self, grads: list, lr: float, dry_run: bool) -> None:
        self._engine_apply(self._rule, self.params, grads, [self.slots[s] for s in self._slot_names],
                           self._hyper(), self.iterations + 1, lr, self.weight_decay or 0.0,
                           dry_run, **self._regularization())

    def _clip(self, grads: list) -> list:
        """Keras's clipping: clipvalue, then clipnorm per tensor or global_clipnorm."""
        if self._on_cuda:
            return _cuda.clip(grads, self.clipvalue, self.clipnorm, self.global_clipnorm)
        grads = [np.array(g, copy=True) for g in grads]
        if self.clipvalue is not None:
            for g in grads:  # in place: np.clip of a 0-d array returns a scalar, not an array
                np.clip(g, -self.clipvalue, self.clipvalue, out=g)
        if self.clipnorm is not None:
            for g in grads:
                norm = float(np.sqrt(np.sum(np.square(g, dtype=np.float64))))
                if norm > self.clipnorm:
                    g *= g.dtype.type(self.clipnorm / norm)
        if self.global_clipnorm is not None:
            norm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads))
            if norm > self.global_clipnorm:
                for g in grads:
                    g *= g.dtype.type(self.global_clipnorm / norm)
        return grads

    def state_dict(self) -> dict[str, Any]:
        """A deep copy of the state: iterations, slots (Keras order) and extra scalars."""
        return {
            "iterations": self.iterations,
            "slots": {k: [None if a is None else copy(a) for a in v] for k, v in self.slots.items()},
            "extra": dict(self._extra_state()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict()`; everything is checked before anything is written."""
        if not isinstance(state, Mapping) or "slots" not in state or "iterations" not in state:
            raise TypeError("state must be a mapping with 'iterations' and 'slots'")
        iterations = state["iterations"]
        if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
            raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
        slots = state["slots"]
        if set(slots) != set(self.slots):
            raise ValueError(f"state slots {sorted(slots)} do not match {sorted(self.slots)}")
        for name, arrays in self.slots.items():
            given = slots[name]
            if len(given) != len(arrays):
                raise ValueError(f"slot {name!r} has {len(given)} arrays, expected {len(arrays)}")
            for i, (src, dst) in enumerate(zip(given, arrays)):
                if (src is None) != (dst is None):  # Muon keeps no velocity for 2-D params
                    raise ValueError(f"slots[{name!r}][{i}] must be {'None' if dst is None else 'an array'}")
                if dst is None:
                    continue
                src = _cuda.to_numpy(src) if _cuda.is_cuda_array(src) else np.asarray(src)
                if src.shape != tuple(dst.shape):
                    raise ValueError(f"slots[{name!r}][{i}] has shape {src.shape}, expected {dst.shape}")
                if not np.all(np.isfinite(src)):
                    raise ValueError(f"slots[{name!r}][{i}] holds non-finite values")
        extra = state.get("extra", {})
        self._check_extra_state(extra)
        for name, arrays in self.slots.items():
            for src, dst in zip(slots[name], arrays):
                if dst is not None and self._on_cuda:
                    _cuda.copy_into(dst, src)
                elif dst is not None:
                    host = _cuda.to_numpy(src) if _cuda.is_cuda_array(src) else np.asarray(src)
                    np.copyto(dst, host, casting="same_kind")
        self.iterations = int(iterations)
        self._load_extra_state(extra)

    def _check_extra_state(self, extra: Mapping[str, float]) -> None:
        expected = set(self._extra_state())
        if set(extra) != expected:
            raise ValueError(f"state 'extra' keys {sorted(extra)} do not match {sorted(expected)}")

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (beyond params), as Keras's get_config lists them."""
        lr = self._learning_rate
        config = {
            "name": self.name,
            "learning_rate": lr if callable(lr) else float(lr),
            "weight_decay": self.weight_decay,
            "clipnorm": self.clipnorm,
            "clipvalue": self.clipvalue,
            "global_clipnorm": self.global_clipnorm,
        }
        # Not Keras arguments: listed only when in use, so the rest matches Keras.
        config.update({k: v for k, v in self._regularization().items() if v != 0.0})
        return config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.params)} params, iterations={self.iterations})"


class SGD(Optimizer):
    r"""Gradient descent with optional (Nesterov) momentum, as ``keras.optimizers.SGD``.

    .. math::
        m \leftarrow \mu m - \eta g,\quad p \leftarrow p + m
        \quad(\text{nesterov: } p \leftarrow p + \mu m - \eta g)

    With ``momentum=0`` this is plain ``p -= lr * g`` and there is no slot.
    ``dampened=True`` (not in Keras) uses the classic averaged momentum
    ``m = mu*m + (1-mu)*g; p -= lr*m``. Reference: Sutskever et al., ICML 2013.
    """

    def __init__(self, params, learning_rate: LearningRate = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, dampened: bool = False, **kwargs) -> None:
        self.momentum = _check_number(momentum, "momentum", low=0.0, high=1.0)
        if dampened and nesterov:
            raise ValueError("dampened and nesterov cannot both be set")
        if dampened and self.momentum >= 1.0:
            raise ValueError("momentum must be < 1 with dampened=True")
        self.nesterov = bool(nesterov)
        self.dampened = bool(dampened)
        super().__init__(params, learning_rate, **kwargs)

    @property
    def _rule(self) -> str:
        if self.momentum == 0:
            return "sgd"
        return "sgd_dampened" if self.dampened else "sgd_nesterov" if self.nesterov else "sgd_momentum"

    def _hyper(self):
        return {} if self.momentum == 0 else {"momentum": self.momentum}

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov,
                "dampened": self.dampened}


class RMSprop(Optimizer):
    r"""RMSprop, as ``keras.optimizers.RMSprop`` (plain, centered, with momentum).

    .. math::
        v \leftarrow \rho v + (1-\rho) g^2,\quad
        \Delta = \eta g / \sqrt{v - [\bar g^2] + \epsilon},\quad
        p \leftarrow p - \Delta \;(\text{or } m \leftarrow \mu m + \Delta,\ p \leftarrow p - m)

    Slots: velocity, [momentum], [average_gradient]. Reference: Hinton,
    Neural Networks for ML, lecture 6e; Graves 2013 (centered).
    """

    def __init__(self, params, learning_rate: LearningRate = 0.001, rho: float = 0.9,
                 momentum: float = 0.0, epsilon: float = 1e-7, centered: bool = False,
                 **kwargs) -> None:
        self.rho = _check_beta(rho, "rho")
        self.momentum = _check_beta(momentum, "momentum")
        self.epsilon = _check_number(epsilon, "epsilon", low=0.0)
        self.centered = bool(centered)
        super().__init__(params, learning_rate, **kwargs)

    @property
    def _rule(self):
        return "rmsprop" + ("_centered" if self.centered else "") + ("_momentum" if self.momentum > 0 else "")

    def _hyper(self):
        return {"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon}

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "centered": self.centered}


class Adagrad(Optimizer):
    r"""Adagrad, as ``keras.optimizers.Adagrad``.

    .. math:: a \leftarrow a + g^2,\quad p \leftarrow p - \eta g / \sqrt{a + \epsilon}

    Slot: accumulator (starts at `initial_accumulator_value`). Reference:
    Duchi, Hazan & Singer, JMLR 2011.
    """


    def __init__(self, params, learning_rate: LearningRate = 0.001,
                 initial_accumulator_value: float = 0.1, epsilon: float = 1e-7, **kwargs) -> None:
        self.initial_accumulator_value = _check_number(initial_accumulator_value,
                                                       "initial_accumulator_value", low=0.0)
        self.epsilon = _check_number(epsilon, "epsilon", low=0.0)
        super().__init__(params, learning_rate, **kwargs)

    _rule = "adagrad"

    def _build(self):
        self.slots["accumulator"] = [full_like(p, self.initial_accumulator_value) for p in self.params]

    def _hyper(self):
        return {"epsilon": self.epsilon}

    def get_config(self):
        return {**super().get_config(), "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon}


class Adadelta(Optimizer):
    r"""Adadelta, as ``keras.optimizers.Adadelta``.

    .. math::
        a_g \leftarrow \rho a_g + (1-\rho) g^2,\quad
        d = -\sqrt{a_d+\epsilon}\, g / \sqrt{a_g+\epsilon},\quad
        a_d \leftarrow \rho a_d + (1-\rho) d^2,\quad p \leftarrow p + \eta d

    Slots: accumulated_grad, accumulated_delta_var. Reference: Zeiler 2012.
    """

    _rule = "adadelta"

    def __init__(self, params, learning_rate: LearningRate = 0.001, rho: float = 0.95,
                 epsilon: float = 1e-7, **kwargs) -> None:
        self.rho = _check_beta(rho, "rho")
        self.epsilon = _check_number(epsilon, "epsilon", low=0.0)
        super().__init__(params, learning_rate, **kwargs)

    def _hyper(self):
        return {"rho": self.rho, "epsilon": self.epsilon}

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}


class _AdamFamily(Optimizer):
    """beta_1, beta_2, epsilon, checked once."""

    def __init__(self, params, learning_rate, beta_1, beta_2, epsilon, **kwargs) -> None:
        self.beta_1 = _check_beta(beta_1, "beta_1")
        self.beta_2 = _check_beta(beta_2, "beta_2")
        self.epsilon = _check_number(epsilon, "epsilon", low=0.0)
        super().__init__(params, learning_rate, **kwargs)

    def _hyper(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}

    def get_config(self):
        return {**super().get_config(), **self._hyper()}


class Adam(_AdamFamily):
    r"""Adam (and AMSGrad), as ``keras.optimizers.Adam``.

    .. math::
        m \leftarrow m + (g-m)(1-\beta_1),\quad v \leftarrow v + (g^2-v)(1-\beta_2),\\
        p \leftarrow p - \eta\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,\frac{m}{\sqrt{v}+\epsilon}

    (amsgrad: ``v`` is replaced by its running maximum ``velocity_hat``).
    Slots: momentum, velocity, [velocity_hat]. References: Kingma & Ba, ICLR
    2015; Reddi, Kale & Kumar, ICLR 2018.
    """

    def __init__(self, params, learning_rate: LearningRate = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7, amsgrad: bool = False,
                 **kwargs) -> None:
        self.amsgrad = bool(amsgrad)
        super().__init__(params, learning_rate, beta_1, beta_2, epsilon, **kwargs)

    @property
    def _rule(self):
        return "adam_amsgrad" if self.amsgrad else "adam"

    def get_config(self):
        return {**super().get_config(), "amsgrad": self.amsgrad}


class AdamW(Adam):
    r"""Adam with decoupled weight decay, as ``keras.optimizers.AdamW``
    (``weight_decay=0.004`` by default). Reference: Loshchilov & Hutter, ICLR 2019.
    """

    def __init__(self, params, learning_rate: LearningRate = 0.001, weight_decay: float = 0.004,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
                 amsgrad: bool = False, **kwargs) -> None:
        super().__init__(params, learning_rate, beta_1, beta_2, epsilon, amsgrad,
                         weight_decay=weight_decay, **kwargs)


class Adamax(_AdamFamily):
    r"""Adamax, as ``keras.optimizers.Adamax``.

    .. math::
        m \leftarrow m + (g-m)(1-\beta_1),\quad u \leftarrow \max(\beta_2 u, |g|),\quad
        p \leftarrow p - \frac{\eta\, m}{(1-\beta_1^t)(u+\epsilon)}

    Slots: momentum, norm. Reference: Kingma & Ba, ICLR 2015, section 7.1.
    """

    _rule = "adamax"

    def __init__(self, params, learning_rate: LearningRate = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7, **kwargs) -> None:
        super().__init__(params, learning_rate, beta_1, beta_2, epsilon, **kwargs)


class Nadam(_AdamFamily):
    r"""Nadam, as ``keras.optimizers.Nadam`` (momentum schedule
    :math:`u_t = \beta_1(1 - 0.5\cdot 0.96^t)` and its running product).

    .. math::
        \hat m = \frac{u_{t+1} m}{1-\prod_{i\le t+1} u_i} + \frac{(1-u_t) g}{1-\prod_{i\le t} u_i},\quad
        p \leftarrow p - \eta\,\hat m / (\sqrt{v/(1-\beta_2^t)} + \epsilon)

    Slots: momentum, velocity; the running product is ``state_dict()["extra"]["u_product"]``.
    Reference: Dozat, ICLR 2016 workshop.
    """

    _rule = "nadam"

    def __init__(self, params, learning_rate: LearningRate = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7, **kwargs) -> None:
        self.u_product = 1.0
        super().__init__(params, learning_rate, beta_1, beta_2, epsilon, **kwargs)

    def _apply(self, grads, lr, dry_run):
        u_product = _core.nadam_next_u_product(self.u_product, self.beta_1, self.iterations + 1)
        self._engine_apply(self._rule, self.params, grads, [self.slots[s] for s in self._slot_names],
                           {**self._hyper(), "u_product": u_product}, self.iterations + 1, lr,
                           self.weight_decay or 0.0, dry_run, **self._regularization())
        if not dry_run:
            self.u_product = u_product

    def _extra_state(self):
        return {"u_product": self.u_product}

    def _load_extra_state(self, extra):
        self.u_product = float(extra["u_product"])


class Ftrl(Optimizer):
    r"""FTRL-Proximal, as ``keras.optimizers.Ftrl``.

    With :math:`k = -\text{learning\_rate\_power}`:

    .. math::
        a' = a + g^2,\quad
        \ell \leftarrow \ell + g + 2\lambda_s p - \frac{a'^k - a^k}{\eta} p,\quad
        p \leftarrow \frac{\mathrm{clip}(\ell, -\lambda_1, \lambda_1) - \ell}{a'^k/\eta + 2(\lambda_2 + \beta/(2\eta))}

    Slots: accumulator, linear. Reference: McMahan et al., KDD 2013.
    """

    _rule = "ftrl"

    def __init__(self, params, learning_rate: LearningRate = 0.001, learning_rate_power: float = -0.5,
                 initial_accumulator_value: float = 0.1, l1_regularization_strength: float = 0.0,
                 l2_regularization_strength: float = 0.0,
                 l2_shrinkage_regularization_strength: float = 0.0, beta: float = 0.0,
                 **kwargs) -> None:
        self.learning_rate_power = _check_number(learning_rate_power, "learning_rate_power", high=0.0)
        self.initial_accumulator_value = _check_number(initial_accumulator_value,
                                                       "initial_accumulator_value", low=0.0)
        self.l1_regularization_strength = _check_number(l1_regularization_strength,
                                                        "l1_regularization_strength", low=0.0)
        self.l2_regularization_strength = _check_number(l2_regularization_strength,
                                                        "l2_regularization_strength", low=0.0)
        self.l2_shrinkage_regularization_strength = _check_number(
            l2_shrinkage_regularization_strength, "l2_shrinkage_regularization_strength", low=0.0)
        self.beta = _check_number(beta, "beta", low=0.0)
        super().__init__(params, learning_rate, **kwargs)

    def _build(self):
        self.slots["accumulator"] = [full_like(p, self.initial_accumulator_value) for p in self.params]
        self.slots["linear"] = [zeros_like(p) for p in self.params]

    def _hyper(self):
        return {
            "learning_rate_power": self.learning_rate_power,
            "l1_regularization_strength": self.l1_regularization_strength,
            "l2_regularization_strength": self.l2_regularization_strength,
            "l2_shrinkage_regularization_strength": self.l2_shrinkage_regularization_strength,
            "beta": self.beta,
        }

    def get_config(self):
        return {**super().get_config(), **self._hyper(),
                "initial_accumulator_value": self.initial_accumulator_value}


class Lion(Optimizer):
    r"""Lion, as ``keras.optimizers.Lion``.

    .. math::
        p \leftarrow p - \eta\,\mathrm{sign}(\beta_1 m + (1-\beta_1) g),\quad
        m \leftarrow \beta_2 m + (1-\beta_2) g

    Slot: momentum. Reference: Chen et al., "Symbolic Discovery of
    Optimization Algorithms", NeurIPS 2023.
    """

    _rule = "lion"

    def __init__(self, params, learning_rate: LearningRate = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.99, **kwargs) -> None:
        # Keras's ranges: beta_1 in (0, 1], beta_2 in [0, 1).
        self.beta_1 = _check_number(beta_1, "beta_1", low=0.0, high=1.0, low_open=True)
        self.beta_2 = _check_beta(beta_2, "beta_2")
        super().__init__(params, learning_rate, **kwargs)

    def _hyper(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2}

    def get_config(self):
        return {**super().get_config(), **self._hyper()}


class Lamb(_AdamFamily):
    r"""LAMB, as ``keras.optimizers.Lamb``: Adam's direction with a per-tensor trust ratio.

    .. math::
        u = \frac{m/(1-\beta_1^t)}{\sqrt{v/(1-\beta_2^t)}+\epsilon},\quad
        r = \|p\| / \|u\| \;(1 \text{ if either norm is } 0),\quad p \leftarrow p - r\,\eta\,u

    Norms are reduced in a fixed order: results do not depend on the thread
    count. Slots: momentum, velocity. Reference: You et al., ICLR 2020.
    """

    _rule = "lamb"

    def __init__(self, params, learning_rate: LearningRate = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7, **kwargs) -> None:
        super().__init__(params, learning_rate, beta_1, beta_2, epsilon, **kwargs)


class Adafactor(Optimizer):
    r"""Adafactor, as ``keras.optimizers.Adafactor``: factored second moment for rank >= 2.

    .. math::
        \rho_t = \min(\eta, 1/\sqrt t),\ \alpha = \max(\epsilon_2, \mathrm{rms}(p))\rho_t,\
        s = g^2 + \epsilon_1,\ \hat\beta = 1 - t^{d}\\
        r \leftarrow \hat\beta r + (1-\hat\beta)\,\mathrm{mean}_{cols}(s),\
        c \leftarrow \hat\beta c + (1-\hat\beta)\,\mathrm{mean}_{rows}(s),\
        v = \frac{r}{\mathrm{mean}(r)} c^\top\\
        u = g/\sqrt v,\ p \leftarrow p - \alpha\, u / \max(1, \mathrm{rms}(u)/\text{clip})

    Slots: r (shape[:-1]), c (shape[:-2] + shape[-1:]), velocity (kept, as in
    Keras); rank < 2 parameters keep a full ``velocity`` and 0-d r, c
    placeholders. ``relative_step`` is accepted for compatibility: in Keras it
    re-applies :math:`\min(\eta, 1/\sqrt t)`, which :math:`\rho_t` already
    does. Reference: Shazeer & Stern, ICML 2018.
    """

    _rule = "adafactor"

    def __init__(self, params, learning_rate: LearningRate = 0.001, beta_2_decay: float = -0.8,
                 epsilon_1: float = 1e-30, epsilon_2: float = 1e-3, clip_threshold: float = 1.0,
                 relative_step: bool = True, **kwargs) -> None:
        self.beta_2_decay = _check_number(beta_2_decay, "beta_2_decay", high=0.0)
        self.epsilon_1 = _check_number(epsilon_1, "epsilon_1", low=0.0)
        self.epsilon_2 = _check_number(epsilon_2, "epsilon_2", low=0.0)
        self.clip_threshold = _check_number(clip_threshold, "clip_threshold", low=0.0, low_open=True)
        self.relative_step = bool(relative_step)
        super().__init__(params, learning_rate, **kwargs)

    def _build(self):
        def factored(p, which):
            if p.ndim < 2:
                return zeros(p, ())
            shape = tuple(p.shape[:-1]) if which == 0 else tuple(p.shape[:-2]) + tuple(p.shape[-1:])
            return zeros(p, shape)

        self.slots["r"] = [factored(p, 0) for p in self.params]
        self.slots["c"] = [factored(p, 1) for p in self.params]
        self.slots["velocity"] = [zeros_like(p) for p in self.params]

    def _hyper(self):
        return {"beta_2_decay": self.beta_2_decay, "epsilon_1": self.epsilon_1,
                "epsilon_2": self.epsilon_2, "clip_threshold": self.clip_threshold}

    def get_config(self):
        return {**super().get_config(), **self._hyper(), "relative_step": self.relative_step}


class ScheduleFreeAdamW(_AdamFamily):
    r"""Schedule-Free AdamW, as ``keras.optimizers.ScheduleFreeAdamW``.

    The parameter holds :math:`y`; slot ``momentum`` holds :math:`z`
    (initialised to the parameter), ``velocity`` the second moment:

    .. math::
        z' = z - \eta_t g/(\sqrt{v/(1-\beta_2^t)}+\epsilon),\
        x = (y - (1-\beta_1) z)/\beta_1,\
        x' = (1-\tfrac1t) x + \tfrac1t z',\
        y \leftarrow (1-\beta_1) z' + \beta_1 x'

    with :math:`\eta_t = \eta\min(t/\text{warmup\_steps}, 1)`.
    ``x_from_new_z=True`` recovers x with z' instead of z: what the Keras
    built-in computes on the TensorFlow backend (it reads the momentum slot
    after updating it); the default follows the paper (and Keras on JAX). Reference:
    Defazio et al., "The Road Less Scheduled", NeurIPS 2024.
    """

    _rule = "schedule_free_adamw"

    def __init__(self, params, learning_rate: LearningRate = 0.0025, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-8, warmup_steps: int = 0,
                 x_from_new_z: bool = False, **kwargs) -> None:
        self.warmup_steps = int(_check_number(warmup_steps, "warmup_steps", low=0.0))
        self.x_from_new_z = bool(x_from_new_z)
        super().__init__(params, learning_rate, beta_1, beta_2, epsilon, **kwargs)
        if self.beta_1 == 0.0:
            raise ValueError("beta_1 must be > 0 for ScheduleFreeAdamW")

    def _build(self):
        self.slots["momentum"] = [copy(p) for p in self.params]
        self.slots["velocity"] = [zeros_like(p) for p in self.params]

    def _hyper(self):
        return {**super()._hyper(), "warmup_steps": self.warmup_steps,
                "x_from_new_z": self.x_from_new_z}


class Muon(Optimizer):
    r"""Muon, as ``keras.optimizers.Muon``: orthogonalized momentum for 2-D
    parameters, AdamW for the others.

    2-D parameters: :math:`m \leftarrow \mu m + g`, :math:`d = g + \mu m`
    (nesterov) or :math:`m`; :math:`O = \mathrm{NewtonSchulz}_5(d)`;
    :math:`p \leftarrow p - \eta\sqrt{\max(r, c)}\,\text{rms\_rate}\,O`. The
    elementwise parts run in the C++ engine; the Newton-Schulz iteration uses
    NumPy's matrix multiply. Other parameters use Adam with
    ``learning_rate * adam_lr_ratio`` and ``adam_weight_decay``.

    Slots: momentum (all parameters), velocity (Adam parameters only; None
    for the others, as in Keras). Keras's name-based ``exclude_layers`` /
    ``exclude_embeddings`` need variable paths: pass ``use_adam`` (one bool
    per parameter) instead. Reference: Jordan et al., 2024, "Muon".
    """

    def __init__(self, params, learning_rate: LearningRate = 0.001, adam_beta_1: float = 0.9,
                 adam_beta_2: float = 0.999, adam_weight_decay: float = 0.004,
                 epsilon: float = 1e-7, weight_decay: float = 0.004, muon_a: float = 3.4445,
                 muon_b: float = -4.7750, muon_c: float = 2.0315, adam_lr_ratio: float = 1.0,
                 momentum: float = 0.95, ns_steps: int = 5, nesterov: bool = True,
                 rms_rate: float | None = 0.2, use_adam: Sequence[bool] | None = None,
                 **kwargs) -> None:
        self.adam_beta_1 = _check_beta(adam_beta_1, "adam_beta_1")
        self.adam_beta_2 = _check_beta(adam_beta_2, "adam_beta_2")
        self.adam_weight_decay = _check_number(adam_weight_decay, "adam_weight_decay", low=0.0)
        self.epsilon = _check_number(epsilon, "epsilon", low=0.0)
        self.muon_a = _check_number(muon_a, "muon_a")
        self.muon_b = _check_number(muon_b, "muon_b")
        self.muon_c = _check_number(muon_c, "muon_c")
        self.adam_lr_ratio = _check_number(adam_lr_ratio, "adam_lr_ratio", low=0.0, low_open=True)
        self.momentum = _check_beta(momentum, "momentum")
        self.ns_steps = int(_check_number(ns_steps, "ns_steps", low=0.0))
        self.nesterov = bool(nesterov)
        self.rms_rate = None if rms_rate is None else _check_number(rms_rate, "rms_rate", low=0.0)
        self._use_adam_arg = use_adam
        super().__init__(params, learning_rate, weight_decay=weight_decay, **kwargs)

    def _build(self):
        if self._on_cuda:
            raise TypeError("params[0] is a CUDA array, which Muon does not support (its "
                            "Newton-Schulz step runs in NumPy); use CPU arrays")
        use_adam = self._use_adam_arg
        if use_adam is None:
            use_adam = [p.ndim != 2 for p in self.params]
        if len(use_adam) != len(self.params):
            raise ValueError(f"use_adam has {len(use_adam)} entries but params has {len(self.params)}")
        for i, (flag, p) in enumerate(zip(use_adam, self.params)):
            if not flag and p.ndim != 2:
                raise ValueError(f"use_adam[{i}] is False but params[{i}] is not 2-D")
        self.use_adam = [bool(f) for f in use_adam]
        self.slots["momentum"] = [np.zeros_like(p) for p in self.params]
        self.slots["velocity"] = [np.zeros_like(p) if a else None for p, a in zip(self.params, self.use_adam)]
        self._directions = [None if a else np.empty_like(p) for p, a in zip(self.params, self.use_adam)]

    def _groups(self, grads):
        adam = [i for i, a in enumerate(self.use_adam) if a]
        muon = [i for i, a in enumerate(self.use_adam) if not a]
        return adam, muon

    def _apply(self, grads, lr, dry_run):
        if len(grads) != len(self.params):
            raise ValueError(f"grads has {len(grads)} tensors but params has {len(self.params)}")
        adam, muon = self._groups(grads)
        pick = lambda xs, idx: [xs[i] for i in idx]  # noqa: E731
        m = self.slots["momentum"]
        adam_lr = lr * self.adam_lr_ratio
        # The engine's decay factor is weight_decay * (the kernel's learning
        # rate); Keras decays with the base learning rate, so rescale.
        adam_call = lambda run_dry: _core.apply(  # noqa: E731
            "adam", pick(self.params, adam), pick(grads, adam),
            [pick(m, adam), pick(self.slots["velocity"], adam)],
            {"beta_1": self.adam_beta_1, "beta_2": self.adam_beta_2, "epsilon": self.epsilon},
            self.iterations + 1, adam_lr, self.adam_weight_decay / self.adam_lr_ratio, run_dry,
            **self._regularization())
        momentum_call = lambda run_dry, muon_grads: _core.apply(  # noqa: E731
            "muon_momentum", pick(self._directions, muon), muon_grads, [pick(m, muon)],
            {"momentum": self.momentum, "nesterov": self.nesterov}, self.iterations + 1, lr, 0.0,
            run_dry)
        # Validate every call before any writes, so a bad grad changes nothing.
        # First the whole list with the caller's indices: the group calls see
        # sub-lists (other indices) and no one of them sees every param, so
        # aliasing across groups would pass. A Muon param's direction buffer
        # stands in for its (absent) velocity.
        _core.apply("adam", self.params, grads,
                    [m, [v if v is not None else d for v, d in zip(self.slots["velocity"], self._directions)]],
                    {"beta_1": self.adam_beta_1, "beta_2": self.adam_beta_2, "epsilon": self.epsilon},
                    self.iterations + 1, lr, 0.0, True)
        adam_call(True)
        momentum_call(True, pick(grads, muon))
        if dry_run:
            return
        adam_call(False)
        muon_grads = pick(grads, muon)
        if self.l1 or self.l2:  # the momentum kernel sees no params: add the L1/L2 gradient here
            muon_grads = [np.empty_like(g) for g in muon_grads]
            _core.l1l2_gradient(pick(self.params, muon), muon_grads, self.l1, self.l2)
            for r, i in zip(muon_grads, muon):
                r += grads[i]
        momentum_call(False, muon_grads)
        for i in muon:
            p = self.params[i]
            update = self._orthogonalize(self._directions[i])
            scale = lr * (math.sqrt(max(p.shape)) * self.rms_rate if self.rms_rate is not None else 1.0)
            # Decay and the proximal threshold are relative to this call's rate.
            wd = (self.weight_decay or 0.0) * lr / scale if scale > 0 else 0.0
            prox = self.proximal_l1 * lr / scale if scale > 0 else 0.0
            _core.apply("sgd", [p], [np.ascontiguousarray(update, p.dtype)], [], {},
                        self.iterations + 1, scale, wd, proximal_l1=prox)

    def _orthogonalize(self, x: np.ndarray) -> np.ndarray:
        """Keras's zeropower_via_newtonschulz5, in the parameter's dtype."""
        a, b, c = (x.dtype.type(v) for v in (self.muon_a, self.muon_b, self.muon_c))
        transposed = x.shape[0] > x.shape[1]
        if transposed:
            x = x.T
        x = x / (np.linalg.norm(x) + x.dtype.type(1e-7))
        for _ in range(self.ns_steps):
            gram = x @ x.T
            x = a * x + (b * gram + (c * gram) @ gram) @ x
        return x.T if transposed else x

    def get_config(self):
        return {**super().get_config(), "adam_beta_1": self.adam_beta_1, "adam_beta_2": self.adam_beta_2,
                "adam_weight_decay": self.adam_weight_decay, "epsilon": self.epsilon,
                "muon_a": self.muon_a, "muon_b": self.muon_b, "muon_c": self.muon_c,
                "adam_lr_ratio": self.adam_lr_ratio, "momentum": self.momentum,
                "ns_steps": self.ns_steps, "nesterov": self.nesterov, "rms_rate": self.rms_rate}


class Adan(Optimizer):
    r"""Adan, adaptive Nesterov momentum (not in Keras), as the authors' reference
    implementation computes it (betas as decay rates):

    .. math::
        d = g - g_{t-1}\ (0 \text{ at } t = 1),\quad
        m \leftarrow \beta_1 m + (1-\beta_1) g,\quad
        v \leftarrow \beta_2 v + (1-\beta_2) d\\
        n \leftarrow \beta_3 n + (1-\beta_3)(g + \beta_2 d)^2,\quad
        p \leftarrow p - \eta\,\frac{m/(1-\beta_1^t) + \beta_2 v/(1-\beta_2^t)}
        {\sqrt{n/(1-\beta_3^t)} + \epsilon}

    Slots: momentum (m), difference_momentum (v), velocity (n),
    previous_gradient. ``weight_decay`` is decoupled, ``p -= p * wd * lr``
    before the update (the reference implementation's ``no_prox=True``).
    Reference: Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for
    Faster Optimizing Deep Models", 2022 (IEEE TPAMI 2024), Algorithm 1.
    """

    _rule = "adan"

    def __init__(self, params, learning_rate: LearningRate = 0.001, beta_1: float = 0.98,
                 beta_2: float = 0.92, beta_3: float = 0.99, epsilon: float = 1e-8,
                 **kwargs) -> None:
        self.beta_1 = _check_beta(beta_1, "beta_1")
        self.beta_2 = _check_beta(beta_2, "beta_2")
        self.beta_3 = _check_beta(beta_3, "beta_3")
        self.epsilon = _check_number(epsilon, "epsilon", low=0.0)
        super().__init__(params, learning_rate, **kwargs)

    def _hyper(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "beta_3": self.beta_3,
                "epsilon": self.epsilon}

    def get_config(self):
        return {**super().get_config(), **self._hyper()}
