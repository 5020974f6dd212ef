// Adam (Kingma & Ba, ICLR 2015) and AMSGrad (Reddi et al., ICLR 2018) as
// keras.optimizers.Adam computes them (epsilon outside the square root, bias
// corrections folded into the step size):
//   alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)
//   m <- m + (g - m) * (1 - b1);  v <- v + (g^2 - v) * (1 - b2)
//   amsgrad: vh <- max(vh, v), and vh replaces v below
//   p <- p - m * alpha / (sqrt(v) + eps)
// AdamW is this rule with decoupled weight decay (applied by the engine).
#pragma once
#include "../common.h"

namespace fusedopt::rules {

template <bool kAmsgrad>
struct AdamT {
  static constexpr const char* kName = kAmsgrad ? "adam_amsgrad" : "adam";
  enum Hyper { kBeta1, kBeta2, kEpsilon, kNumHyper };
  static constexpr const char* kHyperNames[kNumHyper] = {"beta_1", "beta_2", "epsilon"};
  static constexpr double kHyperDefaults[kNumHyper] = {0.9, 0.999, 1e-7};
  static constexpr int kNumStates = kAmsgrad ? 3 : 2;
  static constexpr const char* kAllStateNames[3] = {"momentum", "velocity", "velocity_hat"};
  static constexpr const char* const* kStateNames = kAllStateNames;

  static const char* validate(const double* h) {
    if (!in_unit_interval_open_right(h[kBeta1])) return "beta_1 must be in [0, 1)";
    if (!in_unit_interval_open_right(h[kBeta2])) return "beta_2 must be in [0, 1)";
    if (!(h[kEpsilon] >= 0.0)) return "epsilon must be >= 0";
    return nullptr;
  }
  template <class Op> struct Scalars { Op alpha, one_minus_b1, one_minus_b2, eps; };
  template <class Op> static Scalars<Op> prepare(const double* h, const StepArgs& s) {
    const double t = double(s.step);
    const double alpha = s.learning_rate * std::sqrt(1.0 - std::pow(h[kBeta2], t)) /
                         (1.0 - std::pow(h[kBeta1], t));
    return {Op(alpha), Op(1.0 - h[kBeta1]), Op(1.0 - h[kBeta2]), Op(h[kEpsilon])};
  }
  template <class Op>
  FUSEDOPT_HOST_DEVICE static void update(const Scalars<Op>& c, Op& p, Op g, Op* st) {
    Op& m = st[0];
    Op& v = st[1];
    m = m + (g - m) * c.one_minus_b1;
    v = v + (g * g - v) * c.one_minus_b2;
    Op v_used = v;
    if constexpr (kAmsgrad) {
      Op& vh = st[2];
      vh = max_of(vh, v);
      v_used = vh;
    }
    p = p - (m * c.alpha) / (std::sqrt(v_used) + c.eps);
  }
};

using Adam = AdamT<false>;
using AdamAmsgrad = AdamT<true>;

}  // namespace fusedopt::rules
