// CUDA arrays from Python objects (cuda_arrays.h): DLPack's legacy ABI, the
// __cuda_array_interface__ reader, the PyTorch attribute reader, and the
// layout facts (dtype, C-contiguity, device) each records.
#include "cuda_arrays.h"

#include <pybind11/stl.h>

#include <algorithm>
#include <optional>
#include <utility>

namespace fusedopt::bindings {

// DLPack's legacy ABI (dlpack.h, v0.x): what a "dltensor" capsule holds.
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};

namespace {

constexpr int kDLCUDA = 2, kDLCUDAManaged = 13;

// "TypeName: message" of a Python exception (without pybind11's traceback).
std::string error_text(py::error_already_set& e) {
  return std::string(py::str(e.type().attr("__name__"))) + ": " + std::string(py::str(e.value()));
}

bool c_contiguous(const std::vector<int64_t>& shape, const int64_t* strides, int64_t unit) {
  if (strides == nullptr) return true;
  int64_t expected = unit;
  for (size_t d = shape.size(); d-- > 0;) {
    if (shape[d] != 1 && strides[d] != expected) return false;
    expected *= shape[d];
  }
  return true;
}

void set_dtype(DeviceArray& a, int dtype, const char* name, int itemsize) {
  a.dtype = dtype;
  a.dtype_name = name;
  a.itemsize = itemsize;
}

// (device_type, device_id) from __dlpack_device__, or nullopt.
std::optional<std::pair<int, int>> dlpack_device(py::handle h) {
  if (!py::hasattr(h, "__dlpack_device__") || !py::hasattr(h, "__dlpack__")) return std::nullopt;
  try {
    const auto dev = h.attr("__dlpack_device__")().cast<std::pair<int, int>>();
    return dev;
  } catch (const py::error_already_set&) {
    return std::nullopt;
  }
}

DeviceArray from_dlpack(py::handle h, const std::string& name, int64_t stream) {
  DeviceArray a;
  a.name = name;
  py::object capsule;
  try {
    // DLPack's stream argument: 1 is the legacy default stream, -1 asks for
    // no synchronization.
    capsule = h.attr("__dlpack__")(py::arg("stream") = stream == 0 ? 1 : stream);
  } catch (py::error_already_set& e) {
    throw py::type_error(name + " could not be exported through DLPack: " + error_text(e));
  }
  PyObject* cap = capsule.ptr();
  if (!PyCapsule_IsValid(cap, "dltensor"))
    throw py::type_error(name + ": __dlpack__ did not return an unused DLPack capsule");
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
  PyCapsule_SetName(cap, "used_dltensor");  // this consumer owns it now
  a.owner.reset(managed, [](DLManagedTensor* m) {
    if (m && m->deleter) m->deleter(m);
  });
  const DLTensor& t = managed->dl_tensor;
  if (t.device.device_type != kDLCUDA && t.device.device_type != kDLCUDAManaged)
    throw py::type_error(name + " is not a CUDA array (DLPack device type " +
                         std::to_string(t.device.device_type) + ")");
  a.device = t.device.device_id;
  a.data = static_cast<char*>(t.data) + t.byte_offset;
  a.shape.assign(t.shape, t.shape + t.ndim);
  for (int64_t d : a.shape) a.size *= d;
  const DLDataType dt = t.dtype;
  if (dt.lanes == 1 && dt.code == 2 && dt.bits == 32) set_dtype(a, int(cuda::DType::kFloat32), "float32", 4);
  else if (dt.lanes == 1 && dt.code == 2 && dt.bits == 64) set_dtype(a, int(cuda::DType::kFloat64), "float64", 8);
  else if (dt.lanes == 1 && dt.code == 2 && dt.bits == 16) set_dtype(a, int(cuda::DType::kFloat16), "float16", 2);
  else if (dt.lanes == 1 && dt.code == 4 && dt.bits == 16) set_dtype(a, int(cuda::DType::kBFloat16), "bfloat16", 2);
  else if (dt.lanes == 1 && dt.code == 1 && dt.bits == 8) set_dtype(a, kUint8, "uint8", 1);
  else
    a.dtype_name = "DLPack (code " + std::to_string(dt.code) + ", bits " + std::to_string(dt.bits) +
                   ", lanes " + std::to_string(dt.lanes) + ")";
  a.contiguous = c_contiguous(a.shape, t.strides, 1);
  return a;
}

DeviceArray from_cuda_array_interface(py::handle h, const std::string& name) {
  DeviceArray a;
  a.name = name;
  py::dict cai;
  try {
    cai = h.attr("__cuda_array_interface__").cast<py::dict>();
  } catch (py::error_already_set& e) {
    throw py::type_error(name + " could not be read through __cuda_array_interface__: " +
                         error_text(e));
  }
  const auto data = cai["data"].cast<py::tuple>();
  a.data = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  a.readonly = data[1].cast<bool>();
  for (auto d : cai["shape"].cast<py::tuple>()) a.shape.push_back(d.cast<int64_t>());
  for (int64_t d : a.shape) a.size *= d;
  const auto typestr = cai["typestr"].cast<std::string>();
  const std::string kind = typestr.size() > 1 ? typestr.substr(1) : typestr;
  const bool native = typestr.empty() || typestr[0] != '>';
  if (native && kind == "f4") set_dtype(a, int(cuda::DType::kFloat32), "float32", 4);
  else if (native && kind == "f8") set_dtype(a, int(cuda::DType::kFloat64), "float64", 8);
  else if (native && kind == "f2") set_dtype(a, int(cuda::DType::kFloat16), "float16", 2);
  else if (kind == "u1") set_dtype(a, kUint8, "uint8", 1);
  else a.dtype_name = "typestr '" + typestr + "'";
  std::vector<int64_t> strides;
  if (cai.contains("strides") && !cai["strides"].is_none())
    for (auto s : cai["strides"].cast<py::tuple>()) strides.push_back(s.cast<int64_t>());
  a.contiguous = strides.empty() || c_contiguous(a.shape, strides.data(), std::max(a.itemsize, 1));
  a.device = -1;  // from the pointer, below
  return a;
}

// PyTorch tensors are read through their (C-implemented) attributes: the
// DLPack export costs tens of microseconds per tensor in PyTorch, which a
// step over a thousand small tensors cannot afford. Looked up only when
// torch is already imported; the objects live as long as the process.
struct TorchTypes {
  PyObject* tensor = nullptr;
  std::vector<std::pair<PyObject*, int>> dtypes;  // torch.float32 -> cuda::DType, ...
};
const TorchTypes* torch_types() {
  static TorchTypes* types = nullptr;
  if (types) return types;
  py::dict modules = py::module_::import("sys").attr("modules");
  if (!modules.contains("torch")) return nullptr;
  py::object torch = modules["torch"];
  auto* t = new TorchTypes;
  t->tensor = py::object(torch.attr("Tensor")).release().ptr();
  const std::pair<const char*, int> names[] = {
      {"float32", int(cuda::DType::kFloat32)}, {"float64", int(cuda::DType::kFloat64)},
      {"float16", int(cuda::DType::kFloat16)}, {"bfloat16", int(cuda::DType::kBFloat16)},
      {"uint8", kUint8}};
  for (const auto& [n, code] : names) t->dtypes.emplace_back(py::object(torch.attr(n)).release().ptr(), code);
  types = t;
  return types;
}

bool is_torch_tensor(py::handle h) {
  const TorchTypes* t = torch_types();
  return t && PyObject_IsInstance(h.ptr(), t->tensor) == 1;
}

DeviceArray from_torch(py::handle h, const std::string& name) {
  DeviceArray a;
  a.name = name;
  if (!h.attr("is_cuda").cast<bool>())
    throw py::type_error(name + " is a CPU tensor, not a CUDA array");
  a.data = reinterpret_cast<void*>(h.attr("data_ptr")().cast<uintptr_t>());
  a.device = h.attr("get_device")().cast<int>();
  for (auto d : py::tuple(h.attr("shape"))) a.shape.push_back(d.cast<int64_t>());
  for (int64_t d : a.shape) a.size *= d;
  const py::object dtype = h.attr("dtype");
  for (const auto& [type, code] : torch_types()->dtypes) {
    if (dtype.ptr() != type) continue;
    const char* n = code == kUint8 ? "uint8" : cuda::dtype_name(cuda::DType(code));
    set_dtype(a, code, n, code == kUint8 ? 1 : cuda::itemsize(cuda::DType(code)));
  }
  if (a.dtype < 0) a.dtype_name = std::string(py::str(dtype));
  a.contiguous = h.attr("is_contiguous")().cast<bool>();
  return a;
}

}  // namespace

