r"""Transfer learning: a base called in inference mode, freezing, per-layer learning rates.

Follows Keras's transfer-learning guide ("Transfer learning & fine-tuning",
keras.io/guides/transfer_learning):

1. build ``inputs -> base(inputs, training=False) -> new head``
   (:func:`transfer_model`), so that BatchNormalization layers of the base
   stay in inference mode (their moving statistics never change) even after
   the base is unfrozen;
2. freeze the base and train the head (:func:`freeze`);
3. unfreeze (all or part of) the base and train everything with a low
   learning rate (:func:`unfreeze`), possibly a different one per layer
   (:func:`discriminative_optimizer`; "discriminative fine-tuning", Howard &
   Ruder, ACL 2018), possibly with L2-SP (:func:`fusedopt.training.attach_l2sp`).

Changing ``trainable`` has no effect on a compiled model until it is
compiled again: ``fit`` keeps the traced train function and the optimizer
built for the old variable list (Keras 3.15 only warns). :func:`freeze` and
:func:`unfreeze` recompile for you.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import keras

__all__ = [
    "find_layers",
    "transfer_model",
    "freeze",
    "unfreeze",
    "recompile",
    "variable_path_pattern",
    "discriminative_optimizer",
    "layerwise_decay",
]

LayerRef = Union[keras.layers.Layer, str]


def _all_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    """``model`` and every layer nested in it, each once."""
    if hasattr(model, "_flatten_layers"):
        return list(model._flatten_layers(include_self=True, recursive=True))
    seen: list[keras.layers.Layer] = []
    stack = [model]
    while stack:
        layer = stack.pop()
        if any(layer is s for s in seen):
            continue
        seen.append(layer)
        stack.extend(getattr(layer, "layers", []))
    return seen


def find_layers(model: keras.layers.Layer, layers: LayerRef | Iterable[LayerRef] | None) -> list[keras.layers.Layer]:
    """Resolve layer objects or names to layers of ``model``, searching nested models.

    ``model.get_layer`` sees only top-level layers; this looks at every
    nested layer. A name must match exactly one layer; ``None`` means
    ``[model]``. Raises ``ValueError`` for unknown, ambiguous or foreign layers.
    """
    if layers is None:
        return [model]
    if isinstance(layers, (str, keras.layers.Layer)):
        layers = [layers]
    everything = _all_layers(model)
    found: list[keras.layers.Layer] = []
    for ref in layers:
        if isinstance(ref, str):
            matches = [l for l in everything if l.name == ref]
            if not matches:
                raise ValueError(f"no layer named {ref!r} in model {model.name!r}")
            if len(matches) > 1:
                raise ValueError(f"{len(matches)} layers are named {ref!r} in model {model.name!r}; "
                                 "pass the layer object")
            layer = matches[0]
        elif isinstance(ref, keras.layers.Layer):
            if not any(ref is l for l in everything):
                raise ValueError(f"layer {ref.name!r} is not part of model {model.name!r}")
            layer = ref
        else:
            raise TypeError(f"layers must be keras layers or layer names, got {type(ref).__name__}")
        if not any(layer is f for f in found):
            found.append(layer)
    return found


def transfer_model(
    base: keras.Model,
    head: keras.layers.Layer | Sequence[keras.layers.Layer] | Callable[[Any], Any],
    *,
    input_shape: Sequence[int | None] | None = None,
    freeze_base: bool = True,
    name: str = "transfer_model",
) -> keras.Model:
    """``inputs -> base(inputs, training=False) -> head``, with the base frozen.

    Calling the base with ``training=False`` is what keeps its
    BatchNormalization layers in inference mode when the base is later
    unfrozen for fine-tuning (Keras's transfer-learning guide); a base that
    is simply stacked in a ``Sequential`` would update its moving statistics
    on the new data. ``head`` is a layer, a list of layers applied in order,
    or a function of the base's output. The input shape is taken from
    ``base.inputs`` unless ``input_shape`` (without the batch axis) is given.
    Compile the result before training.
    """
    if input_shape is None:
        if getattr(base, "inputs", None) is None or len(base.inputs) != 1:
            raise ValueError("base has no single symbolic input; pass input_shape")
        input_shape = tuple(base.inputs[0].shape[1:])
        dtype = base.inputs[0].dtype
    else:
        dtype = None
    base.trainable = not freeze_base
    inputs = keras.Input(shape=tuple(input_shape), dtype=dtype)
    x = base(inputs, training=False)
    if isinstance(head, keras.layers.Layer) or not isinstance(head, Sequence):
        head = [head]
    for layer in head:
        x = layer(x)
    return keras.Model(inputs, x, name=name)


def recompile(model: keras.Model, optimizer: Any = None) -> bool:
    """Compile ``model`` again with the arguments of its last ``compile``.

    ``optimizer`` replaces the previous one; by default a fresh optimizer is
    made from the previous one's config (the old one was built for the old
    trainable variables, and its state is dropped). Returns False (and does
    nothing) if the model was never compiled.
    """
    if not getattr(model, "compiled", False):
        return False
    config = getattr(model, "_compile_config", None)
    if config is None or not hasattr(config, "config"):
        raise RuntimeError("cannot read the model's compile arguments (Keras internals changed); "
                           "call model.compile(...) yourself")
    kwargs = dict(config.config)
    if optimizer is None:
        old = kwargs.get("optimizer")
        if isinstance(old, keras.optimizers.Optimizer):
            optimizer = old.__class__.from_config(old.get_config())
        else:  # a string or None: compile makes a fresh one
            optimizer = old
    kwargs["optimizer"] = optimizer
    model.compile(**kwargs)
    return True


def _set_trainable(model: keras.Model, layers: LayerRef | Iterable[LayerRef] | None, trainable: bool,
                   optimizer: Any, recompile_model: bool, keep_batchnorm_frozen: bool) -> list[keras.layers.Layer]:
    if optimizer is not None and not recompile_model:
        raise ValueError("optimizer is only used with recompile=True")
    targets = find_layers(model, layers)
    for layer in targets:
        layer.trainable = trainable  # recursive in Keras 3 (layers and their variables' flags)
    if trainable and not model.trainable:
        # model.trainable_weights is empty while the model's own flag is False; set only
        # that flag (the setter would unfreeze every layer).
        model._trainable = True
    if trainable and keep_batchnorm_frozen:
        for layer in targets:
            for sub in _all_layers(layer):
                if isinstance(sub, keras.layers.BatchNormalization):
                    sub.trainable = False
    if recompile_model:
        recompile(model, optimizer)
    return targets


def freeze(model: keras.Model, layers: LayerRef | Iterable[LayerRef] | None = None, *,
           optimizer: Any = None, recompile: bool = True) -> list[keras.layers.Layer]:
    """Set ``trainable = False`` on ``layers`` (all nested layers too), then recompile.

    ``layers``: layer objects or names (nested layers included; see
    :func:`find_layers`), default the whole model. A frozen
    BatchNormalization layer runs in inference mode in Keras 3. The model is
    recompiled (:func:`recompile`, with ``optimizer`` or a fresh copy of the
    previous one) because a compiled model ignores changes of ``trainable``
    until then. Returns the layers frozen.
    """
    return _set_trainable(model, layers, False, optimizer, recompile, False)


def unfreeze(model: keras.Model, layers: LayerRef | Iterable[LayerRef] | None = None, *,
             optimizer: Any = None, recompile: bool = True,
             keep_batchnorm_frozen: bool = True) -> list[keras.layers.Layer]:
    """Set ``trainable = True`` on ``layers`` (all nested layers too), then recompile.

    Pass the fine-tuning optimizer (a low learning rate, or per-layer rates
    from :func:`discriminative_optimizer`); without one, a fresh copy of the
    previous optimizer is used. A layer unfrozen inside a frozen base
    trains (the outer model collects trainable variables by their own flag),
    while the base's other layers stay frozen.

    ``keep_batchnorm_frozen`` (default) leaves BatchNormalization layers
    frozen: they stay in inference mode and their scale/offset are not
    trained, however the base was called. With
    ``keep_batchnorm_frozen=False`` they train their scale/offset, and stay
    in inference mode only if the base is called with ``training=False``
    (:func:`transfer_model`). Returns the layers unfrozen.
    """
    return _set_trainable(model, layers, True, optimizer, recompile, keep_batchnorm_frozen)


def _layer_variables(layer: keras.layers.Layer) -> list[Any]:
    return list(layer.weights)


def variable_path_pattern(items: LayerRef | keras.Variable | Iterable[Any], model: keras.Model | None = None) -> str:
    r"""A regex that ``re.fullmatch``-es exactly the paths of the given variables.

    ``keras.optimizers.MultiOptimizer`` / ``OptimizerMap`` match
    ``re.fullmatch(pattern, variable.path)``, and paths carry the names of
    the enclosing models (``"base/d1/kernel"``, ``"sequential/dense/bias"``),
    so a hand-written ``"d1/.*"`` silently matches nothing. This builds
    ``(?:p1|p2|...)`` from the escaped paths (``re.escape``) of the given
    variables, or of all variables of the given layers (names are resolved
    in ``model``, nested layers included).
    """
    if isinstance(items, (str, keras.layers.Layer, keras.Variable)):
        items = [items]
    paths: list[str] = []
    for item in items:
        if isinstance(item, keras.Variable):
            variables = [item]
        elif isinstance(item, str):
            if model is None:
                raise ValueError("layer names need model=")
            variables = _layer_variables(find_layers(model, item)[0])
        elif isinstance(item, keras.layers.Layer):
            variables = _layer_variables(item)
        else:
            raise TypeError(f"expected layers, layer names or variables, got {type(item).__name__}")
        for v in variables:
            if v.path not in paths:
                paths.append(v.path)
    if not paths:
        raise ValueError("no variables: build the model (and its layers) first")
    return "(?:" + "|".join(re.escape(p) for p in paths) + ")"


def _default_optimizer_class() -> Callable[..., keras.optimizers.Optimizer]:
    from fusedopt.keras import Adam
    return Adam


def _lr_key(lr: Any) -> Any:
    if isinstance(lr, bool):
        raise TypeError("learning rate must be a number or a schedule, got bool")
    if isinstance(lr, (int, float)):
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"learning rate must be finite and >= 0, got {lr}")
        return ("value", float(lr))
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule) or callable(lr):
        return ("object", id(lr))
    raise TypeError(f"learning rate must be a number or a schedule, got {type(lr).__name__}")


def discriminative_optimizer(
    model: keras.Model,
    learning_rates: Mapping[Any, Any] | Sequence[tuple[Any, Any]],
    default_learning_rate: Any,
    *,
    optimizer: Callable[..., keras.optimizers.Optimizer] | None = None,
    **optimizer_kwargs: Any,
) -> keras.optimizers.MultiOptimizer:
    r"""A ``keras.optimizers.MultiOptimizer`` with one learning rate per layer.

    ``learning_rates`` maps layers (objects or names, nested layers
    included) to a learning rate (a float or a schedule); every other
    variable uses ``default_learning_rate``. When a variable belongs to
    several listed layers (a block and a layer inside it), the innermost
    layer wins. Layers that share a learning rate share one inner optimizer
    ``optimizer(learning_rate=lr, **optimizer_kwargs)`` (default
    ``fusedopt.keras.Adam``), so each step runs one fused update per
    distinct rate.

    The map keys are written by :func:`variable_path_pattern` (exact,
    escaped variable paths), and every variable of the model is checked to
    reach the intended optimizer; a ``ValueError`` is raised if two variables
    share a path but need different rates (``MultiOptimizer`` maps by path).
    Pass the result to :func:`unfreeze` or ``model.compile``; the model must
    be built. A rate of 0 leaves a layer's variables unchanged (optimizers
    whose update is proportional to the rate).

    Discriminative fine-tuning: Howard & Ruder, "Universal Language Model
    Fine-tuning for Text Classification", ACL 2018 (``eta_{l-1} = eta_l /
    2.6``; see :func:`layerwise_decay`).
    """
    make = optimizer or _default_optimizer_class()
    items = list(learning_rates.items()) if isinstance(learning_rates, Mapping) else list(learning_rates)
    model_vars = list(model.weights)
    if not model_vars:
        raise ValueError("the model has no variables: build it first")

    # Variable -> (lr, owner layer size) with the innermost listed layer winning.
    assigned: dict[int, tuple[Any, int]] = {}
    for ref, lr in items:
        _lr_key(lr)
        for layer in find_layers(model, ref):
            variables = _layer_variables(layer)
            if not variables:
                raise ValueError(f"layer {layer.name!r} has no variables (is it built?)")
            for v in variables:
                prev = assigned.get(id(v))
                if prev is None or len(variables) < prev[1]:
                    assigned[id(v)] = (lr, len(variables))
    groups: dict[Any, tuple[Any, list[Any]]] = {}
    for v in model_vars:
        if id(v) in assigned:
            lr = assigned[id(v)][0]
            groups.setdefault(_lr_key(lr), (lr, []))[1].append(v)

    default_key = _lr_key(default_learning_rate)
    default_opt = make(learning_rate=default_learning_rate, **optimizer_kwargs)
    optimizers: dict[Any, keras.optimizers.Optimizer] = {default_key: default_opt}
    optimizer_map = keras.optimizers.OptimizerMap(default_opt)
    for key, (lr, variables) in groups.items():
        if key == default_key:
            continue  # the default optimizer handles them already
        opt = optimizers[key] = make(learning_rate=lr, **optimizer_kwargs)
        optimizer_map[variable_path_pattern(variables)] = opt

    # Verify: each variable reaches the optimizer of its rate, and paths are unambiguous.
    by_path: dict[str, set] = defaultdict(set)
    for v in model_vars:
        key = _lr_key(assigned[id(v)][0]) if id(v) in assigned else default_key
        by_path[v.path].add(key)
    for path, keys in by_path.items():
        if len(keys) > 1:
            raise ValueError(f"several variables have the path {path!r} but need different learning "
                             "rates; MultiOptimizer maps variables by path (rename the layers or models)")
    for v in model_vars:
        key = _lr_key(assigned[id(v)][0]) if id(v) in assigned else default_key
        if optimizer_map(v) is not optimizers[key]:  # pragma: no cover - a Keras semantics change
            raise RuntimeError(f"variable {v.path!r} does not reach its optimizer through OptimizerMap")
    return keras.optimizers.MultiOptimizer(optimizer_map)


def layerwise_decay(layers: Sequence[keras.layers.Layer | str], top_learning_rate: float,
                    decay: float = 1 / 2.6) -> dict[Any, float]:
    r"""Learning rates that shrink geometrically towards the input.

    For ``layers`` ordered from input to output (``L`` of them), layer ``i``
    gets ``top_learning_rate * decay ** (L - 1 - i)``: the last layer gets
    ``top_learning_rate``. The default ``decay = 1/2.6`` is ULMFiT's
    (Howard & Ruder, ACL 2018). Feed the result to
    :func:`discriminative_optimizer`.
    """
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    n = len(layers)
    return {layer: top_learning_rate * decay ** (n - 1 - i) for i, layer in enumerate(layers)}
