// Dropout (Srivastava et al., JMLR 2014) with the masks of TensorFlow's
// stateless dropout on CPU, which keras.random.dropout uses on the TF backend:
//
//   u_j  = uniform [0, 1) number j of the Philox4x32-10 stream of `seed`
//   keep = u_j >= rate                       (compared in the dtype of x)
//   y    = keep ? x * scale : 0,  scale = T(1 / (1 - rate))   (1 - rate in double)
//   dx   = keep ? dy * scale : 0
//
// How TF draws u_j (checked against TF 2.21; see tests/test_dropout.py):
// - StatelessRandomGetKeyCounter maps a seed pair (s0, s1), each widened to
//   uint64, to one Philox block: key = (0x3ec8f720, 0x02461e29), counter =
//   (lo s0, hi s0, lo s1, hi s1), out = philox(counter, key); the stream's key
//   is (out0, out1) and its counter (0, 0, out2, out3).
// - Block b of the stream is philox(counter + b, key) (128-bit add). float32
//   takes the 4 words of a block in order; float64 takes 2 words per number.
// - float32: u = bitcast(0x3F800000 | (w & 0x7FFFFF)) - 1 = (w & 0x7FFFFF) * 2^-23.
//   float64: u = ((w0 & 0xFFFFF) << 32 | w1) * 2^-52.
// So keep is an integer compare of the mantissa bits with ceil(rate * 2^23)
// (rate rounded to float32 first) or ceil(rate * 2^52).
//
// Packed masks hold 1 bit per element: element j is bit (j % 8) of byte j / 8
// (numpy.packbits(..., bitorder="little")).
#pragma once
#include <cmath>
#include <cstring>
#include <type_traits>

#include "philox.h"

