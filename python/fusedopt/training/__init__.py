"""fusedopt.training: thin helpers for distillation and transfer learning with Keras 3.

Built on what Keras ships (``keras.distillation``,
``keras.optimizers.MultiOptimizer``, schedules, callbacks); each helper adds
only what Keras lacks or gets wrong:

Distillation (Hinton, Vinyals & Dean, 2015):
    :func:`build_distiller` (online, on ``keras.distillation.Distiller``),
    :class:`TemperatureKLDistillation` (``T^2 * KL(softmax(t/T) || softmax(s/T))``),
    :func:`cache_teacher_logits`, :class:`DistillationDataset` and
    :class:`OfflineDistiller` (offline, from cached teacher logits).

Transfer learning (Keras's transfer-learning guide):
    :func:`transfer_model` / :class:`InferenceMode` (base kept in inference mode),
    :func:`freeze` / :func:`unfreeze` (and recompile),
    :func:`discriminative_optimizer` / :func:`layerwise_decay` (per-layer
    learning rates on ``MultiOptimizer``, Howard & Ruder 2018),
    :func:`variable_path_pattern`,
    :func:`attach_l2sp` (Li, Grandvalet & Davoine, ICML 2018).

Import it explicitly (``import fusedopt.training``); it needs Keras.
"""

from __future__ import annotations

from fusedopt.training.distillation import (
    DistillationDataset,
    Distiller,
    OfflineDistiller,
    TemperatureKLDistillation,
    build_distiller,
    cache_teacher_logits,
    check_distillation_losses,
    distillation_kl,
)
from fusedopt.training.l2sp import L2SPAttachment, attach_l2sp, detach_l2sp
from fusedopt.training.transfer import (
    InferenceMode,
    discriminative_optimizer,
    find_layers,
    freeze,
    layerwise_decay,
    recompile,
    transfer_model,
    unfreeze,
    variable_path_pattern,
)

__all__ = [
    # distillation
    "distillation_kl",
    "TemperatureKLDistillation",
    "Distiller",
    "build_distiller",
    "check_distillation_losses",
    "cache_teacher_logits",
    "DistillationDataset",
    "OfflineDistiller",
    # transfer learning
    "find_layers",
    "InferenceMode",
    "transfer_model",
    "freeze",
    "unfreeze",
    "recompile",
    "variable_path_pattern",
    "discriminative_optimizer",
    "layerwise_decay",
    "attach_l2sp",
    "detach_l2sp",
    "L2SPAttachment",
]
