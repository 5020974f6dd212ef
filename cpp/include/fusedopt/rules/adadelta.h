// Adadelta (Zeiler 2012) as keras.optimizers.Adadelta computes it:
//   ag <- rho * ag + (1 - rho) * g^2
//   d  = -sqrt(ad + eps) * g / sqrt(ag + eps)
//   ad <- rho * ad + (1 - rho) * d^2
//   p  <- p + lr * d
#pragma once
#include "../common.h"

namespace fusedopt::rules {

struct Adadelta {
  static constexpr const char* kName = "adadelta";
  enum Hyper { kRho, kEpsilon, kNumHyper };
  static constexpr const char* kHyperNames[kNumHyper] = {"rho", "epsilon"};
  static constexpr double kHyperDefaults[kNumHyper] = {0.95, 1e-7};
  static constexpr int kNumStates = 2;
  static constexpr const char* kStateNames[kNumStates] = {"accumulated_grad",
                                                          "accumulated_delta_var"};
  static const char* validate(const double* h) {
    if (!in_unit_interval_open_right(h[kRho])) return "rho must be in [0, 1)";
    if (!(h[kEpsilon] >= 0.0)) return "epsilon must be >= 0";
    return nullptr;
  }
  template <class Op> struct Scalars { Op lr, rho, one_minus_rho, eps; };
  template <class Op> static Scalars<Op> prepare(const double* h, const StepArgs& s) {
    return {Op(s.learning_rate), Op(h[kRho]), Op(1.0 - h[kRho]), Op(h[kEpsilon])};
  }
  template <class Op>
  FUSEDOPT_HOST_DEVICE static void update(const Scalars<Op>& c, Op& p, Op g, Op* st) {
    Op& ag = st[0];
    Op& ad = st[1];
    ag = c.rho * ag + c.one_minus_rho * (g * g);
    const Op delta = -((std::sqrt(ad + c.eps) * g) / std::sqrt(ag + c.eps));
    ad = c.rho * ad + c.one_minus_rho * (delta * delta);
    p = p + c.lr * delta;
  }
};

}  // namespace fusedopt::rules
