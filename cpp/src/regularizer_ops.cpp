// Regularizer entry points: take the engine lock and run the active ISA's kernels.
#include "regularizer_ops.h"

namespace fusedopt {

namespace isa_baseline { const RegularizerKernels& regularizer_kernels(); }
#ifdef FUSEDOPT_HAVE_AVX2
namespace isa_avx2 { const RegularizerKernels& regularizer_kernels(); }
#endif
#ifdef FUSEDOPT_HAVE_AVX512
namespace isa_avx512 { const RegularizerKernels& regularizer_kernels(); }
#endif

namespace {

const RegularizerKernels& kernels_for(const std::string& isa) {
#ifdef FUSEDOPT_HAVE_AVX512
  if (isa == "avx512") return isa_avx512::regularizer_kernels();
#endif
#ifdef FUSEDOPT_HAVE_AVX2
  if (isa == "avx2") return isa_avx2::regularizer_kernels();
#endif
  return isa_baseline::regularizer_kernels();
}

}  // namespace

void regularizer_sums(DType dtype, const std::vector<RegTensor>& tensors,
                      std::vector<double>* sum_abs, std::vector<double>* sum_squares) {
  sum_abs->assign(tensors.size(), 0.0);
  sum_squares->assign(tensors.size(), 0.0);
  run_exclusive([&](const std::string& isa) {
    kernels_for(isa).sums(dtype, tensors, sum_abs->data(), sum_squares->data());
  });
}

void l1l2_gradient(DType dtype, const std::vector<RegTensor>& tensors, double l1, double l2) {
  run_exclusive([&](const std::string& isa) { kernels_for(isa).l1l2_gradient(dtype, tensors, l1, l2); });
}

void l2sp_gradient(DType dtype, const std::vector<RegTensor>& tensors, double alpha, double beta) {
  run_exclusive([&](const std::string& isa) { kernels_for(isa).l2sp_gradient(dtype, tensors, alpha, beta); });
}

void proximal_step(DType dtype, const std::vector<RegTensor>& tensors, double lr, double l1,
                   double l2) {
  run_exclusive([&](const std::string& isa) { kernels_for(isa).proximal_step(dtype, tensors, lr, l1, l2); });
}

}  // namespace fusedopt
