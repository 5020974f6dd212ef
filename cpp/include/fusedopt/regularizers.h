// Weight penalties, their gradients and proximal steps. The engine's fused
// `l1=`/`l2=`/`proximal_l1=` options, the NumPy functions in
// fusedopt.regularizers and the Keras regularizers all use these.
//
// L1L2, in Keras's convention (keras.regularizers.L1 / L2 / L1L2):
//   R(w)     = l1 * sum|w| + l2 * sum w^2
//   dR/dw    = l1 * sign(w) + 2 * l2 * w            (sign(0) = 0, as TF's Abs gradient)
//
// Proximal step for L1L2 (FOBOS: Duchi & Singer, JMLR 2009; TF's
// ApplyProximalGradientDescent), which produces exact zeros:
//   v = w - lr * g;   w = sign(v) * max(|v| - lr * l1, 0) / (1 + lr * l2)
//
// L2-SP (Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer
// Learning with Convolutional Networks", ICML 2018, eq. 3): for variables
// w_S with pretrained values w0 and new variables w_new,
//   R = alpha/2 * ||w_S - w0||^2 + beta/2 * ||w_new||^2
//   dR/dw_S = alpha * (w_S - w0),   dR/dw_new = beta * w_new
// Factor of 2: this is the paper's convention (alpha/2, so the gradient is
// alpha * (w - w0)). Keras's L2(l2) penalizes l2 * sum w^2 (gradient
// 2 * l2 * w), so the new-variable term equals keras.regularizers.L2(beta / 2).
#pragma once
#include "common.h"

namespace fusedopt::regularizers {

// Elementwise gradient of the L1L2 penalty; `two_l2` is 2 * l2.
// A zero strength's term is left out, as Keras's L1L2 does (0 * inf would be NaN).
template <class Op>
FUSEDOPT_HOST_DEVICE Op l1l2_gradient(Op w, Op l1, Op two_l2) {
  return (l1 != Op(0) ? l1 * sign_of(w) : Op(0)) + (two_l2 != Op(0) ? two_l2 * w : Op(0));
}

// The L1L2 penalty from the sums sum|w| and sum w^2 (taken in double).
inline double l1l2_penalty(double sum_abs, double sum_squares, double l1, double l2) {
  return (l1 != 0.0 ? l1 * sum_abs : 0.0) + (l2 != 0.0 ? l2 * sum_squares : 0.0);
}

// Soft thresholding, the proximal operator of t * |w|: sign(w) * max(|w| - t, 0),
// computed as w - clamp(w, -t, t): the same value for every non-NaN w (exact
// zeros inside [-t, t]), and NaN stays NaN instead of becoming 0.
template <class Op>
FUSEDOPT_HOST_DEVICE Op soft_threshold(Op w, Op t) {
  return w - min_of(max_of(w, -t), t);
}

// Per-step scalars of the proximal step, computed once on the host.
template <class Op> struct ProximalScalars {
  Op lr, threshold, denominator;  // lr, lr * l1, 1 + lr * l2
};
template <class Op>
ProximalScalars<Op> proximal_scalars(double lr, double l1, double l2) {
  return {Op(lr), Op(lr * l1), Op(1.0 + lr * l2)};
}
template <class Op>
FUSEDOPT_HOST_DEVICE Op proximal_step(Op w, Op g, const ProximalScalars<Op>& c) {
  return soft_threshold(w - g * c.lr, c.threshold) / c.denominator;
}

// L2-SP: gradient alpha * (w - w0) (w0 = 0 and alpha = beta for new variables)
// and the penalty from sum (w - w0)^2.
template <class Op>
FUSEDOPT_HOST_DEVICE Op l2sp_gradient(Op w, Op w0, Op alpha) {
  return alpha * (w - w0);
}
inline double l2sp_penalty(double sum_squared_distance, double alpha) {
  return 0.5 * alpha * sum_squared_distance;
}

}  // namespace fusedopt::regularizers
