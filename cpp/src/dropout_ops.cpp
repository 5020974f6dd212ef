// Dropout entry points: the noise-shape broadcast, and the engine lock and
// ISA choice around the kernels.
#include "dropout_ops.h"

namespace fusedopt {

namespace isa_baseline { const DropoutKernels& dropout_kernels(); }
#ifdef FUSEDOPT_HAVE_AVX2
namespace isa_avx2 { const DropoutKernels& dropout_kernels(); }
#endif
#ifdef FUSEDOPT_HAVE_AVX512
namespace isa_avx512 { const DropoutKernels& dropout_kernels(); }
#endif

namespace {

const DropoutKernels& kernels_for(const std::string& isa) {
#ifdef FUSEDOPT_HAVE_AVX512
  if (isa == "avx512") return isa_avx512::dropout_kernels();
#endif
#ifdef FUSEDOPT_HAVE_AVX2
  if (isa == "avx2") return isa_avx2::dropout_kernels();
#endif
  return isa_baseline::dropout_kernels();
}

}  // namespace

NoiseBroadcast make_noise_broadcast(const std::vector<int64_t>& x_shape,
                                    const std::vector<int64_t>& noise_shape) {
  NoiseBroadcast nb;
  nb.noise_size = 1;
  for (int64_t d : noise_shape) nb.noise_size *= d;
  // Noise strides in C order; dims of size 1 in x carry nothing and are dropped.
  std::vector<int64_t> stride(noise_shape.size());
  int64_t s = 1;
  for (size_t d = noise_shape.size(); d-- > 0;) {
    stride[d] = s;
    s *= noise_shape[d];
  }
  for (size_t d = 0; d < x_shape.size(); ++d) {
    if (x_shape[d] == 1) continue;
    const bool broadcast = noise_shape[d] == 1;
    const int64_t ns = broadcast ? 0 : stride[d];
    if (broadcast) nb.identity = false;
    // Merge with the previous dim when both are broadcast or both are not
    // (then the previous stride is this one times this dim).
    if (!nb.dims.empty() && (nb.noise_strides.back() == 0) == broadcast) {
      nb.dims.back() *= x_shape[d];
      nb.noise_strides.back() = ns;
    } else {
      nb.dims.push_back(x_shape[d]);
      nb.noise_strides.push_back(ns);
    }
  }
  if (nb.dims.empty()) {  // x has one element (or none)
    nb.dims.push_back(1);
    nb.noise_strides.push_back(1);
  }
  return nb;
}

void run_dropout(const DropoutCall& call) {
  run_exclusive([&](const std::string& isa) { kernels_for(isa).run(call); });
}

}  // namespace fusedopt
