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

// TF's uniform [0, 1) numbers of type T, as thresholds on their mantissa bits.
template <class T> struct Uniform;

template <> struct Uniform<float> {
  static constexpr int kPerBlock = 4;  // numbers per Philox block
  using Threshold = uint32_t;
  // u >= float(rate)  <=>  mantissa >= ceil(float(rate) * 2^23), exactly.
  static Threshold threshold(double rate) {
    return Threshold(std::ceil(double(float(rate)) * 8388608.0));
  }
  FUSEDOPT_HOST_DEVICE static bool keep(const uint32_t* block_words, int i, Threshold t) {
    return (block_words[i] & 0x7FFFFFu) >= t;
  }
};

template <> struct Uniform<double> {
  static constexpr int kPerBlock = 2;
  using Threshold = uint64_t;
  static Threshold threshold(double rate) { return Threshold(std::ceil(rate * 4503599627370496.0)); }
  FUSEDOPT_HOST_DEVICE static bool keep(const uint32_t* block_words, int i, Threshold t) {
    const uint64_t mantissa = uint64_t(block_words[2 * i] & 0xFFFFFu) << 32 | block_words[2 * i + 1];
    return mantissa >= t;
  }
};

template <class T> T scale(double rate) { return T(1.0 / (1.0 - rate)); }

// Keep bits of the 64 elements [64 * group, 64 * group + 64) of the stream;
// bit e is element 64 * group + e.
template <class T>
FUSEDOPT_HOST_DEVICE uint64_t keep_bits64(const Stream& s, uint64_t group,
                                          typename Uniform<T>::Threshold t) {
  constexpr int kPerBlock = Uniform<T>::kPerBlock;
  constexpr int kBlocks = 64 / kPerBlock;
  uint32_t first[4];
  philox::add(s.counter, group * kBlocks, first);
  uint32_t words[4 * kBlocks];
  for (int b = 0; b < kBlocks; ++b) {
    uint32_t counter[4];
    philox::add(first, uint64_t(b), counter);
    philox::block(counter, s.key, words + 4 * b);
  }
  uint64_t bits = 0;
  for (int e = 0; e < 64; ++e)
    bits |= uint64_t(Uniform<T>::keep(words + 4 * (e / kPerBlock), e % kPerBlock, t)) << e;
  return bits;
}

FUSEDOPT_HOST_DEVICE bool mask_bit(const uint8_t* mask, int64_t j) {
  return (mask[j >> 3] >> (j & 7)) & 1;
}

template <class T>
FUSEDOPT_HOST_DEVICE T apply(T x, bool keep, T scale) {
  return keep ? x * scale : T(0);
}

}  // namespace fusedopt::dropout
