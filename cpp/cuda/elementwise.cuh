// The one templated kernel for every elementwise rule: in one pass over
// memory, as the CPU engine's elementwise_range (cpp/src/kernels.cpp) does,
// the element pipeline of fusedopt/pipeline.h around Rule::update. Storage T
// (float, double, __half, __nv_bfloat16) is computed in opmath_t<T> (float
// for the half types, double for double).
#pragma once

#include "fusedopt/pipeline.h"
#include "fusedopt/rules.h"
#include "multi_tensor.cuh"

namespace fusedopt::cuda {

// The pipeline around the rule (fusedopt/pipeline.h), from this step's Update;
// on the GPU its stages branch on their (uniform) flags.
template <class Op> ElementPipeline<Op> pipeline_of(const Update& u) {
  return ElementPipeline<Op>::make(u.decay, u.l1, u.l2, u.step.learning_rate, u.proximal_l1);
}

template <class Rule, class T> struct ElementwiseArgs {
  using Op = opmath_t<T>;
  typename Rule::template Scalars<Op> rule;
  ElementPipeline<Op> pipe;
};

// Pointers: param, grad, then the rule's states.
template <class Rule, class T> struct ElementwiseFunctor {
  static constexpr int N = Rule::kNumStates;
  static constexpr int D = 2 + N;
  using Op = opmath_t<T>;
  using Args = ElementwiseArgs<Rule, T>;

  __device__ static void step(const Args& a, T& p, T g, T* s) {
    Op pv = Op(p);
    Op st[N > 0 ? N : 1];
#pragma unroll
    for (int k = 0; k < N; ++k) st[k] = Op(s[k]);
    a.pipe.template step<Rule>(a.rule, pv, Op(g), st);
    p = T(pv);
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
  const typename F::Args args{Rule::template prepare<Op>(u.hyper, u.step), pipeline_of<Op>(u)};
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
