// Adagrad (Duchi et al., JMLR 2011) as keras.optimizers.Adagrad computes it:
//   acc <- acc + g^2;  p <- p - lr * g / sqrt(acc + eps)
// The accumulator starts at `initial_accumulator_value` (set by the caller).
#pragma once
#include "../common.h"

namespace fusedopt::rules {

struct Adagrad {
  static constexpr const char* kName = "adagrad";
  enum Hyper { kEpsilon, kNumHyper };
  static constexpr const char* kHyperNames[kNumHyper] = {"epsilon"};
  static constexpr double kHyperDefaults[kNumHyper] = {1e-7};
  static constexpr int kNumStates = 1;
  static constexpr const char* kStateNames[kNumStates] = {"accumulator"};
  static const char* validate(const double* h) {
    return h[kEpsilon] >= 0.0 ? nullptr : "epsilon must be >= 0";
  }
  template <class Op> struct Scalars { Op lr, eps; };
  template <class Op> static Scalars<Op> prepare(const double* h, const StepArgs& s) {
    return {Op(s.learning_rate), Op(h[kEpsilon])};
  }
  template <class Op>
  FUSEDOPT_HOST_DEVICE static void update(const Scalars<Op>& c, Op& p, Op g, Op* st) {
    Op& acc = st[0];
    acc = acc + g * g;
    p = p - (c.lr * g) / std::sqrt(acc + c.eps);
  }
};

}  // namespace fusedopt::rules
