// Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror & Shaw,
// "Parallel random numbers: as easy as 1, 2, 3", SC'11. A 128-bit counter
// and a 64-bit key give four 32-bit outputs through 10 rounds of
//   (c0, c1, c2, c3) <- (hi(M1*c2) ^ c1 ^ k0, lo(M1*c2), hi(M0*c0) ^ c3 ^ k1, lo(M0*c0))
//   (k0, k1) <- (k0 + W0, k1 + W1)
// Output i of a stream depends only on (key, counter + i), so any element can
// be generated on its own: in parallel, in any order, or again in backward.
// Known answers (Random123's kat_vectors), checked by tests/test_dropout.py:
//   counter 0, key 0                   -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8
//   counter all ones, key all ones     -> 408f276d 41c83b0e a20bc7c6 6d5451fd
#pragma once
#include "common.h"

namespace fusedopt::philox {

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // key increments (Weyl sequence)

// hi:lo = a * m, the round's 32 x 32 -> 64-bit product.
FUSEDOPT_HOST_DEVICE void mulhilo(uint32_t a, uint32_t m, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = uint64_t(a) * m;
  hi = uint32_t(p >> 32);
  lo = uint32_t(p);
}

// The 10 rounds, in place on one counter block (c0..c3 become the outputs).
// V is uint32_t, or a SIMD vector of uint32 lanes (one block per lane) with
// ^, construction from uint32_t and its own mulhilo.
template <class V>
FUSEDOPT_HOST_DEVICE void rounds(V& c0, V& c1, V& c2, V& c3, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    V hi0, lo0, hi1, lo1;
    mulhilo(c0, kM0, hi0, lo0);
    mulhilo(c2, kM1, hi1, lo1);
    const V n0 = hi1 ^ c1 ^ V(k0);
    const V n2 = hi0 ^ c3 ^ V(k1);
    c1 = lo1;
    c3 = lo0;
    c0 = n0;
    c2 = n2;
    k0 += kW0;
    k1 += kW1;
  }
}

// counter + n, as a 128-bit little-endian integer (word 0 lowest), which is
// how TensorFlow's PhiloxRandom::Skip advances a stream by n blocks.
FUSEDOPT_HOST_DEVICE void add(const uint32_t counter[4], uint64_t n, uint32_t out[4]) {
  const uint64_t lo = (uint64_t(counter[1]) << 32 | counter[0]) + n;
  const uint64_t carry = lo < n ? 1 : 0;
  const uint64_t hi = (uint64_t(counter[3]) << 32 | counter[2]) + carry;
  out[0] = uint32_t(lo);
  out[1] = uint32_t(lo >> 32);
  out[2] = uint32_t(hi);
  out[3] = uint32_t(hi >> 32);
}

// One block: the four outputs for `counter` under `key`.
FUSEDOPT_HOST_DEVICE void block(const uint32_t counter[4], const uint32_t key[2],
                                uint32_t out[4]) {
  out[0] = counter[0];
  out[1] = counter[1];
  out[2] = counter[2];
  out[3] = counter[3];
  rounds(out[0], out[1], out[2], out[3], key[0], key[1]);
}

}  // namespace fusedopt::philox
