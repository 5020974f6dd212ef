"""Whether fusedopt.keras's fused update op ran, read from the traced TensorFlow functions.

fusedopt.keras falls back to Keras's own update (same numbers, not fused)
where the op library cannot be loaded, under XLA without its XLA kernels, and for dtypes, devices or
gradients the op lacks. A benchmark row under fusedopt's name must not time
that fallback, so the bench counts the variables the fused ops in the traced
step update: each fused update op (``FusedoptAdam``, ``FusedoptSgd``, ...,
see cpp/tf/fused_update_ops.cc) updates ``num_tensors`` variables.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Sequence

#: The node lists of traced functions: a graph's nodes, or a FunctionDef's node_def.
NodeLists = Iterable[Sequence[Any]]


class KerasFallback(Exception):
    """fusedopt.keras ran Keras's own update instead of its fused op, for some or all variables."""


def _fused_variables(nodes: Sequence[Any]) -> int:
    # Only the update ops have a num_tensors attribute (FusedoptVariableList
    # and the regularizer and dropout ops have none); a step runs one per
    # (dtype, decay, device) group of variables.
    return sum(n.attr["num_tensors"].i for n in nodes if n.op.startswith("Fusedopt") and "num_tensors" in n.attr)


def fused_variables(node_lists: NodeLists) -> int:
    """The most variables that one of the traced functions updates through fused ops.

    The most in one function, not the sum: a step traced twice (a retrace)
    must not count its variables twice.
    """
    return max((_fused_variables(nodes) for nodes in node_lists), default=0)


def tf_function_nodes(function: Any) -> list[Sequence[Any]]:
    """The nodes of a `tf.function` without arguments (its existing trace) and
    of every function it calls (tf.cond branches, nested tf.functions)."""
    graph_def = function.get_concrete_function().graph.as_graph_def()
    return [graph_def.node, *(f.node_def for f in graph_def.library.function)]


@contextlib.contextmanager
def functions_traced() -> Iterator[list[Sequence[Any]]]:
    """The node lists of the functions TensorFlow registers while the block runs.

    For steps whose tf.function the bench does not hold (``model.fit``'s
    train function): every function a traced step calls is registered in
    the eager context when it is first run, and stays while it is in use.
    """
    from tensorflow.python.eager import context

    ctx = context.context()
    before = set(ctx.list_function_names())
    nodes: list[Sequence[Any]] = []
    yield nodes
    nodes += [ctx.get_function_def(name).node_def for name in set(ctx.list_function_names()) - before]


def _fallback_reason() -> str:
    import fusedopt.keras

    status = fusedopt.keras.op_library_status()
    if not status["loaded"]:
        return f"the TF op library is not loaded: {status['error']}"
    return ("the TF op library is loaded; fusedopt.keras takes Keras's update for sparse gradients, "
            "for dtypes or devices the op lacks, and under XLA where the library has no XLA kernels "
            f"({status.get('xla_error') or 'it has them'})")


def require_fused(node_lists: NodeLists, variables: int, what: str) -> bool:
    """True when the fused ops update all `variables` of the step; else raise `KerasFallback`.

    `what` names the optimizer (and where it ran) in the message.
    """
    fused = fused_variables(node_lists)
    if fused < variables:
        raise KerasFallback(
            f"{what} fell back to Keras's own update: its fused op updates {fused} of the {variables} "
            f"variables in the traced step ({_fallback_reason()})")
    return True


__all__ = ["KerasFallback", "fused_variables", "tf_function_nodes", "functions_traced", "require_fused"]
