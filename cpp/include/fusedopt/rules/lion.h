// Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms")
// as keras.optimizers.Lion computes it:
//   p <- p - lr * sign(b1 * m + (1 - b1) * g);  m <- b2 * m + (1 - b2) * g
#pragma once
#include "../common.h"

namespace fusedopt::rules {

struct Lion {
  static constexpr const char* kName = "lion";
  enum Hyper { kBeta1, kBeta2, kNumHyper };
  static constexpr const char* kHyperNames[kNumHyper] = {"beta_1", "beta_2"};
  static constexpr double kHyperDefaults[kNumHyper] = {0.9, 0.99};
  static constexpr int kNumStates = 1;
  static constexpr const char* kStateNames[kNumStates] = {"momentum"};
  static const char* validate(const double* h) {
    // Keras accepts beta_1 in (0, 1]; beta_2 in [0, 1).
    if (!(h[kBeta1] > 0.0 && h[kBeta1] <= 1.0)) return "beta_1 must be in (0, 1]";
    if (!in_unit_interval_open_right(h[kBeta2])) return "beta_2 must be in [0, 1)";
    return nullptr;
  }
  template <class Op> struct Scalars { Op lr, b1, one_minus_b1, b2, one_minus_b2; };
  template <class Op> static Scalars<Op> prepare(const double* h, const StepArgs& s) {
    return {Op(s.learning_rate), Op(h[kBeta1]), Op(1.0 - h[kBeta1]), Op(h[kBeta2]),
            Op(1.0 - h[kBeta2])};
  }
  template <class Op>
  FUSEDOPT_HOST_DEVICE static void update(const Scalars<Op>& c, Op& p, Op g, Op* st) {
    Op& m = st[0];
    p = p - c.lr * sign_of(m * c.b1 + g * c.one_minus_b1);
    m = m * c.b2 + g * c.one_minus_b2;
  }
};

}  // namespace fusedopt::rules