bool is_device_array(py::handle h) {
  if (const auto dev = dlpack_device(h)) return dev->first == kDLCUDA || dev->first == kDLCUDAManaged;
  return py::hasattr(h, "__cuda_array_interface__");
}

DeviceArray device_array(py::handle h, const std::string& name, int64_t stream) {
  DeviceArray a;
  if (is_torch_tensor(h)) return from_torch(h, name);  // its device is the tensor's
  const auto dev = dlpack_device(h);
  if (dev && (dev->first == kDLCUDA || dev->first == kDLCUDAManaged)) {
    a = from_dlpack(h, name, stream);
  } else if (py::hasattr(h, "__cuda_array_interface__")) {
    a = from_cuda_array_interface(h, name);
  } else {
    throw py::type_error(name + " must be a CUDA array (DLPack on kDLCUDA, or "
                         "__cuda_array_interface__), got " +
                         std::string(py::str(py::type::of(h).attr("__name__"))) +
                         (dev ? " on DLPack device type " + std::to_string(dev->first) : ""));
  }
  // DLPack names the device; __cuda_array_interface__ does not, and its
  // pointer is checked to be device memory (and where it lives) here.
  if (a.size > 0 && a.device < 0) {
    std::string why;
    const int owner = cuda::pointer_device(a.data, &why);
    if (owner < 0) throw py::value_error(name + ": " + why);
    a.device = owner;
  }
  return a;
}

}  // namespace fusedopt::bindings
