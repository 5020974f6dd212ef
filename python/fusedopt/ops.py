"""Functional in-place kernels, for callers who own the optimizer state.

Every function updates `params` and the state lists in place, in one native
call over all tensors, with the GIL released::

    import numpy as np, fusedopt.ops as F
    p = [np.ones(4, np.float32)]; g = [np.full(4, 0.1, np.float32)]
    m = [np.zeros(4, np.float32)]; v = [np.zeros(4, np.float32)]
    F.adam_(p, g, m, v, learning_rate=1e-3, step=1)

`step` is 1-based (Keras's ``iterations + 1``). `weight_decay` is decoupled:
``p -= p * weight_decay * learning_rate`` before the rule, as Keras applies it.
Fused regularization, in the same pass (0 = off): ``g += l1*sign(p) + 2*l2*p``
from `p` before the decay (Keras's L1L2 gradient), and after the rule
``p = sign(p) * max(|p| - learning_rate*proximal_l1, 0)``.
Arguments are validated before anything is written; bad input raises
TypeError/ValueError naming the argument and tensor index.

`dropout` / `dropout_backward` are the dropout kernels, with masks
bit-identical to ``keras.random.dropout`` on the TensorFlow backend.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

from fusedopt import _core, _cuda
from fusedopt._arrays import as_array_list, as_state_lists
from fusedopt._dropout import dropout, dropout_backward

RULES: dict = _core.rules()

# Keras's defaults, per rule (the hyperparameters the engine takes; None:
# no default, the caller passes it), as each rule's header declares them.
_DEFAULTS: dict[str, dict[str, float | None]] = {
    rule: dict(zip(info["hyper"], info["defaults"])) for rule, info in RULES.items()}


def apply(
    rule: str,
    params: Sequence[Any],
    grads: Sequence[Any],
    states: Sequence[Sequence[Any]],
    *,
    learning_rate: float,
    step: int = 1,
    weight_decay: float = 0.0,
    hyper: Mapping[str, float] | None = None,
    dry_run: bool = False,
    l1: float = 0.0,
    l2: float = 0.0,
    proximal_l1: float = 0.0,
) -> None:
    """Apply one step of `rule` (a name from ``fusedopt.ops.RULES``) in place.

    `states` holds one list per slot, in the order ``RULES[rule]["states"]``.
    Missing hyperparameters take Keras's defaults. With ``dry_run=True`` the
    call only validates its arguments.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {sorted(RULES)}")
    merged = {**_DEFAULTS[rule], **(hyper or {})}
    missing = [k for k, v in _DEFAULTS[rule].items() if v is None and k not in (hyper or {})]
    if missing:
        raise ValueError(f"{rule} needs the hyperparameter(s) {missing} (no default)")
    names = RULES[rule]["states"]
    if not isinstance(states, (list, tuple)):
        raise TypeError(f"states must be a list of {len(names)} lists of arrays ({names})")
    _cuda.engine_apply(  # the CPU engine, or the CUDA one for CUDA arrays
        rule,
        as_array_list(params, "params"),
        as_array_list(grads, "grads"),
        as_state_lists(states, names) if len(states) == len(names) else list(states),
        merged,
        step,
        learning_rate,
        weight_decay,
        dry_run,
        l1=l1,
        l2=l2,
        proximal_l1=proximal_l1,
        state_names=names,
    )


def _plural(slot: str) -> str:
    """Name of the list of one slot's arrays: momentum -> momentums, velocity -> velocities."""
    return slot[:-1] + "ies" if slot.endswith("y") else slot + "s"


def _make_kernel(rule: str) -> Callable[..., None]:
    state_names = RULES[rule]["states"]
    defaults = _DEFAULTS[rule]

    def kernel(params, grads, *states, learning_rate, step=1, weight_decay=0.0, l1=0.0, l2=0.0,
               proximal_l1=0.0, **hyper) -> None:
        if len(states) != len(state_names):
            raise TypeError(
                f"{rule}_ takes {len(state_names)} state lists after grads "
                f"({', '.join(_plural(n) for n in state_names) or 'none'}), got {len(states)}"
            )
        apply(rule, params, grads, list(states), learning_rate=learning_rate, step=step,
              weight_decay=weight_decay, hyper=hyper, l1=l1, l2=l2, proximal_l1=proximal_l1)

    P = inspect.Parameter
    parameters = [P("params", P.POSITIONAL_OR_KEYWORD), P("grads", P.POSITIONAL_OR_KEYWORD)]
    parameters += [P(_plural(s), P.POSITIONAL_OR_KEYWORD) for s in state_names]
    parameters += [P("learning_rate", P.KEYWORD_ONLY), P("step", P.KEYWORD_ONLY, default=1),
                   P("weight_decay", P.KEYWORD_ONLY, default=0.0)]
    parameters += [P(k, P.KEYWORD_ONLY, default=0.0) for k in ("l1", "l2", "proximal_l1")]
    parameters += [P(k, P.KEYWORD_ONLY, default=v if v is not None else P.empty) for k, v in defaults.items()]
    kernel.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
    kernel.__name__ = kernel.__qualname__ = f"{rule}_"
    kernel.__doc__ = (
        f"One in-place step of the {rule!r} rule over lists of arrays.\n\n"
        f"State lists, in order: {', '.join(_plural(n) for n in state_names) or 'none'}. Hyperparameters "
        f"(Keras defaults; None: required): {defaults or 'none'}. See the module docstring and "
        f"`fusedopt/include/fusedopt/rules/` for the exact update."
    )
    return kernel


# One kernel per rule: adam_, sgd_momentum_, ... (fusedopt.ops.RULES).
globals().update({f"{rule}_": _make_kernel(rule) for rule in RULES})

__all__ = ["RULES", "apply", "dropout", "dropout_backward"] + [f"{r}_" for r in RULES]
