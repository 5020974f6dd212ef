// LAMB on the GPU, as the CPU engine's run_lamb (cpp/src/kernels.cpp) with
// the math of fusedopt/rules/lamb.h:
//   pass 1 (multi-tensor): coupled L1/L2, decay, moments, and per-chunk sums
//          of p^2 and u^2 in double, one partial per chunk;
//   reduce: per tensor, the partials of its chunks added in chunk order, then
//          the trust ratio times lr;
//   pass 2 (multi-tensor): p <- p - ratio * lr * u, then the proximal step.
// Chunks, block size and reduction trees are fixed, so the result does not
// depend on the device or on timing.
#include "elementwise.cuh"
#include "launchers.h"

namespace fusedopt::cuda {
namespace {

using Rule = rules::Lamb;

template <class T> struct Pass1Args {
  using Op = opmath_t<T>;
  Rule::Scalars<Op> rule;
  ElementPipeline<Op> pipe;
  double* partials;  // [2 * chunk]: sum p^2, [2 * chunk + 1]: sum u^2
};

template <class T> struct Pass1 {
  using Op = opmath_t<T>;
  static constexpr int D = 4;  // p, g, m, v

  __device__ static void step(const Pass1Args<T>& a, T& p, T g, T& m, T& v, double& ps,
                              double& ds) {
    Op pv = Op(p);
    const Op gv = a.pipe.gradient(pv, Op(g));
    if (a.pipe.decays) {
      pv = a.pipe.decayed(pv);
      p = T(pv);
    }
    Op st[2] = {Op(m), Op(v)};
    const Op dir = Rule::advance(a.rule, gv, st);
    m = T(st[0]);
    v = T(st[1]);
    ps += double(pv) * double(pv);
    ds += double(dir) * double(dir);
  }

  __device__ static void run(const TensorList<D>& tl, const BlockTask& task,
                             const Pass1Args<T>& a) {
    T* p = static_cast<T*>(tl.ptr[0][task.slot]) + task.begin;
    const T* g = static_cast<const T*>(tl.ptr[1][task.slot]) + task.begin;
    T* m = static_cast<T*>(tl.ptr[2][task.slot]) + task.begin;
    T* v = static_cast<T*>(tl.ptr[3][task.slot]) + task.begin;
    bool vector_ok = true;
    for (int d = 0; d < D; ++d) vector_ok = vector_ok && aligned16(tl.ptr[d][task.slot]);
    double ps = 0.0, ds = 0.0;
    using V = Vec<T>;
    chunk_loop<V::kSize>(
        task.end - task.begin, vector_ok,
        [&](int64_t k) {
          V pv = reinterpret_cast<const V*>(p)[k];
          const V gv = reinterpret_cast<const V*>(g)[k];
          V mv = reinterpret_cast<const V*>(m)[k];
          V vv = reinterpret_cast<const V*>(v)[k];
#pragma unroll
          for (int e = 0; e < V::kSize; ++e) step(a, pv.v[e], gv.v[e], mv.v[e], vv.v[e], ps, ds);
          if (a.pipe.decays) reinterpret_cast<V*>(p)[k] = pv;
          reinterpret_cast<V*>(m)[k] = mv;
          reinterpret_cast<V*>(v)[k] = vv;
        },
        [&](int64_t i) { step(a, p[i], g[i], m[i], v[i], ps, ds); });
    ps = block_sum(ps);
    ds = block_sum(ds);
    if (threadIdx.x == 0) {
      a.partials[2 * task.chunk] = ps;
      a.partials[2 * task.chunk + 1] = ds;
    }
  }
};

// Per tensor of one launch: where its partials are, where its ratio goes.
constexpr int kReduceMax = 240;
template <class Op> struct ReduceArgs {
  int64_t first_chunk[kReduceMax];
  int32_t chunks[kReduceMax];
  int32_t index[kReduceMax];
  int32_t count;
  Op lr;
  const double* partials;
  Op* ratio_lr;
};

template <class Op> __global__ void lamb_ratio_kernel(const ReduceArgs<Op> a) {
  const int t = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (t >= a.count) return;
  double param_sq = 0.0, dir_sq = 0.0;
  for (int64_t c = a.first_chunk[t]; c < a.first_chunk[t] + a.chunks[t]; ++c) {
    param_sq += a.partials[2 * c];
    dir_sq += a.partials[2 * c + 1];
  }
  a.ratio_lr[a.index[t]] = Op(Rule::trust_ratio(sqrt(param_sq), sqrt(dir_sq))) * a.lr;
}

template <class T> struct Pass2Args {
  using Op = opmath_t<T>;
  Rule::Scalars<Op> rule;
  ElementPipeline<Op> pipe;
  const Op* ratio_lr;  // per tensor of the call
};

template <class T> struct Pass2 {
  using Op = opmath_t<T>;
  static constexpr int D = 3;  // p, m, v

  __device__ static void step(const Pass2Args<T>& a, Op r, T& p, T m, T v) {
    Op pv = Op(p);
    Rule::apply(r, pv, Rule::direction(a.rule, Op(m), Op(v)));
    p = T(a.pipe.finished(pv));
  }

  __device__ static void run(const TensorList<D>& tl, const BlockTask& task,
                             const Pass2Args<T>& a) {
    T* p = static_cast<T*>(tl.ptr[0][task.slot]) + task.begin;
    const T* m = static_cast<const T*>(tl.ptr[1][task.slot]) + task.begin;
    const T* v = static_cast<const T*>(tl.ptr[2][task.slot]) + task.begin;
    const Op r = a.ratio_lr[tl.index[task.slot]];
    bool vector_ok = true;
    for (int d = 0; d < D; ++d) vector_ok = vector_ok && aligned16(tl.ptr[d][task.slot]);
    using V = Vec<T>;
    chunk_loop<V::kSize>(
        task.end - task.begin, vector_ok,
        [&](int64_t k) {
          V pv = reinterpret_cast<const V*>(p)[k];
          const V mv = reinterpret_cast<const V*>(m)[k];
          const V vv = reinterpret_cast<const V*>(v)[k];
#pragma unroll
          for (int e = 0; e < V::kSize; ++e) step(a, r, pv.v[e], mv.v[e], vv.v[e]);
          reinterpret_cast<V*>(p)[k] = pv;
        },
        [&](int64_t i) { step(a, r, p[i], m[i], v[i]); });
  }
};

template <class T>
void run_lamb_typed(const std::vector<Tensor>& tensors, const Update& u, cudaStream_t stream) {
  using Op = opmath_t<T>;
  const auto c = Rule::prepare<Op>(u.hyper, u.step);
  const auto pipe = pipeline_of<Op>(u);
  std::vector<int64_t> sizes;
  for (const Tensor& t : tensors) sizes.push_back(t.size);
  const int64_t chunks = total_chunks(sizes);
  if (chunks == 0) return;
  const size_t partial_bytes = size_t(chunks) * 2 * sizeof(double);
  const size_t ratio_offset = (partial_bytes + 255) / 256 * 256;
  Scratch scratch(ratio_offset + tensors.size() * sizeof(Op), stream);
  double* partials = scratch.as<double>();
  Op* ratio_lr = scratch.as<Op>(ratio_offset);

  multi_tensor_apply<Pass1<T>, 4>(
      sizes,
      [&](size_t t, int d) -> void* {
        const Tensor& x = tensors[t];
        return d == 0 ? x.param : d == 1 ? const_cast<void*>(x.grad) : x.state[d - 2];
      },
      Pass1Args<T>{c, pipe, partials}, stream);

  ReduceArgs<Op> r{};
  r.lr = c.lr;
  r.partials = partials;
  r.ratio_lr = ratio_lr;
  int64_t first = 0;
  const auto launch = [&] {
    lamb_ratio_kernel<Op><<<int(ceil_div(r.count, 128)), 128, 0, stream>>>(r);
    check_launch("lamb_ratio_kernel");
    r.count = 0;
  };
  for (size_t t = 0; t < tensors.size(); ++t) {
    if (tensors[t].size == 0) continue;
    r.first_chunk[r.count] = first;
    r.chunks[r.count] = int32_t(ceil_div(tensors[t].size, kChunk));
    r.index[r.count] = int32_t(t);
    first += r.chunks[r.count];
    if (++r.count == kReduceMax) launch();
  }
  if (r.count > 0) launch();

  multi_tensor_apply<Pass2<T>, 3>(
      sizes,
      [&](size_t t, int d) -> void* {
        const Tensor& x = tensors[t];
        return d == 0 ? x.param : x.state[d - 1];
      },
      Pass2Args<T>{c, pipe, ratio_lr}, stream);
}

}  // namespace

void run_lamb(DType dtype, const std::vector<Tensor>& tensors, const Update& u,
              cudaStream_t stream) {
  with_dtype(dtype, [&](auto tag) { run_lamb_typed<decltype(tag)>(tensors, u, stream); });
}

}  // namespace fusedopt::cuda
