// Adan (Xie, Zhou, Li, Lin & Yan, 2022, "Adan: Adaptive Nesterov Momentum
// Algorithm for Faster Optimizing Deep Models", Algorithm 1), in the form of
// the authors' reference implementation: betas as decay rates (0.98, 0.92,
// 0.99), bias-corrected moments, epsilon outside the square root:
//   d = g - g_prev  (0 at step 1)
//   m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) d
//   n <- b3 n + (1 - b3) (g + b2 d)^2;   g_prev <- g
//   p <- p - lr * (m / (1 - b1^t) + b2 v / (1 - b2^t)) / (sqrt(n / (1 - b3^t)) + eps)
// Weight decay is the engine's decoupled p <- p - p * wd * lr before the
// update (the reference implementation's no_prox=True form).
#pragma once
#include "../common.h"

namespace fusedopt::rules {

struct Adan {
  static constexpr const char* kName = "adan";
  enum Hyper { kBeta1, kBeta2, kBeta3, kEpsilon, kNumHyper };
  static constexpr const char* kHyperNames[kNumHyper] = {"beta_1", "beta_2", "beta_3", "epsilon"};
  static constexpr double kHyperDefaults[kNumHyper] = {0.98, 0.92, 0.99, 1e-8};
  static constexpr int kNumStates = 4;
  static constexpr const char* kStateNames[kNumStates] = {"momentum", "difference_momentum",
                                                          "velocity", "previous_gradient"};

  static const char* validate(const double* h) {
    if (!in_unit_interval_open_right(h[kBeta1])) return "beta_1 must be in [0, 1)";
    if (!in_unit_interval_open_right(h[kBeta2])) return "beta_2 must be in [0, 1)";
    if (!in_unit_interval_open_right(h[kBeta3])) return "beta_3 must be in [0, 1)";
    if (!(h[kEpsilon] >= 0.0)) return "epsilon must be >= 0";
    return nullptr;
  }
  template <class Op> struct Scalars {
    Op b1, one_minus_b1, b2, one_minus_b2, b3, one_minus_b3;
    Op step_m, step_v, inv_sqrt_bc3, eps;  // lr / (1 - b1^t), lr * b2 / (1 - b2^t), (1 - b3^t)^-1/2
    bool first;                            // step 1: no previous gradient
  };
  template <class Op> static Scalars<Op> prepare(const double* h, const StepArgs& s) {
    const double t = double(s.step), lr = s.learning_rate;
    const double b1 = h[kBeta1], b2 = h[kBeta2], b3 = h[kBeta3];
    return {Op(b1), Op(1.0 - b1), Op(b2), Op(1.0 - b2), Op(b3), Op(1.0 - b3),
            Op(lr / (1.0 - std::pow(b1, t))), Op(lr * b2 / (1.0 - std::pow(b2, t))),
            Op(1.0 / std::sqrt(1.0 - std::pow(b3, t))), Op(h[kEpsilon]), s.step == 1};
  }
  template <class Op>
  FUSEDOPT_HOST_DEVICE static void update(const Scalars<Op>& c, Op& p, Op g, Op* st) {
    Op& m = st[0];
    Op& v = st[1];
    Op& n = st[2];
    Op& g_prev = st[3];
    const Op d = c.first ? Op(0) : g - g_prev;
    m = c.b1 * m + c.one_minus_b1 * g;
    v = c.b2 * v + c.one_minus_b2 * d;
    const Op w = g + c.b2 * d;
    n = c.b3 * n + c.one_minus_b3 * (w * w);
    g_prev = g;
    p = p - (c.step_m * m + c.step_v * v) / (std::sqrt(n) * c.inv_sqrt_bc3 + c.eps);
  }
};

}  // namespace fusedopt::rules
