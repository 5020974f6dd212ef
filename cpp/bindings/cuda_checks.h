// Checks of CUDA arrays (cuda_arrays.h) for the CUDA adapter, in the words of
// the CPU adapter's checks (checks.h, which the CUDA entry points call for
// everything that is not an array): dtype, shape, layout, writability, plus
// every array of a call on one device. CUDA builds only (cuda.cmake adds
// cuda_checks.cpp to _core).
#pragma once
#include <pybind11/pybind11.h>

#include <string>
#include <tuple>
#include <vector>

#include "../src/regularizer_ops.h"
#include "checks.h"
#include "cuda_arrays.h"

namespace fusedopt::bindings {

// apply's storage dtypes, and dropout's and the regularizers'.
inline const std::vector<int> kUpdateDtypes = {int(cuda::DType::kFloat32), int(cuda::DType::kFloat64),
                                               int(cuda::DType::kFloat16), int(cuda::DType::kBFloat16)};
inline const std::vector<int> kFloatDtypes = {int(cuda::DType::kFloat32), int(cuda::DType::kFloat64)};

// TypeError "<a> has dtype <d>; <what>" unless a's dtype is in `allowed`.
void require_float(const DeviceArray& a, const std::vector<int>& allowed, const std::string& what);
// a has ref's dtype (TypeError) and, with same_shape, its shape (ValueError).
void require_like(const DeviceArray& a, const DeviceArray& ref, bool same_shape);
// C-contiguous, aligned to its element size, and writable where `writable`.
void require_layout(const DeviceArray& a, bool writable);
// Every nonempty array on one device; returns it (-1 when all are empty).
int common_device(const std::vector<DeviceArray>& arrays);
// a's bytes, for require_no_aliasing.
Span span(const DeviceArray& a);

// The regularizer entry points' lists of CUDA arrays, of one float dtype.
struct RegLists {
  std::vector<DeviceArray> arrays;
  std::vector<RegTensor> tensors;
  std::vector<Span> outputs, inputs;
  int device = -1;
  cuda::DType dtype = cuda::DType::kFloat32;
};

// kW: the weights (read); kWInPlace: the weights, updated in place; kOptional:
// read, None as a whole or per element; kInput: read; kOut: written.
enum Role { kW, kWInPlace, kOptional, kInput, kOut };

// Lists given as (name, list, role): the kW / kWInPlace list sets the count,
// dtype and shapes of the others. Every check, no aliasing included.
RegLists reg_lists(const std::vector<std::tuple<std::string, py::handle, Role>>& lists,
                   int64_t stream);

}  // namespace fusedopt::bindings
