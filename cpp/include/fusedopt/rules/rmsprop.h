// RMSprop as keras.optimizers.RMSprop computes it (Hinton, lecture 6e;
// centered form: Graves 2013).
//   v <- rho * v + (1 - rho) * g^2
//   centered:  a <- rho * a + (1 - rho) * g;  d = v - a^2 + eps   else d = v + eps
//   inc = lr * g / sqrt(d)
//   momentum:  mo <- mu * mo + inc;  p <- p - mo                 else p <- p - inc
// Slots, in Keras's order: velocity, [momentum], [average_gradient].
#pragma once
#include "../common.h"

namespace fusedopt::rules {

template <bool kCentered, bool kMomentum>
struct RmspropT {
  static constexpr const char* kName = kCentered
      ? (kMomentum ? "rmsprop_centered_momentum" : "rmsprop_centered")
      : (kMomentum ? "rmsprop_momentum" : "rmsprop");
  enum Hyper { kRho, kMomentumCoef, kEpsilon, kNumHyper };
  static constexpr const char* kHyperNames[kNumHyper] = {"rho", "momentum", "epsilon"};
  static constexpr double kHyperDefaults[kNumHyper] = {0.9, kMomentum ? 0.9 : 0.0, 1e-7};
  static constexpr int kNumStates = 1 + int(kMomentum) + int(kCentered);
  static constexpr const char* kAllStateNames[3] = {
      "velocity", kMomentum ? "momentum" : "average_gradient", "average_gradient"};
  static constexpr const char* const* kStateNames = kAllStateNames;
  static constexpr int kMomentumSlot = 1;
  static constexpr int kAverageSlot = kMomentum ? 2 : 1;

  static const char* validate(const double* h) {
    if (!in_unit_interval_open_right(h[kRho])) return "rho must be in [0, 1)";
    if (!(h[kMomentumCoef] >= 0.0 && h[kMomentumCoef] < 1.0)) return "momentum must be in [0, 1)";
    if (!(h[kEpsilon] >= 0.0)) return "epsilon must be >= 0";
    return nullptr;
  }
  template <class Op> struct Scalars { Op lr, rho, one_minus_rho, mu, eps; };
  template <class Op> static Scalars<Op> prepare(const double* h, const StepArgs& s) {
    return {Op(s.learning_rate), Op(h[kRho]), Op(1.0 - h[kRho]), Op(h[kMomentumCoef]),
            Op(h[kEpsilon])};
  }
  template <class Op>
  FUSEDOPT_HOST_DEVICE static void update(const Scalars<Op>& c, Op& p, Op g, Op* st) {
    Op& v = st[0];
    v = c.rho * v + c.one_minus_rho * (g * g);
    Op denominator;
    if constexpr (kCentered) {
      Op& a = st[kAverageSlot];
      a = c.rho * a + c.one_minus_rho * g;
      denominator = v - a * a + c.eps;
    } else {
      denominator = v + c.eps;
    }
    const Op increment = (c.lr * g) / std::sqrt(denominator);
    if constexpr (kMomentum) {
      Op& mo = st[kMomentumSlot];
      mo = c.mu * mo + increment;
      p = p - mo;
    } else {
      p = p - increment;
    }
  }
};

using Rmsprop = RmspropT<false, false>;
using RmspropMomentum = RmspropT<false, true>;
using RmspropCentered = RmspropT<true, false>;
using RmspropCenteredMomentum = RmspropT<true, true>;

}  // namespace fusedopt::rules
