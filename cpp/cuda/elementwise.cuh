// The one templated kernel for every elementwise rule: in one pass over
// memory, as the CPU engine's elementwise_range (cpp/src/kernels.cpp) does,
// the coupled L1/L2 gradient (from p before the decay), the decoupled decay,
// Rule::update from fusedopt/rules/*.h, and the proximal L1 step. Storage T
// (float, double, __half, __nv_bfloat16) is computed in opmath_t<T> (float
// for the half types, double for double).
#pragma once

#include "fusedopt/regularizers.h"
#include "fusedopt/rules.h"
#include "multi_tensor.cuh"

namespace fusedopt::cuda {

// Per-step scalars beyond the rule's own (see Update).
template <class Op> struct ExtraScalars {
  Op decay, l1, two_l2, threshold;  // wd * lr, l1, 2 * l2, lr * proximal_l1
  bool has_decay, coupled, proximal;
};

template <class Op> ExtraScalars<Op> extra_scalars(const Update& u) {
  return {Op(u.decay),
          Op(u.l1),
          Op(2.0 * u.l2),
          Op(u.step.learning_rate * u.proximal_l1),
          u.decay != 0.0,
          u.l1 != 0.0 || u.l2 != 0.0,
          u.proximal_l1 != 0.0};
}

template <class Op>
__device__ __forceinline__ Op coupled_grad(const ExtraScalars<Op>& x, Op p, Op g) {
  return x.coupled ? g + regularizers::l1l2_gradient(p, x.l1, x.two_l2) : g;
}
template <class Op> __device__ __forceinline__ Op decayed(const ExtraScalars<Op>& x, Op p) {
  return x.has_decay ? p - p * x.decay : p;
}
template <class Op> __device__ __forceinline__ Op proximal(const ExtraScalars<Op>& x, Op p) {
  return x.proximal ? regularizers::soft_threshold(p, x.threshold) : p;
}

template <class Rule, class T> struct ElementwiseArgs {
  using Op = opmath_t<T>;
  typename Rule::template Scalars<Op> rule;
  ExtraScalars<Op> extra;
};

// Pointers: param, grad, then the rule's states.
template <class Rule, class T> struct ElementwiseFunctor {
  static constexpr int N = Rule::kNumStates;
  static constexpr int D = 2 + N;
  using Op = opmath_t<T>;
  using Args = ElementwiseArgs<Rule, T>;

  __device__ static void step(const Args& a, T& p, T g, T* s) {
    Op pv = Op(p);
    const Op gv = coupled_grad(a.extra, pv, Op(g));
    Op st[N > 0 ? N : 1];
#pragma unroll
    for (int k = 0; k < N; ++k) st[k] = Op(s[k]);
    pv = decayed(a.extra, pv);
    Rule::update(a.rule, pv, gv, st);
    p = T(proximal(a.extra, pv));
#pragma unroll
    for (int k = 0; k < N; ++k) s[k] = T(st[k]);
  }

  __device__ static void run(const TensorList<D>& tl, const BlockTask& task, const Args& a) {
    T* p = static_cast<T*>(tl.ptr[0][task.slot]) + task.begin;
    const T* g = static_cast<const T*>(tl.ptr[1][task.slot]) + task.begin;
    T* s[N > 0 ? N : 1];
    bool vector_ok = aligned16(tl.ptr[0][task.slot]) && aligned16(tl.ptr[1][task.slot]);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      s[k] = static_cast<T*>(tl.ptr[2 + k][task.slot]) + task.begin;
      vector_ok = vector_ok && aligned16(tl.ptr[2 + k][task.slot]);
    }
    using V = Vec<T>;
    constexpr int kVec = V::kSize;
    chunk_loop<kVec>(
        task.end - task.begin, vector_ok,
        [&](int64_t v) {
          V pv = reinterpret_cast<const V*>(p)[v];
          const V gv = reinterpret_cast<const V*>(g)[v];
          V sv[N > 0 ? N : 1];
#pragma unroll
          for (int k = 0; k < N; ++k) sv[k] = reinterpret_cast<const V*>(s[k])[v];
#pragma unroll
          for (int e = 0; e < kVec; ++e) {
            T st[N > 0 ? N : 1];
#pragma unroll
            for (int k = 0; k < N; ++k) st[k] = sv[k].v[e];
            step(a, pv.v[e], gv.v[e], st);
#pragma unroll
            for (int k = 0; k < N; ++k) sv[k].v[e] = st[k];
          }
          reinterpret_cast<V*>(p)[v] = pv;
#pragma unroll
          for (int k = 0; k < N; ++k) reinterpret_cast<V*>(s[k])[v] = sv[k];
        },
        [&](int64_t i) {
          T st[N > 0 ? N : 1];
#pragma unroll
          for (int k = 0; k < N; ++k) st[k] = s[k][i];
          step(a, p[i], g[i], st);
#pragma unroll
          for (int k = 0; k < N; ++k) s[k][i] = st[k];
        });
  }
};

template <class Rule, class T>
void run_elementwise_typed(const std::vector<Tensor>& tensors, const Update& u,
                           cudaStream_t stream) {
  using F = ElementwiseFunctor<Rule, T>;
  using Op = opmath_t<T>;
  const typename F::Args args{Rule::template prepare<Op>(u.hyper, u.step), extra_scalars<Op>(u)};
  std::vector<int64_t> sizes;
  for (const Tensor& t : tensors) sizes.push_back(t.size);
  multi_tensor_apply<F, F::D>(
      sizes,
      [&](size_t t, int d) -> void* {
        const Tensor& x = tensors[t];
        return d == 0 ? x.param : d == 1 ? const_cast<void*>(x.grad) : x.state[d - 2];
      },
      args, stream);
}

// Every storage dtype of one rule (instantiated in elementwise_part*.cu).
template <class Rule>
void run_elementwise(DType dtype, const std::vector<Tensor>& tensors, const Update& u,
                     cudaStream_t stream) {
  with_dtype(dtype, [&](auto tag) {
    run_elementwise_typed<Rule, decltype(tag)>(tensors, u, stream);
  });
}

}  // namespace fusedopt::cuda
