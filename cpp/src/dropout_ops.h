// Dropout kernels: y = keep ? x * scale : 0 with the keep bits generated from
// a Philox stream (forward, or backward without a stored mask) or read from a
// packed mask (backward). Multi-threaded over the engine's fixed chunks;
// element j depends only on (stream, j), so results are the same for any
// thread count. The math is fusedopt/dropout.h; inputs must be validated.
#pragma once

#include <vector>

#include "engine.h"
#include "fusedopt/dropout.h"

namespace fusedopt {

// How the noise shape broadcasts over x: x's shape with consecutive dims of
// the same kind merged, and each merged dim's stride in the noise tensor (0
// where the noise is broadcast).
struct NoiseBroadcast {
  std::vector<int64_t> dims, noise_strides;
  int64_t noise_size = 0;
  bool identity = true;  // the noise shape is x's shape
};
// `noise_shape` must already be checked to broadcast to `x_shape` (same
// rank, each entry 1 or x's).
NoiseBroadcast make_noise_broadcast(const std::vector<int64_t>& x_shape,
                                    const std::vector<int64_t>& noise_shape);

struct DropoutCall {
  DType dtype = DType::kFloat32;
  const void* in = nullptr;  // x, or dy in backward
  void* out = nullptr;       // y, or dx
  int64_t size = 0;
  double rate = 0.0;
  NoiseBroadcast noise;
  const dropout::Stream* stream = nullptr;  // generate the keep bits from this stream,
  const uint8_t* mask_in = nullptr;         // or read them from this packed mask;
  uint8_t* mask_out = nullptr;              // store them here (ceil(noise_size / 8) bytes)
};
void run_dropout(const DropoutCall& call);

// One ISA's implementation (dropout_kernels.cpp, compiled per ISA).
struct DropoutKernels {
  void (*run)(const DropoutCall&);
};

}  // namespace fusedopt
