// Checks of CUDA arrays (cuda_checks.h).
#include "cuda_checks.h"

#include <algorithm>
#include <cstdint>

namespace fusedopt::bindings {

namespace {
std::string device_text(int device) { return "cuda:" + std::to_string(device); }
}  // namespace

void require_float(const DeviceArray& a, const std::vector<int>& allowed, const std::string& what) {
  if (std::find(allowed.begin(), allowed.end(), a.dtype) == allowed.end())
    throw py::type_error(a.name + " has dtype " + a.dtype_name + "; " + what);
}

void require_like(const DeviceArray& a, const DeviceArray& ref, bool same_shape) {
  if (a.dtype != ref.dtype)
    throw py::type_error(a.name + " has dtype " + a.dtype_name + " but " + ref.name +
                         " has dtype " + ref.dtype_name);
  if (same_shape && a.shape != ref.shape)
    throw py::value_error(a.name + " has shape " + shape_text(a.shape) + " but " + ref.name +
                          " has shape " + shape_text(ref.shape));
}

void require_layout(const DeviceArray& a, bool writable) {
  if (!a.contiguous) throw py::value_error(a.name + " must be C-contiguous");
  if (a.size > 0 && a.itemsize > 0 && reinterpret_cast<uintptr_t>(a.data) % uintptr_t(a.itemsize) != 0)
    throw py::value_error(a.name + " is not aligned to its " + std::to_string(a.itemsize) + "-byte element size");
  if (writable && a.readonly) throw py::value_error(a.name + " is read-only");
}

int common_device(const std::vector<DeviceArray>& arrays) {
  const DeviceArray* first = nullptr;
  for (const DeviceArray& a : arrays) {
    if (a.size == 0) continue;
    if (first == nullptr) first = &a;
    else if (a.device != first->device)
      throw py::value_error(a.name + " is on " + device_text(a.device) + " but " + first->name +
                            " is on " + device_text(first->device) + "; all arrays of a call must "
                            "be on one device");
  }
  return first ? first->device : -1;
}

Span span(const DeviceArray& a) { return byte_span(a.data, a.size, a.itemsize, a.name); }

RegLists reg_lists(const std::vector<std::tuple<std::string, py::handle, Role>>& lists,
                   int64_t stream) {
  RegLists r;
  size_t n = 0;
  std::string ref_name;
  for (const auto& [name, h, role] : lists)
    if (role == kW || role == kWInPlace) {
      n = as_list(h, name).size();
      ref_name = name;
    }
  r.arrays.reserve(n * lists.size());
  r.tensors.resize(n);
  std::vector<size_t> w_index(n);
  for (const auto& [name, h, role] : lists) {
    if (role == kOptional && h.is_none()) continue;
    const py::sequence list = as_list(h, name);
    if (list.size() != n)
      throw py::value_error(name + " has " + std::to_string(list.size()) + " arrays but " +
                            ref_name + " has " + std::to_string(n));
    for (size_t i = 0; i < n; ++i) {
      if (role == kOptional && list[i].is_none()) continue;
      r.arrays.push_back(device_array(list[i], label(name, i), stream));
      const DeviceArray& a = r.arrays.back();
      RegTensor& t = r.tensors[i];
      if (role == kW || role == kWInPlace) {
        w_index[i] = r.arrays.size() - 1;
        if (i == 0) require_float(a, kFloatDtypes, "supported dtypes are float32 and float64");
        else require_like(a, r.arrays[w_index[0]], false);
        t.w = a.data;
        t.size = a.size;
        if (role == kWInPlace) t.out = a.data;
      } else {
        require_like(a, r.arrays[w_index[i]], true);
        if (role == kOut) t.out = a.data;
        else t.other = a.data;
      }
      const bool writable = role == kOut || role == kWInPlace;
      require_layout(a, writable);
      if (a.size > 0) (writable ? r.outputs : r.inputs).push_back(span(a));
    }
  }
  r.device = common_device(r.arrays);
  require_no_aliasing(r.outputs, r.inputs);
  if (n > 0) r.dtype = cuda::DType(r.arrays[w_index[0]].dtype);
  return r;
}

}  // namespace fusedopt::bindings
