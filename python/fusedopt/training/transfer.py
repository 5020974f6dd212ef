r"""Transfer learning: a base kept in inference mode, freezing, per-layer learning rates.

Follows Keras's transfer-learning guide ("Transfer learning & fine-tuning",
keras.io/guides/transfer_learning):

1. build ``inputs -> base (inference mode) -> new head``
   (:func:`transfer_model`), so that BatchNormalization layers of the base
   keep their statistics even after the base is unfrozen;
2. freeze the base and train the head (:func:`freeze`);
3. unfreeze (all or part of) the base and train everything with a low
   learning rate (:func:`unfreeze`), possibly a different one per layer
   (:func:`discriminative_optimizer`; "discriminative fine-tuning", Howard &
   Ruder, ACL 2018), possibly with L2-SP (:func:`fusedopt.training.attach_l2sp`).

Three Keras 3.15 behaviours these helpers work around:

* The guide's ``x = base(inputs, training=False)`` does not hold inside a
  functional model: when the outer model is called with ``training=True``
  (as ``fit`` does), ``keras/src/models/functional.py`` (``operation_fn``)
  passes that value to every layer, replacing the ``False`` recorded when
  the graph was built, so BatchNormalization updates its moving statistics
  once the base is unfrozen (keras-team/keras#20285).
  :class:`InferenceMode` calls the base with ``training=False`` from inside
  its own ``call``, where nothing overrides it.
* Changing ``trainable`` has no effect on a compiled model until it is
  compiled again: ``fit`` keeps the traced train function and the optimizer
  built for the old variable list (Keras only warns). :func:`freeze` and
  :func:`unfreeze` recompile.
* On the TensorFlow backend ``layer.trainable = True`` on a layer whose flag
  is already True does nothing (``KerasAutoTrackable.__setattr__``
  short-circuits assigning the same object), so it does not unfreeze frozen
  layers nested inside; the helpers call the property setter.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import keras

__all__ = [
    "find_layers",
    "InferenceMode",
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


@keras.saving.register_keras_serializable(package="fusedopt")
class InferenceMode(keras.layers.Layer):
    """Wraps a layer or model and always calls it with ``training=False``.

    What the transfer-learning guide's ``base(inputs, training=False)`` is
    meant to do, in a form a functional model cannot override (see the
    module docstring): BatchNormalization uses and keeps its moving
    statistics and Dropout is off inside ``layer``, whether or not ``layer``
    is trainable. ``layer``'s variables keep their paths and stay
    trainable/frozen as ``layer`` says.
    """

    def __init__(self, layer: keras.layers.Layer, **kwargs: Any) -> None:
        kwargs.setdefault("name", f"{layer.name}_inference_mode")
        super().__init__(**kwargs)
        self.layer = layer

    def build(self, input_shape: Any) -> None:
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def call(self, inputs: Any) -> Any:
        return self.layer(inputs, training=False)

    def compute_output_spec(self, inputs: Any) -> Any:
        return self.layer.compute_output_spec(inputs)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "layer": keras.saving.serialize_keras_object(self.layer)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "InferenceMode":
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)


def transfer_model(
    base: keras.Model,
    head: keras.layers.Layer | Sequence[keras.layers.Layer] | Callable[[Any], Any],
    *,
    input_shape: Sequence[int | None] | None = None,
    freeze_base: bool = True,
    name: str = "transfer_model",
) -> keras.Model:
    """``inputs -> InferenceMode(base) -> head``, with the base frozen.

    The base always runs in inference mode (:class:`InferenceMode`): its
    BatchNormalization layers keep the pretrained statistics and its
    Dropout is off, also after :func:`unfreeze` (the intent of the guide's
    ``base(inputs, training=False)``, which a Keras 3 functional model
    overrides during ``fit``). ``head`` is a layer, a list of layers applied
    in order, or a function of the base's output. The input shape is taken
    from ``base.inputs`` unless ``input_shape`` (without the batch axis) is
    given. Compile the result before training.
    """
    if input_shape is None:
        if getattr(base, "inputs", None) is None or len(base.inputs) != 1:
            raise ValueError("base has no single symbolic input; pass input_shape")
        input_shape = tuple(base.inputs[0].shape[1:])
        dtype = base.inputs[0].dtype
    else:
        dtype = None
    _set_flag(base, not freeze_base)
    inputs = keras.Input(shape=tuple(input_shape), dtype=dtype)
    x = InferenceMode(base)(inputs)
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


def _set_flag(layer: keras.layers.Layer, trainable: bool) -> None:
    """``layer.trainable = trainable``, always through the property setter.

    The setter cascades to nested layers and their variables' flags. Plain
    assignment does not reach it when the value is unchanged: on the
    TensorFlow backend ``KerasAutoTrackable.__setattr__`` short-circuits
    ``self.x = value`` when ``getattr(self, "x") is value``, so
    ``model.trainable = True`` on a trainable model leaves a frozen base
    inside it frozen (Keras 3.15). The setter's own cascade to sublayers
    assigns plainly too, hence the walk over every nested layer.
    """
    for sub in _all_layers(layer):  # the setter's own cascade uses plain assignment
        keras.layers.Layer.trainable.fset(sub, trainable)


def _set_trainable(model: keras.Model, layers: LayerRef | Iterable[LayerRef] | None, trainable: bool,
                   optimizer: Any, recompile_model: bool, keep_batchnorm_frozen: bool) -> list[keras.layers.Layer]:
    if optimizer is not None and not recompile_model:
        raise ValueError("optimizer is only used with recompile=True")
    targets = find_layers(model, layers)
    for layer in targets:
        _set_flag(layer, trainable)
    if trainable and not model.trainable:
        # model.trainable_weights is empty while the model's own flag is False; set only
        # that flag (the setter would unfreeze every layer).
        model._trainable = True
    if trainable and keep_batchnorm_frozen:
        for layer in targets:
            for sub in _all_layers(layer):
                if isinstance(sub, keras.layers.BatchNormalization):
                    _set_flag(sub, False)
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
    frozen: a frozen BatchNormalization runs in inference mode, so its
    statistics and scale/offset stay as pretrained, however the model calls
    it. With ``keep_batchnorm_frozen=False`` their scale/offset train, and
    their statistics stay only if the base runs in inference mode
    (:func:`transfer_model`, :class:`InferenceMode`); otherwise ``fit``
    re-estimates them on the new data. Returns the layers unfrozen.
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

    # Variable -> (lr, listed layer) with the innermost listed layer winning.
    assigned: dict[int, tuple[Any, keras.layers.Layer]] = {}
    for ref, lr in items:
        _lr_key(lr)
        for layer in find_layers(model, ref):
            variables = _layer_variables(layer)
            if not variables:
                raise ValueError(f"layer {layer.name!r} has no variables (is it built?)")
            for v in variables:
                prev = assigned.get(id(v))
                if prev is None or any(layer is sub for sub in _all_layers(prev[1])):
                    assigned[id(v)] = (lr, layer)  # first, or nested inside the previous owner
                elif not any(prev[1] is sub for sub in _all_layers(layer)) and _lr_key(prev[0]) != _lr_key(lr):
                    raise ValueError(f"variable {v.path!r} is shared by layers {prev[1].name!r} and "
                                     f"{layer.name!r}, which are listed with different learning rates")
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
