// The per-rule launchers the CUDA engine dispatches to, one definition each
// in the elementwise_*.cu, lamb.cu and adafactor.cu translation units (split
// so that a parallel build compiles them side by side).
#pragma once

#include <cuda_runtime.h>

#include <vector>

#include "cuda_engine.h"

namespace fusedopt::cuda {

// Every elementwise rule (explicitly instantiated in elementwise_*.cu).
template <class Rule>
void run_elementwise(DType dtype, const std::vector<Tensor>& tensors, const Update& u,
                     cudaStream_t stream);
void run_lamb(DType dtype, const std::vector<Tensor>& tensors, const Update& u,
              cudaStream_t stream);
void run_adafactor(DType dtype, const std::vector<Tensor>& tensors, const Update& u,
                   cudaStream_t stream);

}  // namespace fusedopt::cuda
