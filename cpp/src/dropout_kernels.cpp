// Dropout kernels, compiled once per ISA (FUSEDOPT_ISA_NAMESPACE). Keep bits
// are made 64 elements at a time (fusedopt/dropout.h: keep_bits64); chunk
// boundaries are multiples of 64 elements, so mask bytes never straddle chunks.
#include <algorithm>
#include <vector>

#include "dropout_ops.h"

#ifndef FUSEDOPT_ISA_NAMESPACE
#error "FUSEDOPT_ISA_NAMESPACE must be defined"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA_NAMESPACE {
namespace {

static_assert(kChunkElements % 64 == 0, "chunks must hold whole 64-element groups");

std::vector<Chunk> chunks_of(int64_t n) {
  Batch one;
  one.tensors.resize(1);
  one.tensors[0].size = n;
  return make_chunks(one);
}

template <class Fn>
void over_chunks(int64_t n, const Fn& fn) {
  const auto chunks = chunks_of(n);
  for_each_chunk(chunks, [&](size_t i) { fn(chunks[i].begin, chunks[i].end); });
}

// The `len` (<= 64) bits of elements [j, j + len) of a packed mask, j % 64 == 0.
uint64_t load_bits(const uint8_t* mask, int64_t j, int64_t len) {
  uint64_t bits = 0;
  for (int64_t b = 0; b < (len + 7) / 8; ++b) bits |= uint64_t(mask[j / 8 + b]) << (8 * b);
  return bits;
}

void store_bits(uint8_t* mask, int64_t j, int64_t len, uint64_t bits) {
  for (int64_t b = 0; b < (len + 7) / 8; ++b) mask[j / 8 + b] = uint8_t(bits >> (8 * b));
}

uint64_t low_bits(int64_t len) { return len >= 64 ? ~uint64_t(0) : (uint64_t(1) << len) - 1; }

// y[k] = keep bit k of `bits` ? x[k] * scale : 0, for k < len.
template <class T>
void apply_bits(const T* __restrict x, T* __restrict y, int64_t len, uint64_t bits, T scale) {
  for (int64_t k = 0; k < len; ++k) y[k] = dropout::apply(x[k], bool((bits >> k) & 1), scale);
}

// Keep bits of elements [begin, end) of the stream into `mask`, and, when x is
// given, y = dropout(x) over the same elements in the same pass.
template <class T>
void generate_range(const dropout::Stream& s, typename dropout::Uniform<T>::Threshold threshold,
                    T scale, const T* x, T* y, uint8_t* mask, int64_t begin, int64_t end) {
  for (int64_t j = begin; j < end; j += 64) {
    const int64_t len = std::min<int64_t>(64, end - j);
    const uint64_t bits = dropout::keep_bits64<T>(s, uint64_t(j / 64), threshold) & low_bits(len);
    if (mask) store_bits(mask, j, len, bits);
    if (x) apply_bits(x + j, y + j, len, bits, scale);
  }
}

// y = dropout(x) with the bits of a packed mask over the noise shape.
template <class T>
void apply_mask_range(const NoiseBroadcast& nb, const uint8_t* mask, T scale, const T* x, T* y,
                      int64_t begin, int64_t end) {
  if (nb.identity) {
    for (int64_t j = begin; j < end; j += 64) {
      const int64_t len = std::min<int64_t>(64, end - j);
      apply_bits(x + j, y + j, len, load_bits(mask, j, len), scale);
    }
    return;
  }
  // Walk x's (merged) multi-index from `begin`; `base` is the noise offset of
  // every dim but the last.
  const size_t nd = nb.dims.size();
  std::vector<int64_t> idx(nd);
  int64_t rest = begin, base = 0;
  for (size_t d = nd; d-- > 0;) {
    idx[d] = rest % nb.dims[d];
    rest /= nb.dims[d];
  }
  for (size_t d = 0; d + 1 < nd; ++d) base += idx[d] * nb.noise_strides[d];
  const int64_t inner = nb.dims[nd - 1], inner_stride = nb.noise_strides[nd - 1];
  for (int64_t i = begin; i < end;) {
    const int64_t run = std::min(end - i, inner - idx[nd - 1]);
    const int64_t j = base + idx[nd - 1] * inner_stride;
    for (int64_t k = 0; k < run; ++k)
      y[i + k] = dropout::apply(x[i + k], dropout::mask_bit(mask, j + k * inner_stride), scale);
    i += run;
    idx[nd - 1] = 0;
    for (size_t d = nd - 1; d-- > 0;) {
      base += nb.noise_strides[d];
      if (++idx[d] < nb.dims[d]) break;
      base -= nb.noise_strides[d] * nb.dims[d];
      idx[d] = 0;
    }
  }
}

template <class T>
void run_t(const DropoutCall& c) {
  const T scale = dropout::scale<T>(c.rate);
  const auto threshold = dropout::Uniform<T>::threshold(c.rate);
  const T* x = static_cast<const T*>(c.in);
  T* y = static_cast<T*>(c.out);
  if (c.noise.identity && c.mask_in == nullptr) {  // generate and apply in one pass
    over_chunks(c.size, [&](int64_t begin, int64_t end) {
      generate_range<T>(*c.stream, threshold, scale, x, y, c.mask_out, begin, end);
    });
    return;
  }
  const uint8_t* mask = c.mask_in;
  std::vector<uint8_t> scratch;
  if (mask == nullptr) {  // a noise shape: make its bits first
    uint8_t* bits = c.mask_out;
    if (bits == nullptr) {
      scratch.resize(size_t((c.noise.noise_size + 7) / 8));
      bits = scratch.data();
    }
    over_chunks(c.noise.noise_size, [&](int64_t begin, int64_t end) {
      generate_range<T>(*c.stream, threshold, scale, nullptr, nullptr, bits, begin, end);
    });
    mask = bits;
  }
  over_chunks(c.size, [&](int64_t begin, int64_t end) {
    apply_mask_range<T>(c.noise, mask, scale, x, y, begin, end);
  });
}

void run(const DropoutCall& c) {
  if (c.dtype == DType::kFloat64)
    run_t<double>(c);
  else
    run_t<float>(c);
}

}  // namespace

const DropoutKernels& dropout_kernels() {
  static const DropoutKernels k{&run};
  return k;
}

}  // namespace FUSEDOPT_ISA_NAMESPACE
}  // namespace fusedopt
