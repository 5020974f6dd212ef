// Multi-tensor apply: many tensors per launch, the chunk list in the kernel
// arguments. Each block runs one chunk (kChunk elements of one tensor); a
// launch carries up to TensorList<D>::kMaxTensors tensors (D pointers each)
// and kMaxBlocks chunks, and the host loops launches until every chunk ran.
// The argument struct stays under CUDA's classic 4 KB kernel-parameter limit.
#pragma once

#include <functional>

#include "device_common.cuh"

namespace fusedopt::cuda {

constexpr int kMaxBlocks = 320;
// Room left for the functor's own arguments (rule scalars, flags, pointers).
constexpr int kFunctorArgBytes = 256;
constexpr int kArgBytes = 4096;

template <int D> struct TensorList {
  // Per tensor: D pointers, the size, the index in the call's list, and the
  // call-wide index of its first chunk; per block: 5 bytes.
  static constexpr int kMaxTensors =
      (kArgBytes - kFunctorArgBytes - kMaxBlocks * 5) / (8 * D + 8 + 4 + 4);
  static_assert(kMaxTensors >= 8 && kMaxTensors <= 255, "tensor slots must fit in a byte");

  void* ptr[D][kMaxTensors];
  int64_t size[kMaxTensors];
  int32_t index[kMaxTensors];
  int32_t first_chunk[kMaxTensors];
  int32_t block_chunk[kMaxBlocks];  // chunk of the tensor, per block
  uint8_t block_tensor[kMaxBlocks];  // slot, per block
};

// One block's work: tensor slot, its element range, the call-wide chunk index.
struct BlockTask {
  int slot;
  int64_t begin, end;
  int64_t chunk;  // call-wide, for per-chunk partial results
};

template <int D> __device__ inline BlockTask block_task(const TensorList<D>& tl) {
  const int slot = tl.block_tensor[blockIdx.x];
  const int64_t c = tl.block_chunk[blockIdx.x];
  const int64_t begin = c * kChunk;
  const int64_t end = tl.size[slot] < begin + kChunk ? tl.size[slot] : begin + kChunk;
  return BlockTask{slot, begin, end, int64_t(tl.first_chunk[slot]) + c};
}

template <class Functor, int D, class Args>
__global__ void __launch_bounds__(kBlockThreads)
    multi_tensor_kernel(const TensorList<D> tl, const Args args) {
  Functor::run(tl, block_task(tl), args);
}

// Total chunks of the nonempty tensors (the size of per-chunk result arrays).
inline int64_t total_chunks(const std::vector<int64_t>& sizes) {
  int64_t n = 0;
  for (int64_t s : sizes) n += ceil_div(s, kChunk);
  return n;
}

// Launches Functor over every chunk of every tensor. `pointers(t, d)` gives
// pointer d of tensor t; empty tensors are skipped.
template <class Functor, int D, class Args>
void multi_tensor_apply(const std::vector<int64_t>& sizes,
                        const std::function<void*(size_t, int)>& pointers, const Args& args,
                        cudaStream_t stream) {
  static_assert(sizeof(TensorList<D>) + sizeof(Args) <= size_t(kArgBytes),
                "kernel arguments exceed 4 KB");
  using List = TensorList<D>;
  List tl;
  int slot = 0, blocks = 0;
  int64_t first_chunk = 0;
  const auto launch = [&] {
    multi_tensor_kernel<Functor, D, Args><<<blocks, kBlockThreads, 0, stream>>>(tl, args);
    check_launch("multi_tensor_kernel");
    blocks = 0;
  };
  for (size_t t = 0; t < sizes.size(); ++t) {
    if (sizes[t] == 0) continue;
    for (int d = 0; d < D; ++d) tl.ptr[d][slot] = pointers(t, d);
    tl.size[slot] = sizes[t];
    tl.index[slot] = int32_t(t);
    tl.first_chunk[slot] = int32_t(first_chunk);
    const int64_t chunks = ceil_div(sizes[t], kChunk);
    first_chunk += chunks;
    bool tensor_done_in_launch = false;
    for (int64_t c = 0; c < chunks; ++c) {
      tl.block_tensor[blocks] = uint8_t(slot);
      tl.block_chunk[blocks] = int32_t(c);
      ++blocks;
      const bool last_chunk = c == chunks - 1;
      if (blocks == kMaxBlocks || (last_chunk && slot == List::kMaxTensors - 1)) {
        launch();
        if (last_chunk) {
          tensor_done_in_launch = true;
          slot = 0;
        } else {  // the tensor goes on in the next launch, in slot 0
          for (int d = 0; d < D; ++d) tl.ptr[d][0] = tl.ptr[d][slot];
          tl.size[0] = tl.size[slot];
          tl.index[0] = tl.index[slot];
          tl.first_chunk[0] = tl.first_chunk[slot];
          slot = 0;
        }
      }
    }
    if (!tensor_done_in_launch) ++slot;
  }
  if (blocks > 0) launch();
}

// A chunk's element loop: fn(i) for every element of [0, n) of the chunk, on
// 16-byte vectors where `vector_ok` (all of the tensor's pointers aligned),
// through vector_fn(v) for vector v (elements [v * kVec, v * kVec + kVec)),
// and elementwise (fn) for the rest.
template <int kVec, class VecFn, class Fn>
__device__ inline void chunk_loop(int64_t n, bool vector_ok, const VecFn& vector_fn,
                                  const Fn& fn) {
  int64_t done = 0;
  if (vector_ok) {
    const int64_t vectors = n / kVec;
    for (int64_t v = threadIdx.x; v < vectors; v += blockDim.x) vector_fn(v);
    done = vectors * kVec;
  }
  for (int64_t i = done + threadIdx.x; i < n; i += blockDim.x) fn(i);
}

}  // namespace fusedopt::cuda
