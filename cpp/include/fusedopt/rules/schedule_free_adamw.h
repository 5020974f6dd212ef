// Schedule-Free AdamW (Defazio et al., 2024, "The Road Less Scheduled") as
// keras.optimizers.ScheduleFreeAdamW computes it. The parameter holds y, the
// "momentum" slot holds z (initialised to a copy of the parameter):
//   lr_t = lr * min(t / warmup_steps, 1)     (when warmup_steps > 0)
//   v <- v + (g^2 - v) * (1 - b2)
//   z' = z - lr_t * g / (sqrt(v / (1 - b2^t)) + eps)
//   x  = (y - (1 - b1) * z) / b1                    (x before the step)
//   x' = (1 - 1/t) * x + (1/t) * z'
//   y <- (1 - b1) * z' + b1 * x';  z <- z'
// x_from_new_z = 1 recovers x with z' instead of z. That is what
// keras.optimizers.ScheduleFreeAdamW computes on the TensorFlow backend: its
// `momentum.value` is the live variable, read after the update to z. The
// paper (and Keras on JAX) use z; the Keras drop-in passes 1 on TensorFlow
// and 0 on JAX, to stay identical to the built-in it replaces.
#pragma once
#include "../common.h"

namespace fusedopt::rules {

struct ScheduleFreeAdamW {
  static constexpr const char* kName = "schedule_free_adamw";
  enum Hyper { kBeta1, kBeta2, kEpsilon, kWarmupSteps, kXFromNewZ, kNumHyper };
  static constexpr const char* kHyperNames[kNumHyper] = {"beta_1", "beta_2", "epsilon",
                                                         "warmup_steps", "x_from_new_z"};
  static constexpr double kHyperDefaults[kNumHyper] = {0.9, 0.999, 1e-8, 0.0, 0.0};
  static constexpr int kNumStates = 2;
  static constexpr const char* kStateNames[kNumStates] = {"momentum", "velocity"};
  static const char* validate(const double* h) {
    // beta_1 = 0 would divide by zero when recovering x from y and z.
    if (!(h[kBeta1] > 0.0 && h[kBeta1] < 1.0)) return "beta_1 must be in (0, 1)";
    if (!in_unit_interval_open_right(h[kBeta2])) return "beta_2 must be in [0, 1)";
    if (!(h[kEpsilon] >= 0.0)) return "epsilon must be >= 0";
    if (!(h[kWarmupSteps] >= 0.0)) return "warmup_steps must be >= 0";
    if (!(h[kXFromNewZ] == 0.0 || h[kXFromNewZ] == 1.0)) return "x_from_new_z must be 0 or 1";
    return nullptr;
  }
  template <class Op> struct Scalars {
    Op lr, b1, one_minus_b1, one_minus_b2, bias_correction_2, eps, weight, one_minus_weight;
    bool x_from_new_z;
  };
  template <class Op> static Scalars<Op> prepare(const double* h, const StepArgs& s) {
    const double t = double(s.step);
    double lr = s.learning_rate;
    if (h[kWarmupSteps] > 0.0) lr *= std::min(t / h[kWarmupSteps], 1.0);
    const double weight = 1.0 / t;
    return {Op(lr),
            Op(h[kBeta1]),
            Op(1.0 - h[kBeta1]),
            Op(1.0 - h[kBeta2]),
            Op(1.0 - std::pow(h[kBeta2], t)),
            Op(h[kEpsilon]),
            Op(weight),
            Op(1.0 - weight),
            h[kXFromNewZ] != 0.0};
  }
  template <class Op>
  FUSEDOPT_HOST_DEVICE static void update(const Scalars<Op>& c, Op& y, Op g, Op* st) {
    Op& z = st[0];
    Op& v = st[1];
    const Op z_old = z;
    v = v + (g * g - v) * c.one_minus_b2;
    const Op denom = std::sqrt(v / c.bias_correction_2) + c.eps;
    z = z - (c.lr * g) / denom;
    const Op x_old = (y - c.one_minus_b1 * (c.x_from_new_z ? z : z_old)) / c.b1;
    const Op x_new = c.one_minus_weight * x_old + c.weight * z;
    y = c.one_minus_b1 * z + c.b1 * x_new;
  }
};

}  // namespace fusedopt::rules
