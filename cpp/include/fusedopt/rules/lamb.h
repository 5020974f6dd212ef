// LAMB (You et al., ICLR 2020) as keras.optimizers.Lamb computes it:
//   m <- m + (g - m) * (1 - b1);  v <- v + (g^2 - v) * (1 - b2)
//   u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//   r = ||p|| / ||u|| if both norms are > 0, else 1      (per tensor)
//   p <- p - r * lr * u
// The norms need a reduction over the whole tensor, so the engine runs two
// passes: `advance` (moments + partial sums), then `apply`.
#pragma once
#include "../common.h"

namespace fusedopt::rules {

struct Lamb {
  static constexpr const char* kName = "lamb";
  enum Hyper { kBeta1, kBeta2, kEpsilon, kNumHyper };
  static constexpr const char* kHyperNames[kNumHyper] = {"beta_1", "beta_2", "epsilon"};
  static constexpr double kHyperDefaults[kNumHyper] = {0.9, 0.999, 1e-7};
  static constexpr int kNumStates = 2;
  static constexpr const char* kStateNames[kNumStates] = {"momentum", "velocity"};
  static const char* validate(const double* h) {
    if (!in_unit_interval_open_right(h[kBeta1])) return "beta_1 must be in [0, 1)";
    if (!in_unit_interval_open_right(h[kBeta2])) return "beta_2 must be in [0, 1)";
    if (!(h[kEpsilon] >= 0.0)) return "epsilon must be >= 0";
    return nullptr;
  }
  template <class Op> struct Scalars {
    Op lr, one_minus_b1, one_minus_b2, bias_correction_1, bias_correction_2, eps;
  };
  template <class Op> static Scalars<Op> prepare(const double* h, const StepArgs& s) {
    const double t = double(s.step);
    return {Op(s.learning_rate),
            Op(1.0 - h[kBeta1]),
            Op(1.0 - h[kBeta2]),
            Op(1.0 - std::pow(h[kBeta1], t)),
            Op(1.0 - std::pow(h[kBeta2], t)),
            Op(h[kEpsilon])};
  }
  // The update direction u from the (already advanced) moments.
  template <class Op>
  FUSEDOPT_HOST_DEVICE static Op direction(const Scalars<Op>& c, Op m, Op v) {
    return (m / c.bias_correction_1) / (std::sqrt(v / c.bias_correction_2) + c.eps);
  }
  // Pass 1: advance the moments and return the direction.
  template <class Op>
  FUSEDOPT_HOST_DEVICE static Op advance(const Scalars<Op>& c, Op g, Op* st) {
    Op& m = st[0];
    Op& v = st[1];
    m = m + (g - m) * c.one_minus_b1;
    v = v + (g * g - v) * c.one_minus_b2;
    return direction(c, m, v);
  }
  FUSEDOPT_HOST_DEVICE static double trust_ratio(double param_norm, double direction_norm) {
    return (param_norm > 0.0 && direction_norm > 0.0) ? param_norm / direction_norm : 1.0;
  }
  // Pass 2: p <- p - (r * lr) * u.
  template <class Op>
  FUSEDOPT_HOST_DEVICE static void apply(Op ratio_times_lr, Op& p, Op u) {
    p = p - ratio_times_lr * u;
  }
};

}  // namespace fusedopt::rules
