// Dropout kernels, compiled once per ISA (FUSEDOPT_ISA_NAMESPACE). Keep bits
// are made 64 elements at a time (fusedopt/dropout.h: keep_bits64); chunk
// boundaries are multiples of 64 elements, so mask bytes never straddle chunks.
// With AVX2 / AVX-512 the Philox rounds run one block per 32-bit lane (the
// compilers' own vectorization uses 64-bit multiplies, about 2x slower): the
// header's rounds over a small lane type, bit-identical to the scalar path.
#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "dropout_ops.h"

#ifndef FUSEDOPT_ISA_NAMESPACE
#error "FUSEDOPT_ISA_NAMESPACE must be defined"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA_NAMESPACE {
namespace {

static_assert(kChunkElements % 64 == 0, "chunks must hold whole 64-element groups");

#if defined(__AVX512F__)
// 16 uint32 lanes. mulhilo: _mm512_mul_epu32 multiplies the even lanes into
// 64-bit products; the odd lanes go through a 32-bit shift.
struct Lanes {
  static constexpr int kCount = 16;
  __m512i v;
  Lanes() = default;
  explicit Lanes(__m512i x) : v(x) {}
  Lanes(uint32_t x) : v(_mm512_set1_epi32(int(x))) {}  // NOLINT: broadcast, as the header uses
  static Lanes load(const uint32_t* p) { return Lanes(_mm512_loadu_si512(p)); }
  Lanes operator^(Lanes o) const { return Lanes(_mm512_xor_si512(v, o.v)); }
  Lanes operator&(Lanes o) const { return Lanes(_mm512_and_si512(v, o.v)); }
};
inline void mulhilo(Lanes a, uint32_t m, Lanes& hi, Lanes& lo) {
  const __m512i mv = _mm512_set1_epi64(int64_t(m));
  const __m512i even = _mm512_mul_epu32(a.v, mv);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a.v, 32), mv);
  lo = Lanes(_mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32)));
  hi = Lanes(_mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd));
}
// Unsigned lane compares as bit masks (bit j: lane j).
inline uint32_t ge_mask(Lanes a, Lanes b) { return _mm512_cmpge_epu32_mask(a.v, b.v); }
inline uint32_t gt_mask(Lanes a, Lanes b) { return _mm512_cmpgt_epu32_mask(a.v, b.v); }
inline uint32_t eq_mask(Lanes a, Lanes b) { return _mm512_cmpeq_epu32_mask(a.v, b.v); }
#define FUSEDOPT_DROPOUT_LANES 1
#elif defined(__AVX2__)
// 8 uint32 lanes; AVX2 has no unsigned compare: max_epu32 stands in.
struct Lanes {
  static constexpr int kCount = 8;
  __m256i v;
  Lanes() = default;
  explicit Lanes(__m256i x) : v(x) {}
  Lanes(uint32_t x) : v(_mm256_set1_epi32(int(x))) {}  // NOLINT: broadcast, as the header uses
  static Lanes load(const uint32_t* p) { return Lanes(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  Lanes operator^(Lanes o) const { return Lanes(_mm256_xor_si256(v, o.v)); }
  Lanes operator&(Lanes o) const { return Lanes(_mm256_and_si256(v, o.v)); }
};
inline void mulhilo(Lanes a, uint32_t m, Lanes& hi, Lanes& lo) {
  const __m256i mv = _mm256_set1_epi64x(int64_t(m));
  const __m256i even = _mm256_mul_epu32(a.v, mv);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a.v, 32), mv);
  lo = Lanes(_mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA));
  hi = Lanes(_mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA));
}
inline uint32_t lane_mask(__m256i all_ones_where) {
  return uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(all_ones_where)));
}
inline uint32_t ge_mask(Lanes a, Lanes b) {
  return lane_mask(_mm256_cmpeq_epi32(_mm256_max_epu32(a.v, b.v), a.v));
}
inline uint32_t eq_mask(Lanes a, Lanes b) { return lane_mask(_mm256_cmpeq_epi32(a.v, b.v)); }
inline uint32_t gt_mask(Lanes a, Lanes b) { return ge_mask(a, b) & ~eq_mask(a, b); }
#define FUSEDOPT_DROPOUT_LANES 1
#endif

