// Adafactor's CPU driver: the pieces of fusedopt/rules/adafactor.h over one
// whole tensor, in several passes (means over rows and columns, then RMS
// clipping), with the element pipeline's stages (fusedopt/pipeline.h) around
// them. Reductions are per tensor: the engine runs one tensor per task,
// serially, so results do not depend on the thread count. Sums are taken in
// double.
#pragma once
#include <algorithm>
#include <vector>

#include "fusedopt/pipeline.h"
#include "fusedopt/rules/adafactor.h"

namespace fusedopt {

// One whole tensor of n elements (an empty one is left as it is, its
// statistics included: Keras's mean over no elements would make a row or
// column statistic NaN). When `factored`, it is viewed as [batch, rows, cols]
// and r, c hold [batch, rows] and [batch, cols]; otherwise r, c are unused
// placeholders.
template <class T, class Op>
void adafactor_update_tensor(const rules::Adafactor::Scalars<Op>& k, const ElementPipeline<Op>& pipe,
                             T* p, const T* g, T* r, T* c, T* v, int64_t n, bool factored,
                             int64_t batch, int64_t rows, int64_t cols) {
  using A = rules::Adafactor;
  if (n == 0) return;
  // g is read in several passes, after p has changed: the coupled L1/L2
  // gradient (from p before the decay) goes into a copy first.
  std::vector<T> coupled_grad;
  if (pipe.coupled) {
    coupled_grad.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) coupled_grad[size_t(i)] = T(pipe.gradient(Op(p[i]), Op(g[i])));
    g = coupled_grad.data();
  }
  double sum_p2 = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const Op pv = pipe.decayed(Op(p[i]));
    p[i] = T(pv);
    sum_p2 += double(pv) * double(pv);
  }
  const Op alpha_t = A::alpha(k, sum_p2, n);

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
          const double s = double(A::squared_grad(k, Op(gb[i * cols + j])));
          row_sum += s;
          col_sum[size_t(j)] += s;
        }
        const Op rv = A::average(k, Op(rb[i]), Op(row_sum / double(cols)));
        rb[i] = T(rv);
        r_total += double(rv);
      }
      for (int64_t j = 0; j < cols; ++j)
        cb[j] = T(A::average(k, Op(cb[j]), Op(col_sum[size_t(j)] / double(rows))));
      const Op r_mean = Op(r_total / double(rows));
      T* vb = v + b * rows * cols;
      for (int64_t i = 0; i < rows; ++i) {
        const Op row_factor = Op(rb[i]) / r_mean;
        for (int64_t j = 0; j < cols; ++j) vb[i * cols + j] = T(row_factor * Op(cb[j]));
      }
    }
  } else {
    for (int64_t i = 0; i < n; ++i) v[i] = T(A::average(k, Op(v[i]), A::squared_grad(k, Op(g[i]))));
  }

  double sum_u2 = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const Op u = A::direction(Op(g[i]), Op(v[i]));
    sum_u2 += double(u) * double(u);
  }
  const Op clip = A::clip_denominator(k, sum_u2, n);
  for (int64_t i = 0; i < n; ++i)
    p[i] = T(pipe.finished(A::apply(Op(p[i]), alpha_t, A::direction(Op(g[i]), Op(v[i])), clip)));
}

}  // namespace fusedopt
