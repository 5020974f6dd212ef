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
// Reductions are per tensor: the engine runs one tensor per task, serially, so
// results do not depend on the thread count. Sums are taken in double.
#pragma once
#include <vector>

#include "../common.h"

namespace fusedopt::rules {

struct Adafactor {
  static constexpr const char* kName = "adafactor";
  enum Hyper { kBeta2Decay, kEpsilon1, kEpsilon2, kClipThreshold, kNumHyper };
  static constexpr const char* kHyperNames[kNumHyper] = {"beta_2_decay", "epsilon_1",
                                                         "epsilon_2", "clip_threshold"};
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

  // The elementwise pieces, shared by update_tensor and the CUDA kernels.
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

  // One whole tensor of n elements (an empty one is left as it is, its
  // statistics included: Keras's mean over no elements would make a row or
  // column statistic NaN). When `factored`, it is viewed as
  // [batch, rows, cols] and r, c hold [batch, rows] and [batch, cols];
  // otherwise r, c are unused placeholders. `decay` is the decoupled weight
  // decay factor wd * lr, applied first as Keras does.
  template <class T, class Op>
  static void update_tensor(const Scalars<Op>& k, Op decay, T* p, const T* g, T* r, T* c, T* v,
                            int64_t n, bool factored, int64_t batch, int64_t rows, int64_t cols) {
    if (n == 0) return;
    double sum_p2 = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      Op pv = Op(p[i]);
      if (decay != Op(0)) pv = pv - pv * decay;
      p[i] = T(pv);
      sum_p2 += double(pv) * double(pv);
    }
    const Op alpha_t = alpha(k, sum_p2, n);

    if (factored) {
      std::vector<double> col_sum(static_cast<size_t>(cols));
      for (int64_t b = 0; b < batch; ++b) {
        const T* gb = g + b * rows * cols;
        T* rb = r + b * rows;
        T* cb = c + b * cols;
        std::fill(col_sum.begin(), col_sum.end(), 0.0);
        double r_total = 0.0;
        for (int64_t i = 0; i < rows; ++i) {
          double row_sum = 0.0;
          for (int64_t j = 0; j < cols; ++j) {
            const Op gv = Op(gb[i * cols + j]);
            const double s = double(squared_grad(k, gv));
            row_sum += s;
            col_sum[size_t(j)] += s;
          }
          const Op rv = average(k, Op(rb[i]), Op(row_sum / double(cols)));
          rb[i] = T(rv);
          r_total += double(rv);
        }
        for (int64_t j = 0; j < cols; ++j)
          cb[j] = T(average(k, Op(cb[j]), Op(col_sum[size_t(j)] / double(rows))));
        const Op r_mean = Op(r_total / double(rows));
        T* vb = v + b * rows * cols;
        for (int64_t i = 0; i < rows; ++i) {
          const Op row_factor = Op(rb[i]) / r_mean;
          for (int64_t j = 0; j < cols; ++j) vb[i * cols + j] = T(row_factor * Op(cb[j]));
        }
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const Op gv = Op(g[i]);
        v[i] = T(average(k, Op(v[i]), squared_grad(k, gv)));
      }
    }

    double sum_u2 = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const Op u = direction(Op(g[i]), Op(v[i]));
      sum_u2 += double(u) * double(u);
    }
    const Op clip = clip_denominator(k, sum_u2, n);
    for (int64_t i = 0; i < n; ++i)
      p[i] = T(apply(Op(p[i]), alpha_t, direction(Op(g[i]), Op(v[i])), clip));
  }
};

}  // namespace fusedopt::rules
