// Instantiations of the elementwise kernel: Rmsprop RmspropMomentum RmspropCentered RmspropCenteredMomentum Adagrad Adadelta.
#include "elementwise.cuh"
#include "launchers.h"

namespace fusedopt::cuda {

#define FUSEDOPT_INSTANTIATE(R)                                                         \
  template void run_elementwise<rules::R>(DType, const std::vector<Tensor>&, const Update&, \
                                          cudaStream_t);
FUSEDOPT_INSTANTIATE(Rmsprop)
FUSEDOPT_INSTANTIATE(RmspropMomentum)
FUSEDOPT_INSTANTIATE(RmspropCentered)
FUSEDOPT_INSTANTIATE(RmspropCenteredMomentum)
FUSEDOPT_INSTANTIATE(Adagrad)
FUSEDOPT_INSTANTIATE(Adadelta)
#undef FUSEDOPT_INSTANTIATE

}  // namespace fusedopt::cuda
