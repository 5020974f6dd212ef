// The elementwise part of Muon (Jordan et al., 2024) as keras.optimizers.Muon
// computes it for 2-D variables:
//   m <- m + (g + m * (mu - 1))                        (= mu * m + g)
//   d  = g + mu * m   (nesterov)   or   d = m
// `d` is written to the "param" buffer of this kernel; the caller then
// orthogonalizes it (Newton-Schulz, a matrix multiply) and applies it with the
// plain SGD kernel: p <- p - (lr * sqrt(max(rows, cols)) * rms_rate) * O(d).
// Muon's non-2-D variables use the Adam rule.
#pragma once
#include "../common.h"

namespace fusedopt::rules {

struct MuonMomentum {
  static constexpr const char* kName = "muon_momentum";
  enum Hyper { kMomentum, kNesterov, kNumHyper };
  static constexpr const char* kHyperNames[kNumHyper] = {"momentum", "nesterov"};
  static constexpr double kHyperDefaults[kNumHyper] = {0.95, 1.0};
  static constexpr int kNumStates = 1;
  static constexpr const char* kStateNames[kNumStates] = {"momentum"};
  static const char* validate(const double* h) {
    if (!in_unit_interval_open_right(h[kMomentum])) return "momentum must be in [0, 1)";
    if (!(h[kNesterov] == 0.0 || h[kNesterov] == 1.0)) return "nesterov must be 0 or 1";
    return nullptr;
  }
  template <class Op> struct Scalars { Op mu, mu_minus_one; bool nesterov; };
  template <class Op> static Scalars<Op> prepare(const double* h, const StepArgs&) {
    return {Op(h[kMomentum]), Op(h[kMomentum] - 1.0), h[kNesterov] != 0.0};
  }
  template <class Op>
  FUSEDOPT_HOST_DEVICE static void update(const Scalars<Op>& c, Op& d, Op g, Op* st) {
    Op& m = st[0];
    m = m + (g + m * c.mu_minus_one);
    d = c.nesterov ? g + c.mu * m : m;
  }
};

}  // namespace fusedopt::rules
