// Shared by the CUDA kernels: errors, the device guard, dtype dispatch,
// 16-byte vector loads, deterministic reductions and stream-ordered scratch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda_engine.h"
#include "fusedopt/common.h"

namespace fusedopt::cuda {

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw CudaError(std::string(what) + ": " + cudaGetErrorName(err) + " (" +
                    cudaGetErrorString(err) + ")");
}
// After a launch: a bad configuration shows here, a fault at the next sync.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// Makes `device` current for the scope (device < 0: keep the current one).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device >= 0 && device != previous_) {
      check(cudaSetDevice(device), "cudaSetDevice");
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

// Runs a launcher body and turns a CUDA error into a Status.
template <class F> Status guarded(int device, F&& body) {
  try {
    DeviceGuard guard(device);
    body();
    return {};
  } catch (const std::exception& e) {
    return e.what();
  }
}

// f(T{}) for the storage type of `dtype`; with kFloatingOnly, half types are
// an error (for kernels whose CPU counterpart has float and double only).
template <bool kFloatingOnly = false, class F> void with_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(float{}); return;
    case DType::kFloat64: f(double{}); return;
    case DType::kFloat16:
      if constexpr (!kFloatingOnly) { f(__half{}); return; }
      break;
    case DType::kBFloat16:
      if constexpr (!kFloatingOnly) { f(__nv_bfloat16{}); return; }
      break;
  }
  throw std::invalid_argument(std::string("dtype ") + dtype_name(dtype) + " is not supported here");
}

// The launch shape every kernel uses: fixed, so that reductions (which
// depend on the block size) are the same on every device.
constexpr int kBlockThreads = 512;
// Elements per block-task of the multi-tensor apply (a multiple of 64, so
// dropout's 64-element groups and every vector width divide it).
constexpr int64_t kChunk = int64_t(1) << 16;

// 16 bytes of T: 4 float, 2 double, 8 half.
template <class T> struct alignas(16) Vec {
  static constexpr int kSize = int(16 / sizeof(T));
  T v[kSize];
};

__host__ __device__ inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Sum over a warp in a fixed butterfly order; lane 0 holds the total.
__device__ inline double warp_sum(double x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_down_sync(0xffffffffu, x, offset);
  return x;
}

// Sum over a block of kBlockThreads threads in a fixed order (warps, then
// warp totals in warp order); thread 0 holds the total. Every thread must call.
__device__ inline double block_sum(double x) {
  __shared__ double warp_totals[kBlockThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = warp_sum(x);
  __syncthreads();  // warp_totals may still be read by a previous call
  if (lane == 0) warp_totals[warp] = x;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kBlockThreads / 32; ++w) total += warp_totals[w];
  return total;
}

// Stream-ordered device scratch, freed (stream-ordered) at scope exit.
class Scratch {
 public:
  Scratch(size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes > 0) check(cudaMallocAsync(&ptr_, bytes, stream), "cudaMallocAsync");
  }
  ~Scratch() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T> T* as(size_t byte_offset = 0) const {
    return reinterpret_cast<T*>(static_cast<char*>(ptr_) + byte_offset);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace fusedopt::cuda