#ifdef FUSEDOPT_DROPOUT_LANES
// dropout::Uniform<T>::keep for number i of each lane's block, as a lane mask.
inline uint32_t keep_mask(const Lanes (&w)[4], int i, uint32_t t, float) {
  return ge_mask(w[i] & Lanes(dropout::Uniform<float>::kMantissa), Lanes(t));
}
inline uint32_t keep_mask(const Lanes (&w)[4], int i, uint64_t t, double) {
  // (hi << 32 | lo) >= t on 32-bit lanes: hi > t_hi, or hi == t_hi and lo >= t_lo.
  const Lanes hi = w[2 * i] & Lanes(dropout::Uniform<double>::kHighMantissa);
  const Lanes t_hi = Lanes(uint32_t(t >> 32)), t_lo = Lanes(uint32_t(t));
  return gt_mask(hi, t_hi) | (eq_mask(hi, t_hi) & ge_mask(w[2 * i + 1], t_lo));
}

// dropout::keep_bits64, with Lanes::kCount blocks per vector.
template <class T>
uint64_t group_keep_bits(const dropout::Stream& s, uint64_t group,
                         typename dropout::Uniform<T>::Threshold t) {
  using U = dropout::Uniform<T>;
  constexpr int kBlocks = 64 / U::kPerBlock;
  static_assert(kBlocks % Lanes::kCount == 0, "whole vectors of blocks");
  uint32_t c[4][kBlocks];
  dropout::block_counters(s, group * kBlocks, c);
  uint32_t masks[U::kPerBlock] = {};
  for (int b = 0; b < kBlocks; b += Lanes::kCount) {
    Lanes w[4] = {Lanes::load(c[0] + b), Lanes::load(c[1] + b), Lanes::load(c[2] + b),
                  Lanes::load(c[3] + b)};
    philox::rounds(w[0], w[1], w[2], w[3], s.key[0], s.key[1]);
    for (int i = 0; i < U::kPerBlock; ++i) masks[i] |= keep_mask(w, i, t, T()) << b;
  }
  return U::interleave(masks);
}
#else
template <class T>
uint64_t group_keep_bits(const dropout::Stream& s, uint64_t group,
                         typename dropout::Uniform<T>::Threshold t) {
  return dropout::keep_bits64<T>(s, group, t);
}
#endif

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

// y[k] = keep bit k of `bits` ? x[k] * scale : 0, for k < len. The bits are
// shifted in words as wide as T, so that the loop vectorizes.
template <class T>
void apply_bits(const T* __restrict x, T* __restrict y, int64_t len, uint64_t bits, T scale) {
  using Word = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  constexpr int kWidth = 8 * sizeof(Word);
  if (len == 64) {
    for (int h = 0; h < 64 / kWidth; ++h) {
      const Word word = Word(bits >> (kWidth * h));
      for (int k = 0; k < kWidth; ++k)
        y[kWidth * h + k] = dropout::apply(x[kWidth * h + k], bool((word >> k) & 1), scale);
    }
    return;
  }
  for (int64_t k = 0; k < len; ++k) y[k] = dropout::apply(x[k], bool((bits >> k) & 1), scale);
}

// Keep bits of elements [begin, end) of the stream into `mask`, and, when x is
// given, y = dropout(x) over the same elements in the same pass.
template <class T>
void generate_range(const dropout::Stream& s, typename dropout::Uniform<T>::Threshold threshold,
                    T scale, const T* x, T* y, uint8_t* mask, int64_t begin, int64_t end) {
  for (int64_t j = begin; j < end; j += 64) {
    const int64_t len = std::min<int64_t>(64, end - j);
    const uint64_t bits = group_keep_bits<T>(s, uint64_t(j / 64), threshold) & low_bits(len);
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
