// Adamax (Kingma & Ba 2015, sec. 7.1) as keras.optimizers.Adamax computes it:
//   m <- m + (g - m) * (1 - b1);  u <- max(b2 * u, |g|)
//   p <- p - lr * m / ((1 - b1^t) * (u + eps))
#pragma once
#include "../common.h"

namespace fusedopt::rules {

struct Adamax {
  static constexpr const char* kName = "adamax";
  enum Hyper { kBeta1, kBeta2, kEpsilon, kNumHyper };
  static constexpr const char* kHyperNames[kNumHyper] = {"beta_1", "beta_2", "epsilon"};
  static constexpr double kHyperDefaults[kNumHyper] = {0.9, 0.999, 1e-7};
  static constexpr int kNumStates = 2;
  static constexpr const char* kStateNames[kNumStates] = {"momentum", "norm"};
  static const char* validate(const double* h) {
    if (!in_unit_interval_open_right(h[kBeta1])) return "beta_1 must be in [0, 1)";
    if (!in_unit_interval_open_right(h[kBeta2])) return "beta_2 must be in [0, 1)";
    if (!(h[kEpsilon] >= 0.0)) return "epsilon must be >= 0";
    return nullptr;
  }
  template <class Op> struct Scalars { Op lr, one_minus_b1, b2, bias_correction_1, eps; };
  template <class Op> static Scalars<Op> prepare(const double* h, const StepArgs& s) {
    return {Op(s.learning_rate), Op(1.0 - h[kBeta1]), Op(h[kBeta2]),
            Op(1.0 - std::pow(h[kBeta1], double(s.step))), Op(h[kEpsilon])};
  }
  template <class Op>
  FUSEDOPT_HOST_DEVICE static void update(const Scalars<Op>& c, Op& p, Op g, Op* st) {
    Op& m = st[0];
    Op& u = st[1];
    m = m + (g - m) * c.one_minus_b1;
    u = max_of(c.b2 * u, std::abs(g));
    p = p - (c.lr * m) / (c.bias_correction_1 * (u + c.eps));
  }
};

}  // namespace fusedopt::rules
