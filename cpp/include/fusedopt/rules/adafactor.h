// Adafactor (Shazeer & Stern, ICML 2018) as keras.optimizers.Adafactor
// computes it. For a variable of rank >= 2, viewed as [batch, rows, cols], the
// second moment is factored into a row statistic r [batch, rows] and a column
// statistic c [batch, cols]; lower ranks keep a full second moment v:
//   rho_t = min(lr, 1 / sqrt(t));  alpha = max(eps2, rms(p)) * rho_t
//   s = g^2 + eps1;  b2t = 1 - t^beta_2_decay
//   factored:  r <- b2t r + (1 - b2t) mean_cols(s);  c <- b2t c + (1 - b2t) mean_rows(s)
//              v  = (r / mean_rows(r)) outer c     (Keras keeps v as a slot too)
//   else:      v <- b2t v + (1 - b2t) s
//   u = g / sqrt(v);  p <- p - alpha * u / max(1, rms(u) / clip_threshold)
// Keras's `relative_step` only re-applies min(lr, 1/sqrt(t)), which rho_t
// already does, so it does not change the numbers.
// The drivers that run these pieces over whole tensors: cpp/src/adafactor_driver.h
// (CPU) and cpp/cuda/adafactor.cu.
#pragma once
#include "../common.h"

namespace fusedopt::rules {

struct Adafactor {
  static constexpr const char* kName = "adafactor";
  static constexpr bool kFactoredStates = true;  // states 0, 1: row/column statistics
  enum Hyper { kBeta2Decay, kEpsilon1, kEpsilon2, kClipThreshold, kNumHyper };
  static constexpr const char* kHyperNames[kNumHyper] = {"beta_2_decay", "epsilon_1",
                                                         "epsilon_2", "clip_threshold"};
  static constexpr double kHyperDefaults[kNumHyper] = {-0.8, 1e-30, 1e-3, 1.0};
  static constexpr int kNumStates = 3;
  static constexpr const char* kStateNames[kNumStates] = {"r", "c", "velocity"};
  static const char* validate(const double* h) {
    if (!(h[kBeta2Decay] <= 0.0)) return "beta_2_decay must be <= 0";
    if (!(h[kEpsilon1] >= 0.0)) return "epsilon_1 must be >= 0";
    if (!(h[kEpsilon2] >= 0.0)) return "epsilon_2 must be >= 0";
    if (!(h[kClipThreshold] > 0.0)) return "clip_threshold must be > 0";
    return nullptr;
  }
  template <class Op> struct Scalars { Op rho, eps1, eps2, clip, b2t, one_minus_b2t; };
  template <class Op> static Scalars<Op> prepare(const double* h, const StepArgs& s) {
    const double t = double(s.step);
    const double b2t = 1.0 - std::pow(t, h[kBeta2Decay]);
    return {Op(std::min(s.learning_rate, 1.0 / std::sqrt(t))), Op(h[kEpsilon1]),
            Op(h[kEpsilon2]), Op(h[kClipThreshold]), Op(b2t), Op(1.0 - b2t)};
  }

  // The elementwise pieces, shared by the CPU and CUDA drivers.
  // s = g^2 + eps1
  template <class Op> FUSEDOPT_HOST_DEVICE static Op squared_grad(const Scalars<Op>& k, Op g) {
    return g * g + k.eps1;
  }
  // The running average of a second-moment statistic with its new mean.
  template <class Op>
  FUSEDOPT_HOST_DEVICE static Op average(const Scalars<Op>& k, Op old, Op mean) {
    return k.b2t * old + k.one_minus_b2t * mean;
  }
  // alpha = max(eps2, rms(p)) * rho_t, from sum(p^2) over n elements.
  template <class Op>
  FUSEDOPT_HOST_DEVICE static Op alpha(const Scalars<Op>& k, double sum_p2, int64_t n) {
    return max_of(k.eps2, Op(std::sqrt(sum_p2 / double(n)))) * k.rho;
  }
  template <class Op> FUSEDOPT_HOST_DEVICE static Op direction(Op g, Op v) {
    return g / std::sqrt(v);
  }
  // max(1, rms(u) / clip_threshold), from sum(u^2) over n elements.
  template <class Op>
  FUSEDOPT_HOST_DEVICE static Op clip_denominator(const Scalars<Op>& k, double sum_u2, int64_t n) {
    return max_of(Op(1), Op(std::sqrt(sum_u2 / double(n))) / k.clip);
  }
  template <class Op>
  FUSEDOPT_HOST_DEVICE static Op apply(Op p, Op alpha, Op u, Op clip_denominator) {
    return p - alpha * (u / clip_denominator);
  }
};

}  // namespace fusedopt::rules
