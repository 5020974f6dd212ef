// The fused update ops: one op per rule, each taking every variable of a
// step at once. Shared by the op registrations and the kernels.
#pragma once

#define FUSEDOPT_TF_FOR_EACH_OP(X)                                                     \
  X("FusedoptSgd", "sgd")                                                              \
  X("FusedoptSgdMomentum", "sgd_momentum")                                             \
  X("FusedoptSgdNesterov", "sgd_nesterov")                                             \
  X("FusedoptSgdDampened", "sgd_dampened")                                             \
  X("FusedoptRmsprop", "rmsprop")                                                      \
  X("FusedoptRmspropMomentum", "rmsprop_momentum")                                     \
  X("FusedoptRmspropCentered", "rmsprop_centered")                                     \
  X("FusedoptRmspropCenteredMomentum", "rmsprop_centered_momentum")                    \
  X("FusedoptAdagrad", "adagrad")                                                      \
  X("FusedoptAdadelta", "adadelta")                                                    \
  X("FusedoptAdam", "adam")                                                            \
  X("FusedoptAdamAmsgrad", "adam_amsgrad")                                             \
  X("FusedoptAdamax", "adamax")                                                        \
  X("FusedoptNadam", "nadam")                                                          \
  X("FusedoptFtrl", "ftrl")                                                            \
  X("FusedoptLion", "lion")                                                            \
  X("FusedoptLamb", "lamb")                                                            \
  X("FusedoptAdafactor", "adafactor")                                                  \
  X("FusedoptScheduleFreeAdamw", "schedule_free_adamw")
