// The regularizer kernels of regularizer_ops.h on the GPU, through the
// multi-tensor apply, with the formulas of fusedopt/regularizers.h. Penalty
// sums are per-chunk partials in double combined per tensor in chunk order.
#include "elementwise.cuh"
#include "regularizer_ops.h"

namespace fusedopt::cuda {
namespace {

// Grid-stride over the block's chunk.
#define FUSEDOPT_FOR_CHUNK(i, task) \
  for (int64_t i = (task).begin + threadIdx.x; i < (task).end; i += blockDim.x)

template <class T> struct SumsFunctor {
  static constexpr int D = 2;  // w, w0 (may be null)
  __device__ static void run(const TensorList<D>& tl, const BlockTask& task, double* partials) {
    const T* w = static_cast<const T*>(tl.ptr[0][task.slot]);
    const T* w0 = static_cast<const T*>(tl.ptr[1][task.slot]);
    double a = 0.0, s = 0.0;
    FUSEDOPT_FOR_CHUNK(i, task) {
      const double d = w0 ? double(w[i]) - double(w0[i]) : double(w[i]);
      a += fabs(d);
      s += d * d;
    }
    a = block_sum(a);
    s = block_sum(s);
    if (threadIdx.x == 0) {
      partials[2 * task.chunk] = a;
      partials[2 * task.chunk + 1] = s;
    }
  }
};

// Per tensor of one launch: the range of its partials and where its sums go.
constexpr int kCombineMax = 240;
struct CombineArgs {
  int64_t first_chunk[kCombineMax];
  int32_t chunks[kCombineMax];
  int32_t index[kCombineMax];
  int32_t count;
  const double* partials;
  double* sums;  // [2 * index]: sum |w - w0|, [2 * index + 1]: sum (w - w0)^2
};

__global__ void combine_kernel(const CombineArgs a) {
  const int t = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (t >= a.count) return;
  double sa = 0.0, ss = 0.0;
  for (int64_t c = a.first_chunk[t]; c < a.first_chunk[t] + a.chunks[t]; ++c) {
    sa += a.partials[2 * c];
    ss += a.partials[2 * c + 1];
  }
  a.sums[2 * a.index[t]] = sa;
  a.sums[2 * a.index[t] + 1] = ss;
}

template <class T> struct L1L2Args {
  opmath_t<T> l1, two_l2;
};
template <class T> struct L1L2Functor {
  static constexpr int D = 2;  // w, out
  __device__ static void run(const TensorList<D>& tl, const BlockTask& task, const L1L2Args<T>& a) {
    using Op = opmath_t<T>;
    const T* w = static_cast<const T*>(tl.ptr[0][task.slot]);
    T* out = static_cast<T*>(tl.ptr[1][task.slot]);
    FUSEDOPT_FOR_CHUNK(i, task) out[i] = T(regularizers::l1l2_gradient(Op(w[i]), a.l1, a.two_l2));
  }
};

template <class T> struct L2SPArgs {
  opmath_t<T> alpha, beta;
};
template <class T> struct L2SPFunctor {
  static constexpr int D = 3;  // w, w0 (may be null), out
  __device__ static void run(const TensorList<D>& tl, const BlockTask& task, const L2SPArgs<T>& a) {
    using Op = opmath_t<T>;
    const T* w = static_cast<const T*>(tl.ptr[0][task.slot]);
    const T* w0 = static_cast<const T*>(tl.ptr[1][task.slot]);
    T* out = static_cast<T*>(tl.ptr[2][task.slot]);
    if (w0 == nullptr) {
      FUSEDOPT_FOR_CHUNK(i, task) out[i] = T(regularizers::l2sp_gradient(Op(w[i]), Op(0), a.beta));
    } else {
      FUSEDOPT_FOR_CHUNK(i, task)
      out[i] = T(regularizers::l2sp_gradient(Op(w[i]), Op(w0[i]), a.alpha));
    }
  }
};

template <class T> struct ProximalFunctor {
  static constexpr int D = 2;  // w (in place), g
  using Args = regularizers::ProximalScalars<opmath_t<T>>;
  __device__ static void run(const TensorList<D>& tl, const BlockTask& task, const Args& c) {
    using Op = opmath_t<T>;
    T* w = static_cast<T*>(tl.ptr[0][task.slot]);
    const T* g = static_cast<const T*>(tl.ptr[1][task.slot]);
    FUSEDOPT_FOR_CHUNK(i, task) w[i] = T(regularizers::proximal_step(Op(w[i]), Op(g[i]), c));
  }
};

#undef FUSEDOPT_FOR_CHUNK

std::vector<int64_t> sizes_of(const std::vector<RegTensor>& tensors) {
  std::vector<int64_t> sizes;
  for (const RegTensor& t : tensors) sizes.push_back(t.size);
  return sizes;
}

template <class T>
void sums_t(const std::vector<RegTensor>& tensors, std::vector<double>* sum_abs,
            std::vector<double>* sum_squares, cudaStream_t stream) {
  const auto sizes = sizes_of(tensors);
  const int64_t chunks = total_chunks(sizes);
  std::vector<double> host(2 * tensors.size(), 0.0);
  if (chunks > 0) {
    const size_t sums_offset = (size_t(chunks) * 2 * sizeof(double) + 255) / 256 * 256;
    Scratch scratch(sums_offset + host.size() * sizeof(double), stream);
    double* partials = scratch.as<double>();
    double* sums = scratch.as<double>(sums_offset);
    check(cudaMemsetAsync(sums, 0, host.size() * sizeof(double), stream), "cudaMemsetAsync");
    multi_tensor_apply<SumsFunctor<T>, 2>(
        sizes,
        [&](size_t t, int d) -> void* {
          return const_cast<void*>(d == 0 ? tensors[t].w : tensors[t].other);
        },
        partials, stream);
    CombineArgs c{};
    c.partials = partials;
    c.sums = sums;
    int64_t first = 0;
    const auto launch = [&] {
      combine_kernel<<<int(ceil_div(c.count, 128)), 128, 0, stream>>>(c);
      check_launch("regularizer combine_kernel");
      c.count = 0;
    };
    for (size_t t = 0; t < tensors.size(); ++t) {
      if (tensors[t].size == 0) continue;
      c.first_chunk[c.count] = first;
      c.chunks[c.count] = int32_t(ceil_div(tensors[t].size, kChunk));
      c.index[c.count] = int32_t(t);
      first += c.chunks[c.count];
      if (++c.count == kCombineMax) launch();
    }
    if (c.count > 0) launch();
    check(cudaMemcpyAsync(host.data(), sums, host.size() * sizeof(double), cudaMemcpyDeviceToHost,
                          stream),
          "cudaMemcpyAsync");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  }
  sum_abs->assign(tensors.size(), 0.0);
  sum_squares->assign(tensors.size(), 0.0);
  for (size_t t = 0; t < tensors.size(); ++t) {
    (*sum_abs)[t] = host[2 * t];
    (*sum_squares)[t] = host[2 * t + 1];
  }
}

template <class Functor, int D, class Args>
void map(const std::vector<RegTensor>& tensors, const Args& args, cudaStream_t stream,
         void* (*pointer)(const RegTensor&, int)) {
  multi_tensor_apply<Functor, D>(
      sizes_of(tensors), [&](size_t t, int d) { return pointer(tensors[t], d); }, args, stream);
}

void* w_out(const RegTensor& t, int d) { return d == 0 ? const_cast<void*>(t.w) : t.out; }
void* w_other_out(const RegTensor& t, int d) {
  return d == 0 ? const_cast<void*>(t.w) : d == 1 ? const_cast<void*>(t.other) : t.out;
}
void* out_other(const RegTensor& t, int d) { return d == 0 ? t.out : const_cast<void*>(t.other); }

}  // namespace

Status regularizer_sums(DType dtype, const std::vector<RegTensor>& tensors,
                        std::vector<double>* sum_abs, std::vector<double>* sum_squares, int device,
                        void* stream) {
  return guarded(device, [&] {
    with_dtype<true>(dtype, [&](auto tag) {
      sums_t<decltype(tag)>(tensors, sum_abs, sum_squares, static_cast<cudaStream_t>(stream));
    });
  });
}

Status l1l2_gradient(DType dtype, const std::vector<RegTensor>& tensors, double l1, double l2,
                     int device, void* stream) {
  return guarded(device, [&] {
    with_dtype<true>(dtype, [&](auto tag) {
      using T = decltype(tag);
      using Op = opmath_t<T>;
      map<L1L2Functor<T>, 2>(tensors, L1L2Args<T>{Op(l1), Op(2.0 * l2)},
                             static_cast<cudaStream_t>(stream), &w_out);
    });
  });
}

Status l2sp_gradient(DType dtype, const std::vector<RegTensor>& tensors, double alpha, double beta,
                     int device, void* stream) {
  return guarded(device, [&] {
    with_dtype<true>(dtype, [&](auto tag) {
      using T = decltype(tag);
      using Op = opmath_t<T>;
      map<L2SPFunctor<T>, 3>(tensors, L2SPArgs<T>{Op(alpha), Op(beta)},
                             static_cast<cudaStream_t>(stream), &w_other_out);
    });
  });
}

Status proximal_step(DType dtype, const std::vector<RegTensor>& tensors, double lr, double l1,
                     double l2, int device, void* stream) {
  return guarded(device, [&] {
    with_dtype<true>(dtype, [&](auto tag) {
      using T = decltype(tag);
      using Op = opmath_t<T>;
      map<ProximalFunctor<T>, 2>(tensors, regularizers::proximal_scalars<Op>(lr, l1, l2),
                                 static_cast<cudaStream_t>(stream), &out_other);
    });
  });
}

}  // namespace fusedopt::cuda
