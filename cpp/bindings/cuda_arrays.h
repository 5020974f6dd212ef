// CUDA arrays as the CUDA adapter sees them: DeviceArray, a view without a
// copy of a PyTorch CUDA tensor (read through its attributes), a DLPack
// export on kDLCUDA, or an object with __cuda_array_interface__. CUDA builds
// only (cuda.cmake adds cuda_arrays.cpp to _core).
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../cuda/cuda_engine.h"

namespace fusedopt::bindings {

namespace py = pybind11;

struct DLManagedTensor;  // DLPack's, in cuda_arrays.cpp

constexpr int kUint8 = 100;  // a mask's dtype, beside cuda::DType's values

// One CUDA array, viewed without copying.
struct DeviceArray {
  std::string name;
  void* data = nullptr;
  std::vector<int64_t> shape;
  int64_t size = 1;
  int dtype = -1;  // cuda::DType, or kUint8
  std::string dtype_name;
  int itemsize = 0;
  bool readonly = false;
  bool contiguous = true;
  int device = -1;
  std::shared_ptr<DLManagedTensor> owner;  // the DLPack export, released after the call
};

// Whether `h` says it is a CUDA array (DLPack on kDLCUDA or kDLCUDAManaged,
// or __cuda_array_interface__); nothing is exported.
bool is_device_array(py::handle h);

// The array `h` (named `name` in errors): a CUDA array on one device, its
// pointer checked to be device memory of that device. A DLPack export is
// made on `stream` (0: the legacy default stream). An empty array's device
// may be -1.
DeviceArray device_array(py::handle h, const std::string& name, int64_t stream);

}  // namespace fusedopt::bindings
