// Instantiations of the elementwise kernel: Adam AdamAmsgrad Adamax Nadam.
#include "elementwise.cuh"
#include "launchers.h"

namespace fusedopt::cuda {

#define FUSEDOPT_INSTANTIATE(R)                                                         \
  template void run_elementwise<rules::R>(DType, const std::vector<Tensor>&, const Update&, \
                                          cudaStream_t);
FUSEDOPT_INSTANTIATE(Adam)
FUSEDOPT_INSTANTIATE(AdamAmsgrad)
FUSEDOPT_INSTANTIATE(Adamax)
FUSEDOPT_INSTANTIATE(Nadam)
#undef FUSEDOPT_INSTANTIATE

}  // namespace fusedopt::cuda
