// Nadam (Dozat 2016) as keras.optimizers.Nadam computes it, with the
// momentum schedule u_t = b1 * (1 - 0.5 * 0.96^t) and its running product:
//   m <- m + (g - m) * (1 - b1);  v <- v + (g^2 - v) * (1 - b2)
//   m_hat = u_{t+1} * m / (1 - prod_{t+1}) + (1 - u_t) * g / (1 - prod_t)
//   v_hat = v / (1 - b2^t)
//   p <- p - m_hat * lr / (sqrt(v_hat) + eps)
// `u_product` is prod_t (the product up to and including step t): the caller
// keeps it and advances it once per step with `next_u_product`.
#pragma once
#include "../common.h"

namespace fusedopt::rules {

struct Nadam {
  static constexpr const char* kName = "nadam";
  enum Hyper { kBeta1, kBeta2, kEpsilon, kUProduct, kNumHyper };
  static constexpr const char* kHyperNames[kNumHyper] = {"beta_1", "beta_2", "epsilon",
                                                         "u_product"};
  static constexpr double kHyperDefaults[kNumHyper] = {0.9, 0.999, 1e-7, kRequired};
  static constexpr int kNumStates = 2;
  static constexpr const char* kStateNames[kNumStates] = {"momentum", "velocity"};

  static double momentum_schedule(double beta_1, double t) {
    return beta_1 * (1.0 - 0.5 * std::pow(0.96, t));
  }
  // prod_t from prod_{t-1}.
  static double next_u_product(double previous, double beta_1, int64_t step) {
    return previous * momentum_schedule(beta_1, double(step));
  }

  static const char* validate(const double* h) {
    if (!in_unit_interval_open_right(h[kBeta1])) return "beta_1 must be in [0, 1)";
    if (!in_unit_interval_open_right(h[kBeta2])) return "beta_2 must be in [0, 1)";
    if (!(h[kEpsilon] >= 0.0)) return "epsilon must be >= 0";
    if (!(h[kUProduct] >= 0.0 && h[kUProduct] < 1.0)) return "u_product must be in [0, 1)";
    return nullptr;
  }
  template <class Op> struct Scalars {
    Op lr, one_minus_b1, one_minus_b2, m_coef, g_coef, bias_correction_2, eps;
  };
  template <class Op> static Scalars<Op> prepare(const double* h, const StepArgs& s) {
    const double t = double(s.step);
    const double u_t = momentum_schedule(h[kBeta1], t);
    const double u_next = momentum_schedule(h[kBeta1], t + 1.0);
    const double prod_t = h[kUProduct];
    const double prod_next = prod_t * u_next;
    return {Op(s.learning_rate),
            Op(1.0 - h[kBeta1]),
            Op(1.0 - h[kBeta2]),
            Op(u_next / (1.0 - prod_next)),
            Op((1.0 - u_t) / (1.0 - prod_t)),
            Op(1.0 - std::pow(h[kBeta2], t)),
            Op(h[kEpsilon])};
  }
  template <class Op>
  FUSEDOPT_HOST_DEVICE static void update(const Scalars<Op>& c, Op& p, Op g, Op* st) {
    Op& m = st[0];
    Op& v = st[1];
    m = m + (g - m) * c.one_minus_b1;
    v = v + (g * g - v) * c.one_minus_b2;
    const Op m_hat = m * c.m_coef + g * c.g_coef;
    const Op v_hat = v / c.bias_correction_2;
    p = p - (m_hat * c.lr) / (std::sqrt(v_hat) + c.eps);
  }
};

}  // namespace fusedopt::rules
