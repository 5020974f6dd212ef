// Instantiations of the elementwise kernel: Ftrl Lion ScheduleFreeAdamW MuonMomentum.
#include "elementwise.cuh"
#include "launchers.h"

namespace fusedopt::cuda {

#define FUSEDOPT_INSTANTIATE(R)                                                         \
  template void run_elementwise<rules::R>(DType, const std::vector<Tensor>&, const Update&, \
                                          cudaStream_t);
FUSEDOPT_INSTANTIATE(Ftrl)
FUSEDOPT_INSTANTIATE(Lion)
FUSEDOPT_INSTANTIATE(ScheduleFreeAdamW)
FUSEDOPT_INSTANTIATE(MuonMomentum)
#undef FUSEDOPT_INSTANTIATE

}  // namespace fusedopt::cuda