namespace fusedopt::dropout {

// A Philox stream: key and first counter.
struct Stream {
  uint32_t key[2];
  uint32_t counter[4];
};

// TF's StatelessRandomGetKeyCounter for Philox (GenerateKey in TF's
// stateless_random_ops.cc). Seeds are int32/int64 values widened to uint64.
inline Stream stream_from_seed(uint64_t s0, uint64_t s1) {
  const uint32_t counter[4] = {uint32_t(s0), uint32_t(s0 >> 32), uint32_t(s1), uint32_t(s1 >> 32)};
  const uint32_t scramble_key[2] = {0x3ec8f720u, 0x02461e29u};
  uint32_t mix[4];
  philox::block(counter, scramble_key, mix);
  return Stream{{mix[0], mix[1]}, {0u, 0u, mix[2], mix[3]}};
}

// Bit i of x moves to bit 2i (16 -> 32 bits: 4i); the rest are 0.
FUSEDOPT_HOST_DEVICE uint64_t spread_bits2(uint64_t x) {
  x = (x | (x << 16)) & 0x0000FFFF0000FFFFull;
  x = (x | (x << 8)) & 0x00FF00FF00FF00FFull;
  x = (x | (x << 4)) & 0x0F0F0F0F0F0F0F0Full;
  x = (x | (x << 2)) & 0x3333333333333333ull;
  return (x | (x << 1)) & 0x5555555555555555ull;
}
FUSEDOPT_HOST_DEVICE uint64_t spread_bits4(uint64_t x) {
  x = (x | (x << 24)) & 0x000000FF000000FFull;
  x = (x | (x << 12)) & 0x000F000F000F000Full;
  x = (x | (x << 6)) & 0x0303030303030303ull;
  return (x | (x << 3)) & 0x1111111111111111ull;
}

// TF's uniform [0, 1) numbers of type T, as thresholds on their mantissa bits.
// `keep` decides number i of one block's 4 words; `interleave` turns masks[i]
// (bit b: number i of block b kept) into keep bits in number order.
template <class T> struct Uniform;

template <> struct Uniform<float> {
  static constexpr int kPerBlock = 4;  // numbers per Philox block: one per word
  static constexpr uint32_t kMantissa = 0x7FFFFFu;
  using Threshold = uint32_t;
  // u >= float(rate)  <=>  (w & kMantissa) >= ceil(float(rate) * 2^23), exactly.
  static Threshold threshold(double rate) {
    return Threshold(std::ceil(double(float(rate)) * 8388608.0));
  }
  FUSEDOPT_HOST_DEVICE static bool keep(const uint32_t words[4], int i, Threshold t) {
    return (words[i] & kMantissa) >= t;
  }
  FUSEDOPT_HOST_DEVICE static uint64_t interleave(const uint32_t masks[4]) {
    return spread_bits4(masks[0]) | spread_bits4(masks[1]) << 1 | spread_bits4(masks[2]) << 2 |
           spread_bits4(masks[3]) << 3;
  }
};

template <> struct Uniform<double> {
  static constexpr int kPerBlock = 2;  // numbers per block: words (2i, 2i + 1)
  static constexpr uint32_t kHighMantissa = 0xFFFFFu;
  using Threshold = uint64_t;
  // u = ((w0 & kHighMantissa) << 32 | w1) * 2^-52 >= rate  <=>  that >= ceil(rate * 2^52).
  static Threshold threshold(double rate) { return Threshold(std::ceil(rate * 4503599627370496.0)); }
  FUSEDOPT_HOST_DEVICE static bool keep(const uint32_t words[4], int i, Threshold t) {
    return (uint64_t(words[2 * i] & kHighMantissa) << 32 | words[2 * i + 1]) >= t;
  }
  FUSEDOPT_HOST_DEVICE static uint64_t interleave(const uint32_t masks[2]) {
    return spread_bits2(masks[0]) | spread_bits2(masks[1]) << 1;
  }
};

template <class T> T scale(double rate) { return T(1.0 / (1.0 - rate)); }

// Counters of the kBlocks blocks from block `first` of the stream: c[w][b] is
// word w of (stream counter + first + b), a 128-bit add.
template <int kBlocks>
FUSEDOPT_HOST_DEVICE void block_counters(const Stream& s, uint64_t first, uint32_t (&c)[4][kBlocks]) {
  uint32_t start[4];
  philox::add(s.counter, first, start);
  const uint64_t lo = uint64_t(start[1]) << 32 | start[0];
  const uint64_t hi = uint64_t(start[3]) << 32 | start[2];
  for (int b = 0; b < kBlocks; ++b) {
    const uint64_t lo_b = lo + uint64_t(b);
    const uint64_t hi_b = hi + (lo_b < lo ? 1 : 0);
    c[0][b] = uint32_t(lo_b);
    c[1][b] = uint32_t(lo_b >> 32);
    c[2][b] = uint32_t(hi_b);
    c[3][b] = uint32_t(hi_b >> 32);
  }
}

// Keep bits of the 64 numbers [64 * group, 64 * group + 64) of the stream;
// bit e is number 64 * group + e.
template <class T>
FUSEDOPT_HOST_DEVICE uint64_t keep_bits64(const Stream& s, uint64_t group,
                                          typename Uniform<T>::Threshold t) {
  using U = Uniform<T>;
  constexpr int kBlocks = 64 / U::kPerBlock;
  uint32_t c[4][kBlocks];
  block_counters(s, group * kBlocks, c);
  uint32_t masks[U::kPerBlock] = {};
  for (int b = 0; b < kBlocks; ++b) {
    uint32_t words[4] = {c[0][b], c[1][b], c[2][b], c[3][b]};
    philox::rounds(words[0], words[1], words[2], words[3], s.key[0], s.key[1]);
    for (int i = 0; i < U::kPerBlock; ++i) masks[i] |= uint32_t(U::keep(words, i, t)) << b;
  }
  return U::interleave(masks);
}

FUSEDOPT_HOST_DEVICE bool mask_bit(const uint8_t* mask, int64_t j) {
  return (mask[j >> 3] >> (j & 7)) & 1;
}

// keep ? x * scale : +0, as TF's where(keep, x * scale, 0). Written as a bit
// mask on the product (the same value, NaN and inf included) so that loops
// vectorize without branches.
template <class T>
FUSEDOPT_HOST_DEVICE T apply(T x, bool keep, T scale) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  T y = x * scale;
  Bits b;
  std::memcpy(&b, &y, sizeof b);
  b &= Bits(0) - Bits(keep);
  std::memcpy(&y, &b, sizeof b);
  return y;
}

}  // namespace fusedopt::dropout
