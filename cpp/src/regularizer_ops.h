// Regularizer kernels over lists of tensors: penalty sums, gradients and the
// proximal step, multi-threaded over the engine's fixed chunk list (so every
// result is the same for any thread count). The math is
// fusedopt/regularizers.h; inputs must already be validated.
#pragma once

#include <vector>

#include "engine.h"

namespace fusedopt {

struct RegTensor {
  const void* w = nullptr;
  const void* other = nullptr;  // w0 for L2-SP (nullptr: zeros), g for the proximal step
  void* out = nullptr;          // the gradient; for the proximal step, w itself (in place)
  int64_t size = 0;
};

// Per tensor t: sum_abs[t] = sum |w - w0|, sum_squares[t] = sum (w - w0)^2, in
// double, with w0 = `other` (nullptr: zeros). Per-chunk partial sums are
// combined in chunk order.
void regularizer_sums(DType dtype, const std::vector<RegTensor>& tensors,
                      std::vector<double>* sum_abs, std::vector<double>* sum_squares);
// out = l1 * sign(w) + 2 * l2 * w.
void l1l2_gradient(DType dtype, const std::vector<RegTensor>& tensors, double l1, double l2);
// out = alpha * (w - w0), or beta * w where w0 (`other`) is nullptr.
void l2sp_gradient(DType dtype, const std::vector<RegTensor>& tensors, double alpha, double beta);
// w <- sign(v) * max(|v| - lr * l1, 0) / (1 + lr * l2), v = w - lr * g (g = `other`).
void proximal_step(DType dtype, const std::vector<RegTensor>& tensors, double lr, double l1,
                   double l2);

// One ISA's implementations (regularizer_kernels.cpp, compiled per ISA).
struct RegularizerKernels {
  void (*sums)(DType, const std::vector<RegTensor>&, double* sum_abs, double* sum_squares);
  void (*l1l2_gradient)(DType, const std::vector<RegTensor>&, double l1, double l2);
  void (*l2sp_gradient)(DType, const std::vector<RegTensor>&, double alpha, double beta);
  void (*proximal_step)(DType, const std::vector<RegTensor>&, double lr, double l1, double l2);
};

}  // namespace fusedopt
