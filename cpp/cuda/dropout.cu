// Dropout on the GPU with the CPU engine's masks, bit for bit: the keep bits
// of elements [64 k, 64 k + 64) are fusedopt/dropout.h's keep_bits64 (Philox
// counters are element indices, so any thread can make any group), packed
// little-endian into bytes as the CPU engine and numpy.packbits(...,
// bitorder="little") store them. y = keep ? x * scale : 0 in the storage
// type, as dropout::apply computes it.
#include "device_common.cuh"
#include "dropout_ops.h"
#include "fusedopt/dropout.h"

namespace fusedopt::cuda {
namespace {

constexpr int64_t kElementsPerBlock = int64_t(kBlockThreads) * 64;  // one group per thread
constexpr int kMaxNoiseDims = 16;

__device__ inline uint64_t low_bits(int64_t len) {
  return len >= 64 ? ~uint64_t(0) : (uint64_t(1) << len) - 1;
}

// Keep bits of [0, n) into `mask` (when given) and, when x is given,
// y = dropout(x) in the same pass (the bits staged in shared memory so that
// x and y are read and written coalesced).
template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    generate_kernel(const dropout::Stream s, const typename dropout::Uniform<T>::Threshold t,
                    const T scale, const T* x, T* y, uint8_t* mask, int64_t n, bool mask_aligned) {
  __shared__ uint64_t block_bits[kBlockThreads];
  const int64_t block_begin = int64_t(blockIdx.x) * kElementsPerBlock;
  const int64_t group = int64_t(blockIdx.x) * kBlockThreads + threadIdx.x;
  const int64_t first = group * 64;
  uint64_t bits = 0;
  if (first < n) {
    const int64_t len = n - first < 64 ? n - first : 64;
    bits = dropout::keep_bits64<T>(s, uint64_t(group), t) & low_bits(len);
    if (mask) {
      if (len == 64 && mask_aligned) {
        reinterpret_cast<uint64_t*>(mask)[group] = bits;
      } else {
        for (int64_t b = 0; b < (len + 7) / 8; ++b) mask[first / 8 + b] = uint8_t(bits >> (8 * b));
      }
    }
  }
  if (x == nullptr) return;
  block_bits[threadIdx.x] = bits;
  __syncthreads();
  const int64_t block_end = n - block_begin < kElementsPerBlock ? n : block_begin + kElementsPerBlock;
  for (int64_t i = block_begin + threadIdx.x; i < block_end; i += blockDim.x) {
    const int64_t e = i - block_begin;
    y[i] = dropout::apply(x[i], bool((block_bits[e >> 6] >> (e & 63)) & 1), scale);
  }
}

// x's merged dims and their strides in the noise tensor (0 where broadcast).
struct NoiseArgs {
  int64_t dims[kMaxNoiseDims];
  int64_t strides[kMaxNoiseDims];
  int32_t count;
  bool identity;
};

template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    apply_mask_kernel(const T* x, T* y, int64_t n, const uint8_t* mask, const T scale,
                      const NoiseArgs nb) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t j = i;
    if (!nb.identity) {
      int64_t rest = i;
      j = 0;
      for (int d = nb.count - 1; d >= 0; --d) {
        j += (rest % nb.dims[d]) * nb.strides[d];
        rest /= nb.dims[d];
      }
    }
    y[i] = dropout::apply(x[i], dropout::mask_bit(mask, j), scale);
  }
}

template <class T>
void generate(const dropout::Stream& s, double rate, const T* x, T* y, uint8_t* mask, int64_t n,
              cudaStream_t stream) {
  if (n == 0) return;
  const auto threshold = dropout::Uniform<T>::threshold(rate);
  const T scale = dropout::scale<T>(rate);
  const bool aligned = (reinterpret_cast<uintptr_t>(mask) & 7u) == 0;
  generate_kernel<T><<<unsigned(ceil_div(n, kElementsPerBlock)), kBlockThreads, 0, stream>>>(
      s, threshold, scale, x, y, mask, n, aligned);
  check_launch("dropout generate_kernel");
}

template <class T> void run(const DropoutArgs& a, cudaStream_t stream) {
  const T* x = static_cast<const T*>(a.in);
  T* y = static_cast<T*>(a.out);
  const NoiseBroadcast& noise = *a.noise;
  if (noise.identity && a.mask_in == nullptr) {  // generate and apply in one pass
    generate<T>(*a.stream, a.rate, x, y, a.mask_out, a.size, stream);
    return;
  }
  if (noise.dims.size() > size_t(kMaxNoiseDims))
    throw std::invalid_argument("dropout on CUDA: the noise shape has too many dims");
  NoiseArgs nb{};
  nb.count = int32_t(noise.dims.size());
  nb.identity = noise.identity;
  for (size_t d = 0; d < noise.dims.size(); ++d) {
    nb.dims[d] = noise.dims[d];
    nb.strides[d] = noise.noise_strides[d];
  }
  const uint8_t* mask = a.mask_in;
  const int64_t mask_bytes = (noise.noise_size + 7) / 8;
  Scratch scratch(mask == nullptr && a.mask_out == nullptr ? size_t(mask_bytes) : 0, stream);
  if (mask == nullptr) {  // a noise shape: make its bits first
    uint8_t* bits = a.mask_out ? a.mask_out : scratch.as<uint8_t>();
    generate<T>(*a.stream, a.rate, nullptr, nullptr, bits, noise.noise_size, stream);
    mask = bits;
  }
  if (a.size == 0) return;
  const int64_t blocks = std::min<int64_t>(ceil_div(a.size, kBlockThreads), 65536);
  apply_mask_kernel<T><<<unsigned(blocks), kBlockThreads, 0, stream>>>(
      x, y, a.size, mask, dropout::scale<T>(a.rate), nb);
  check_launch("dropout apply_mask_kernel");
}

}  // namespace

Status dropout(const DropoutArgs& args, int device, void* stream) {
  return guarded(device, [&] {
    with_dtype<true>(args.dtype, [&](auto tag) {
      run<decltype(tag)>(args, static_cast<cudaStream_t>(stream));
    });
  });
}

}  // namespace fusedopt::cuda
