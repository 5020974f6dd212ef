// FTRL-Proximal (McMahan et al., KDD 2013) as keras.optimizers.Ftrl computes it,
// with k = -learning_rate_power (0.5 by default):
//   gs = g + 2 * l2_shrinkage * p
//   acc' = acc + g^2
//   lin <- lin + gs - (acc'^k - acc^k) / lr * p
//   quad = acc'^k / lr + 2 * (l2 + beta / (2 lr))
//   p <- (clip(lin, -l1, l1) - lin) / quad;  acc <- acc'
#pragma once
#include "../common.h"

namespace fusedopt::rules {

struct Ftrl {
  static constexpr const char* kName = "ftrl";
  static constexpr bool kNeedsPositiveLearningRate = true;  // it divides by lr
  enum Hyper { kLrPower, kL1, kL2, kL2Shrinkage, kBeta, kNumHyper };
  static constexpr const char* kHyperNames[kNumHyper] = {
      "learning_rate_power", "l1_regularization_strength", "l2_regularization_strength",
      "l2_shrinkage_regularization_strength", "beta"};
  static constexpr double kHyperDefaults[kNumHyper] = {-0.5, 0.0, 0.0, 0.0, 0.0};
  static constexpr int kNumStates = 2;
  static constexpr const char* kStateNames[kNumStates] = {"accumulator", "linear"};
  static const char* validate(const double* h) {
    if (!(h[kLrPower] <= 0.0)) return "learning_rate_power must be <= 0";
    if (!(h[kL1] >= 0.0)) return "l1_regularization_strength must be >= 0";
    if (!(h[kL2] >= 0.0)) return "l2_regularization_strength must be >= 0";
    if (!(h[kL2Shrinkage] >= 0.0)) return "l2_shrinkage_regularization_strength must be >= 0";
    if (!(h[kBeta] >= 0.0)) return "beta must be >= 0";
    return nullptr;
  }
  template <class Op> struct Scalars {
    Op lr, power, two_l2_shrinkage, l1, two_l2_total;
    bool power_is_half;  // the default: use sqrt, which is exact
  };
  template <class Op> static Scalars<Op> prepare(const double* h, const StepArgs& s) {
    const double lr = s.learning_rate;
    return {Op(lr), Op(-h[kLrPower]), Op(2.0 * h[kL2Shrinkage]), Op(h[kL1]),
            Op(2.0 * (h[kL2] + h[kBeta] / (2.0 * lr))), h[kLrPower] == -0.5};
  }
  template <class Op>
  FUSEDOPT_HOST_DEVICE static Op power(const Scalars<Op>& c, Op x) {
    return c.power_is_half ? std::sqrt(x) : std::pow(x, c.power);
  }
  template <class Op>
  FUSEDOPT_HOST_DEVICE static void update(const Scalars<Op>& c, Op& p, Op g, Op* st) {
    Op& acc = st[0];
    Op& lin = st[1];
    const Op g_shrunk = g + c.two_l2_shrinkage * p;
    const Op new_acc = acc + g * g;
    const Op pow_new = power(c, new_acc);
    lin = lin + (g_shrunk - ((pow_new - power(c, acc)) / c.lr) * p);
    const Op quadratic = pow_new / c.lr + c.two_l2_total;
    const Op clipped = min_of(max_of(lin, -c.l1), c.l1);
    p = (clipped - lin) / quadratic;
    acc = new_acc;
  }
};

}  // namespace fusedopt::rules
