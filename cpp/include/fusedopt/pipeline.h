// The per-element pipeline around an update rule, in Keras's order and in one
// pass over memory:
//   1. g <- g + l1 * sign(p) + 2 * l2 * p    coupled L1/L2, from p before the decay
//   2. p <- p - p * decay                     decoupled weight decay (decay = wd * lr)
//   3. Rule::update(p, g, states)             fusedopt/rules/*.h
//   4. p <- soft_threshold(p, lr * prox_l1)   proximal L1 (FOBOS)
// Written once here and used by the CPU loops (cpp/src/kernels.cpp), the CUDA
// kernels (cpp/cuda) and the multi-pass drivers (Lamb, Adafactor), which run
// the stages in separate passes.
#pragma once
#include "regularizers.h"

namespace fusedopt {

template <class Op> struct ElementPipeline {
  Op decay, l1, two_l2, threshold;  // wd * lr, l1, 2 * l2, lr * proximal_l1
  bool decays, coupled, proximal;   // which stages run (a stage that is off is exact: p and g untouched)

  static ElementPipeline make(double decay, double l1, double l2, double learning_rate,
                              double proximal_l1) {
    return {Op(decay), Op(l1), Op(2.0 * l2), Op(learning_rate * proximal_l1),
            decay != 0.0, l1 != 0.0 || l2 != 0.0, proximal_l1 != 0.0};
  }

  // The stages. A `false` template argument compiles the stage out: the CPU
  // loops are instantiated once per combination in use, so that no branch is
  // left in the loop to stop it from vectorizing; `true` leaves it to the flag.
  template <bool kMay = true> FUSEDOPT_HOST_DEVICE Op gradient(Op p, Op g) const {
    if constexpr (kMay) return coupled ? g + regularizers::l1l2_gradient(p, l1, two_l2) : g;
    return g;
  }
  template <bool kMay = true> FUSEDOPT_HOST_DEVICE Op decayed(Op p) const {
    if constexpr (kMay) return decays ? p - p * decay : p;
    return p;
  }
  template <bool kMay = true> FUSEDOPT_HOST_DEVICE Op finished(Op p) const {
    if constexpr (kMay) return proximal ? regularizers::soft_threshold(p, threshold) : p;
    return p;
  }

  // All four stages on one element; `states` holds Rule::kNumStates values.
  template <class Rule, bool kDecay = true, bool kCoupled = true, bool kProximal = true>
  FUSEDOPT_HOST_DEVICE void step(const typename Rule::template Scalars<Op>& c, Op& p, Op g,
                                 Op* states) const {
    g = gradient<kCoupled>(p, g);
    p = decayed<kDecay>(p);
    Rule::update(c, p, g, states);
    p = finished<kProximal>(p);
  }
};

}  // namespace fusedopt
