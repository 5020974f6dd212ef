// Gradient descent and its momentum forms, as keras.optimizers.SGD computes them.
//   plain:     p <- p - lr * g
//   momentum:  m <- mu * m - lr * g;  p <- p + m
//   nesterov:  m <- mu * m - lr * g;  p <- p + mu * m - lr * g
//   dampened:  m <- mu * m + (1 - mu) * g;  p <- p - lr * m   (the classic
//              "exponential moving average" momentum; not in Keras)
#pragma once
#include "../common.h"

namespace fusedopt::rules {

struct Sgd {
  static constexpr const char* kName = "sgd";
  enum Hyper { kNumHyper };
  static constexpr const char* const* kHyperNames = nullptr;
  static constexpr const double* kHyperDefaults = nullptr;
  static constexpr int kNumStates = 0;
  static constexpr const char* const* kStateNames = nullptr;
  static const char* validate(const double*) { return nullptr; }

  template <class Op> struct Scalars { Op lr; };
  template <class Op> static Scalars<Op> prepare(const double*, const StepArgs& s) {
    return {Op(s.learning_rate)};
  }
  template <class Op>
  FUSEDOPT_HOST_DEVICE static void update(const Scalars<Op>& c, Op& p, Op g, Op*) {
    p = p - g * c.lr;
  }
};

// Shared by the three momentum forms: one hyperparameter, one slot.
struct SgdMomentumBase {
  enum Hyper { kMomentum, kNumHyper };
  static constexpr const char* kHyperNames[kNumHyper] = {"momentum"};
  static constexpr double kHyperDefaults[kNumHyper] = {0.9};
  static constexpr int kNumStates = 1;
  static constexpr const char* kStateNames[kNumStates] = {"momentum"};
  static const char* validate(const double* h) {
    return (h[kMomentum] >= 0.0 && h[kMomentum] <= 1.0) ? nullptr
                                                       : "momentum must be in [0, 1]";
  }
  template <class Op> struct Scalars { Op lr, mu, one_minus_mu; };
  template <class Op> static Scalars<Op> prepare(const double* h, const StepArgs& s) {
    return {Op(s.learning_rate), Op(h[kMomentum]), Op(1.0 - h[kMomentum])};
  }
};

struct SgdMomentum : SgdMomentumBase {
  static constexpr const char* kName = "sgd_momentum";
  template <class Op>
  FUSEDOPT_HOST_DEVICE static void update(const Scalars<Op>& c, Op& p, Op g, Op* st) {
    Op& m = st[0];
    m = m * c.mu - g * c.lr;
    p = p + m;
  }
};

struct SgdNesterov : SgdMomentumBase {
  static constexpr const char* kName = "sgd_nesterov";
  template <class Op>
  FUSEDOPT_HOST_DEVICE static void update(const Scalars<Op>& c, Op& p, Op g, Op* st) {
    Op& m = st[0];
    m = m * c.mu - g * c.lr;
    p = p + (m * c.mu - g * c.lr);
  }
};

struct SgdDampened : SgdMomentumBase {
  static constexpr const char* kName = "sgd_dampened";
  static const char* validate(const double* h) {
    return in_unit_interval_open_right(h[kMomentum]) ? nullptr
                                                     : "momentum must be in [0, 1)";
  }
  template <class Op>
  FUSEDOPT_HOST_DEVICE static void update(const Scalars<Op>& c, Op& p, Op g, Op* st) {
    Op& m = st[0];
    m = c.mu * m + c.one_minus_mu * g;
    p = p - c.lr * m;
  }
};

}  // namespace fusedopt::rules
