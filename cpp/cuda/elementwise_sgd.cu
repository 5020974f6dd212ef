// Instantiations of the elementwise kernel: Sgd SgdMomentum SgdNesterov SgdDampened.
#include "elementwise.cuh"
#include "launchers.h"

namespace fusedopt::cuda {

#define FUSEDOPT_INSTANTIATE(R)                                                         \
  template void run_elementwise<rules::R>(DType, const std::vector<Tensor>&, const Update&, \
                                          cudaStream_t);
FUSEDOPT_INSTANTIATE(Sgd)
FUSEDOPT_INSTANTIATE(SgdMomentum)
FUSEDOPT_INSTANTIATE(SgdNesterov)
FUSEDOPT_INSTANTIATE(SgdDampened)
#undef FUSEDOPT_INSTANTIATE

}  // namespace fusedopt::cuda
