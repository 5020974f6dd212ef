// Regularizer kernels, compiled once per ISA (FUSEDOPT_ISA_NAMESPACE) like
// kernels.cpp. Each loop is one elementwise formula of fusedopt/regularizers.h
// over the engine's chunk list.
#include <vector>

#include "fusedopt/regularizers.h"
#include "regularizer_ops.h"

#ifndef FUSEDOPT_ISA_NAMESPACE
#error "FUSEDOPT_ISA_NAMESPACE must be defined"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA_NAMESPACE {
namespace {

std::vector<Chunk> chunks_of(const std::vector<RegTensor>& tensors) {
  Batch sizes_only;
  for (const RegTensor& t : tensors) {
    TensorRef r;
    r.size = t.size;
    sizes_only.tensors.push_back(r);
  }
  return make_chunks(sizes_only);
}

// Runs fn(tensor, begin, end) over every chunk, in parallel.
template <class Fn>
void over_chunks(const std::vector<RegTensor>& tensors, const Fn& fn) {
  const auto chunks = chunks_of(tensors);
  for_each_chunk(chunks, [&](size_t i) {
    const Chunk& ch = chunks[i];
    fn(tensors[size_t(ch.tensor)], ch.begin, ch.end);
  });
}

template <class T>
void sums_t(const std::vector<RegTensor>& tensors, double* sum_abs, double* sum_squares) {
  const auto chunks = chunks_of(tensors);
  std::vector<double> part_abs(chunks.size()), part_sq(chunks.size());
  for_each_chunk(chunks, [&](size_t i) {
    const Chunk& ch = chunks[i];
    const RegTensor& t = tensors[size_t(ch.tensor)];
    const T* w = static_cast<const T*>(t.w) + ch.begin;
    const T* w0 = t.other ? static_cast<const T*>(t.other) + ch.begin : nullptr;
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t k = 0; k < ch.end - ch.begin; ++k) {
      const double d = w0 ? double(w[k]) - double(w0[k]) : double(w[k]);
      a[k & 7] += std::fabs(d);
      s[k & 7] += d * d;
    }
    double ta = 0.0, ts = 0.0;
    for (int l = 0; l < 8; ++l) {
      ta += a[l];
      ts += s[l];
    }
    part_abs[i] = ta;
    part_sq[i] = ts;
  });
  for (size_t t = 0; t < tensors.size(); ++t) sum_abs[t] = sum_squares[t] = 0.0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    sum_abs[chunks[i].tensor] += part_abs[i];
    sum_squares[chunks[i].tensor] += part_sq[i];
  }
}

template <class T>
void l1l2_gradient_t(const std::vector<RegTensor>& tensors, double l1, double l2) {
  using Op = opmath_t<T>;
  const Op a = Op(l1), b = Op(2.0 * l2);
  over_chunks(tensors, [&](const RegTensor& t, int64_t begin, int64_t end) {
    const T* __restrict w = static_cast<const T*>(t.w) + begin;
    T* __restrict out = static_cast<T*>(t.out) + begin;
    for (int64_t k = 0; k < end - begin; ++k)
      out[k] = T(regularizers::l1l2_gradient(Op(w[k]), a, b));
  });
}

template <class T>
void l2sp_gradient_t(const std::vector<RegTensor>& tensors, double alpha, double beta) {
  using Op = opmath_t<T>;
  over_chunks(tensors, [&](const RegTensor& t, int64_t begin, int64_t end) {
    const T* __restrict w = static_cast<const T*>(t.w) + begin;
    T* __restrict out = static_cast<T*>(t.out) + begin;
    if (t.other == nullptr) {
      for (int64_t k = 0; k < end - begin; ++k)
        out[k] = T(regularizers::l2sp_gradient(Op(w[k]), Op(0), Op(beta)));
      return;
    }
    const T* __restrict w0 = static_cast<const T*>(t.other) + begin;
    for (int64_t k = 0; k < end - begin; ++k)
      out[k] = T(regularizers::l2sp_gradient(Op(w[k]), Op(w0[k]), Op(alpha)));
  });
}

template <class T>
void proximal_step_t(const std::vector<RegTensor>& tensors, double lr, double l1, double l2) {
  using Op = opmath_t<T>;
  const auto c = regularizers::proximal_scalars<Op>(lr, l1, l2);
  over_chunks(tensors, [&](const RegTensor& t, int64_t begin, int64_t end) {
    T* __restrict w = static_cast<T*>(t.out) + begin;
    const T* __restrict g = static_cast<const T*>(t.other) + begin;
    for (int64_t k = 0; k < end - begin; ++k)
      w[k] = T(regularizers::proximal_step(Op(w[k]), Op(g[k]), c));
  });
}

// The dtype switch, once for every kernel.
#define FUSEDOPT_BY_DTYPE(fn, dtype, ...) \
  ((dtype) == DType::kFloat64 ? fn<double>(__VA_ARGS__) : fn<float>(__VA_ARGS__))

void sums(DType d, const std::vector<RegTensor>& ts, double* a, double* s) {
  FUSEDOPT_BY_DTYPE(sums_t, d, ts, a, s);
}
void l1l2_gradient(DType d, const std::vector<RegTensor>& ts, double l1, double l2) {
  FUSEDOPT_BY_DTYPE(l1l2_gradient_t, d, ts, l1, l2);
}
void l2sp_gradient(DType d, const std::vector<RegTensor>& ts, double alpha, double beta) {
  FUSEDOPT_BY_DTYPE(l2sp_gradient_t, d, ts, alpha, beta);
}
void proximal_step(DType d, const std::vector<RegTensor>& ts, double lr, double l1, double l2) {
  FUSEDOPT_BY_DTYPE(proximal_step_t, d, ts, lr, l1, l2);
}
#undef FUSEDOPT_BY_DTYPE

}  // namespace

const RegularizerKernels& regularizer_kernels() {
  static const RegularizerKernels k{&sums, &l1l2_gradient, &l2sp_gradient, &proximal_step};
  return k;
}

}  // namespace FUSEDOPT_ISA_NAMESPACE
}  // namespace fusedopt
