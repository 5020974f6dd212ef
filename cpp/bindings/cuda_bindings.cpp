// pybind11 adapter for the CUDA engine (cpp/cuda): CUDA arrays arrive through
// DLPack (__dlpack_device__ == kDLCUDA) or __cuda_array_interface__, are
// validated as the CPU adapter validates NumPy arrays (dtype, shape,
// contiguity, writability, aliasing, hyperparameters; plus: every pointer is
// device memory of one device) before anything is written, and are updated
// in place on the caller's stream. Builds without CUDA register only
// `cuda_compiled = False` and a device count of 0.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "../src/engine.h"
#include "checks.h"

#ifdef FUSEDOPT_WITH_CUDA
#include "../cuda/cuda_engine.h"
#include "../src/dropout_ops.h"
#include "../src/regularizer_ops.h"
#include "fusedopt/dropout.h"
#include "fusedopt/regularizers.h"
#endif

namespace fusedopt::bindings {

#ifdef FUSEDOPT_WITH_CUDA
namespace {

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
constexpr int kDLCUDA = 2, kDLCUDAManaged = 13;
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

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t d = 0; d < s.size(); ++d)
    out += std::to_string(s[d]) + (s.size() == 1 ? "," : d + 1 < s.size() ? ", " : "");
  return out + ")";
}

// "TypeName: message" of a Python exception (without pybind11's traceback).
std::string error_text(py::error_already_set& e) {
  return std::string(py::str(e.type().attr("__name__"))) + ": " + std::string(py::str(e.value()));
}

std::string device_text(int device) { return "cuda:" + std::to_string(device); }

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

bool is_device_array(py::handle h) {
  if (const auto dev = dlpack_device(h)) return dev->first == kDLCUDA || dev->first == kDLCUDAManaged;
  return py::hasattr(h, "__cuda_array_interface__");
}

// The array `h` (named `name`): a CUDA array on one device, its pointer
// checked to be device memory of that device.
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

// Every nonempty array on one device; returns it (-1 when all are empty).
int common_device(const std::vector<const DeviceArray*>& arrays) {
  const DeviceArray* first = nullptr;
  for (const DeviceArray* a : arrays) {
    if (a->size == 0) continue;
    if (first == nullptr) first = a;
    else if (a->device != first->device)
      throw py::value_error(a->name + " is on " + device_text(a->device) + " but " + first->name +
                            " is on " + device_text(first->device) + "; all arrays of a call must "
                            "be on one device");
  }
  return first ? first->device : -1;
}

Span span(const DeviceArray& a) {
  const auto b = reinterpret_cast<uintptr_t>(a.data);
  return Span{b, b + uintptr_t(a.size * a.itemsize), a.name};
}

void raise_on_error(const cuda::Status& status) {
  if (!status.empty()) throw std::runtime_error("CUDA: " + status);
}

void* as_stream(int64_t stream) { return reinterpret_cast<void*>(static_cast<intptr_t>(stream)); }

const std::vector<int> kUpdateDtypes = {int(cuda::DType::kFloat32), int(cuda::DType::kFloat64),
                                        int(cuda::DType::kFloat16), int(cuda::DType::kBFloat16)};
const std::vector<int> kFloatDtypes = {int(cuda::DType::kFloat32), int(cuda::DType::kFloat64)};

std::vector<int64_t> factored_shape(const std::vector<int64_t>& shape, int which) {
  if (shape.size() < 2) return {};
  std::vector<int64_t> out(shape.begin(), shape.end() - 2);
  out.push_back(which == 0 ? shape[shape.size() - 2] : shape.back());
  return out;
}

// The same checks, in the same order and words, as the CPU adapter's apply.
void cuda_apply_py(const std::string& rule_name, py::handle params_h, py::handle grads_h,
                   py::handle states_h, py::dict hyper_d, int64_t step, py::handle lr_h,
                   py::handle weight_decay_h, bool dry_run, py::handle l1_h, py::handle l2_h,
                   py::handle proximal_l1_h, int64_t stream) {
  const RuleInfo* rule = find_rule(rule_name);
  if (rule == nullptr) throw py::value_error("unknown rule '" + rule_name + "'");
  const double lr = finite_number(lr_h, "learning_rate");
  if (lr < 0.0) throw py::value_error("learning_rate must be >= 0, got " + std::to_string(lr));
  if (rule->needs_positive_learning_rate && lr <= 0.0)
    throw py::value_error("learning_rate must be > 0 for " + rule->name);
  const double wd = finite_number(weight_decay_h, "weight_decay");
  if (wd < 0.0) throw py::value_error("weight_decay must be >= 0, got " + std::to_string(wd));
  const double l1 = nonnegative_number(l1_h, "l1");
  const double l2 = nonnegative_number(l2_h, "l2");
  const double proximal_l1 = nonnegative_number(proximal_l1_h, "proximal_l1");
  if (step < 1) throw py::value_error("step must be >= 1, got " + std::to_string(step));

  std::vector<double> hyper;
  for (const auto& name : rule->hyper_names) {
    if (!hyper_d.contains(name))
      throw py::value_error("missing hyperparameter '" + name + "' for " + rule->name);
    hyper.push_back(finite_number(hyper_d[name.c_str()], name));
  }
  for (auto item : hyper_d) {
    const auto key = py::str(item.first).cast<std::string>();
    if (std::find(rule->hyper_names.begin(), rule->hyper_names.end(), key) == rule->hyper_names.end())
      throw py::value_error("unknown hyperparameter '" + key + "' for " + rule->name);
  }
  if (const char* err = rule->validate(hyper.data())) throw py::value_error(err);

  const py::sequence params = as_list(params_h, "params");
  const py::sequence grads = as_list(grads_h, "grads");
  const py::sequence states = as_list(states_h, "states");
  const size_t n = params.size();
  if (grads.size() != n)
    throw py::value_error("grads has " + std::to_string(grads.size()) + " tensors but params has " +
                          std::to_string(n));
  const size_t num_states = rule->state_names.size();
  if (states.size() != num_states)
    throw py::value_error(rule->name + " takes " + std::to_string(num_states) +
                          " state lists (" + std::to_string(states.size()) + " given)");
  std::vector<py::sequence> state_lists;
  for (size_t k = 0; k < num_states; ++k) {
    const std::string sname = rule->state_names[k];
    state_lists.push_back(as_list(states[k], sname));
    if (state_lists.back().size() != n)
      throw py::value_error(sname + " has " + std::to_string(state_lists.back().size()) +
                            " tensors but params has " + std::to_string(n));
  }

  std::vector<DeviceArray> arrays;  // every array of the call, kept until the launch
  arrays.reserve(n * (2 + num_states));
  std::vector<cuda::Tensor> tensors;
  std::vector<Span> outputs, inputs;
  for (size_t i = 0; i < n; ++i) {
    arrays.push_back(device_array(params[i], label("params", i), stream));
    const DeviceArray& p = arrays.back();
    if (i == 0)
      require_float(p, kUpdateDtypes, "supported dtypes are float32, float64, float16 and bfloat16");
    else
      require_like(p, arrays[0], false);
    require_layout(p, true);
    arrays.push_back(device_array(grads[i], label("grads", i), stream));
    const DeviceArray& g = arrays.back();
    require_like(g, p, true);
    require_layout(g, false);

    cuda::Tensor t;
    t.param = p.data;
    t.grad = g.data;
    t.size = p.size;
    if (p.size > 0) outputs.push_back(span(p));
    if (g.size > 0) inputs.push_back(span(g));
    if (rule->factored_states && p.shape.size() >= 2) {
      t.factored = true;
      t.cols = p.shape.back();
      t.rows = p.shape[p.shape.size() - 2];
      t.batch = t.cols * t.rows == 0 ? 0 : t.size / (t.rows * t.cols);
    }
    const size_t p_index = arrays.size() - 2;
    for (size_t k = 0; k < num_states; ++k) {
      arrays.push_back(device_array(state_lists[k][i], label(rule->state_names[k], i), stream));
      const DeviceArray& s = arrays.back();
      const DeviceArray& pref = arrays[p_index];
      require_like(s, pref, false);
      const auto want = rule->factored_states && k < 2 ? factored_shape(pref.shape, int(k)) : pref.shape;
      if (s.shape != want)
        throw py::value_error(s.name + " has shape " + shape_text(s.shape) + " but " +
                              (rule->factored_states && k < 2 ? std::string("it must have shape")
                                                              : pref.name + " has shape") +
                              " " + shape_text(want));
      require_layout(s, true);
      t.state[k] = s.data;
      if (s.size > 0) outputs.push_back(span(s));
    }
    tensors.push_back(t);
  }
  std::vector<const DeviceArray*> all;
  for (const auto& a : arrays) all.push_back(&a);
  const int device = common_device(all);
  require_no_aliasing(outputs, inputs);
  if (dry_run || device < 0) return;

  cuda::Update update;
  update.hyper = hyper.data();
  update.step = StepArgs{step, lr};
  update.decay = wd * lr;
  update.l1 = l1;
  update.l2 = l2;
  update.proximal_l1 = proximal_l1;
  const auto dtype = cuda::DType(arrays[0].dtype);
  cuda::Status status;
  {
    py::gil_scoped_release release;
    status = cuda::apply(rule->id, dtype, tensors, update, device, as_stream(stream));
  }
  raise_on_error(status);
}

// Dropout: x (or dy) -> y (or dx), preallocated by the caller on x's device.
NoiseBroadcast checked_noise(const DeviceArray& x, const std::optional<std::vector<int64_t>>& noise) {
  if (!noise) return make_noise_broadcast(x.shape, x.shape);
  const std::vector<int64_t>& given = *noise;
  bool ok = given.size() <= x.shape.size();
  std::vector<int64_t> padded(x.shape.size(), 1);
  for (size_t d = 0; ok && d < given.size(); ++d) {
    const size_t xd = x.shape.size() - given.size() + d;
    ok = given[d] == 1 || given[d] == x.shape[xd];
    padded[xd] = given[d];
  }
  if (!ok)
    throw py::value_error("noise_shape " + shape_text(given) + " does not broadcast to x's shape " +
                          shape_text(x.shape) + ": each entry must be 1 or x's size there");
  return make_noise_broadcast(x.shape, padded);
}

void cuda_dropout_py(py::handle in_h, py::handle out_h, py::handle mask_h, py::handle rate_h,
                     std::optional<std::pair<uint64_t, uint64_t>> seed,
                     const std::optional<std::vector<int64_t>>& noise_shape, bool store_mask,
                     const std::string& in_name, const std::string& out_name, int64_t stream) {
  std::vector<DeviceArray> arrays;
  arrays.reserve(3);
  arrays.push_back(device_array(in_h, in_name, stream));
  const DeviceArray& x = arrays.back();
  require_float(x, kFloatDtypes, "dropout supports float32 and float64");
  require_layout(x, false);
  const double rate = finite_number(rate_h, "rate");
  if (!(rate >= 0.0 && rate < 1.0))
    throw py::value_error("rate must be in [0, 1), got " + std::to_string(rate));
  const NoiseBroadcast nb = checked_noise(x, noise_shape);
  arrays.push_back(device_array(out_h, out_name, stream));
  const DeviceArray& y = arrays.back();
  require_like(y, x, true);
  require_layout(y, true);
  const int64_t mask_bytes = (nb.noise_size + 7) / 8;
  const DeviceArray* mask = nullptr;
  if (!store_mask && mask_h.is_none() == !seed.has_value())
    throw py::value_error("pass exactly one of packed_mask (the mask from dropout) and seed "
                          "(to regenerate it)");
  if (store_mask && !seed) throw py::value_error("dropout needs a seed");
  if (!mask_h.is_none()) {
    arrays.push_back(device_array(mask_h, "packed_mask", stream));
    mask = &arrays.back();
    if (mask->dtype != kUint8)
      throw py::type_error("packed_mask has dtype " + mask->dtype_name + "; it must be uint8");
    require_layout(*mask, store_mask);
    if (mask->size != mask_bytes || mask->shape.size() != 1)
      throw py::value_error("packed_mask has shape " + shape_text(mask->shape) + " but " +
                            std::to_string(nb.noise_size) + " mask bits take (" +
                            std::to_string(mask_bytes) + ",) bytes");
  }
  std::vector<const DeviceArray*> all;
  for (const auto& a : arrays) all.push_back(&a);
  const int device = common_device(all);
  std::vector<Span> outputs{span(y)}, inputs{span(x)};
  if (mask) (store_mask ? outputs : inputs).push_back(span(*mask));
  outputs.erase(std::remove_if(outputs.begin(), outputs.end(), [](const Span& s) { return s.end == s.begin; }), outputs.end());
  inputs.erase(std::remove_if(inputs.begin(), inputs.end(), [](const Span& s) { return s.end == s.begin; }), inputs.end());
  require_no_aliasing(outputs, inputs);
  if (device < 0) return;

  dropout::Stream philox{};
  cuda::DropoutArgs args;
  args.dtype = cuda::DType(x.dtype);
  args.in = x.data;
  args.out = y.data;
  args.size = x.size;
  args.rate = rate;
  args.noise = &nb;
  if (seed) {
    philox = dropout::stream_from_seed(seed->first, seed->second);
    args.stream = &philox;
  }
  if (mask && store_mask) args.mask_out = static_cast<uint8_t*>(mask->data);
  if (mask && !store_mask) args.mask_in = static_cast<const uint8_t*>(mask->data);
  cuda::Status status;
  {
    py::gil_scoped_release release;
    status = cuda::dropout(args, device, as_stream(stream));
  }
  raise_on_error(status);
}

// The regularizer kernels: lists of CUDA arrays of one float dtype.
struct RegLists {
  std::vector<DeviceArray> arrays;
  std::vector<RegTensor> tensors;
  std::vector<Span> outputs, inputs;
  int device = -1;
  cuda::DType dtype = cuda::DType::kFloat32;
};

enum Role { kW, kWInPlace, kOptional, kInput, kOut };

// Lists given as (name, list, role): the kW / kWInPlace list sets the count,
// dtype and shapes; kOptional may be None, as a whole or per element.
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
  std::vector<const DeviceArray*> all;
  for (const auto& a : r.arrays) all.push_back(&a);
  r.device = common_device(all);
  require_no_aliasing(r.outputs, r.inputs);
  if (n > 0) r.dtype = cuda::DType(r.arrays[w_index[0]].dtype);
  return r;
}

}  // namespace
#endif  // FUSEDOPT_WITH_CUDA

void register_cuda(py::module_& m) {
#ifdef FUSEDOPT_WITH_CUDA
  m.attr("cuda_compiled") = true;
  m.def("cuda_device_count", &cuda::device_count,
        "CUDA devices usable now (0 without a driver or a device).");
  m.def("cuda_no_device_reason", &cuda::no_device_reason);
  m.def("cuda_runtime_version", &cuda::runtime_version);
  m.def("is_cuda_array", [](py::handle h) { return is_device_array(h); }, py::arg("x"));
  m.def("cuda_describe", [](py::handle x, const std::string& name) {
    const DeviceArray a = device_array(x, name, -1);
    py::dict d;
    d["dtype"] = a.dtype_name;
    d["shape"] = a.shape;
    d["device"] = a.device;
    d["contiguous"] = a.contiguous;
    d["readonly"] = a.readonly;
    return d;
  }, py::arg("x"), py::arg("name"),
     "dtype, shape, device, contiguous, readonly of a CUDA array (errors name `name`).");
  m.def("cuda_apply", &cuda_apply_py, py::arg("rule"), py::arg("params"), py::arg("grads"),
        py::arg("states"), py::arg("hyper"), py::arg("step"), py::arg("learning_rate"),
        py::arg("weight_decay") = 0.0, py::arg("dry_run") = false, py::arg("l1") = 0.0,
        py::arg("l2") = 0.0, py::arg("proximal_l1") = 0.0, py::arg("stream") = 0,
        "`apply` over CUDA arrays, in place, queued on `stream` (a cudaStream_t as int;\n"
        "0: the legacy default stream). Validates everything first.");
  m.def("cuda_dropout", [](py::handle x, py::handle y, py::handle mask, py::handle rate,
                           uint64_t seed0, uint64_t seed1,
                           const std::optional<std::vector<int64_t>>& noise_shape, int64_t stream) {
    cuda_dropout_py(x, y, mask, rate, std::make_pair(seed0, seed1), noise_shape, true, "x", "y",
                    stream);
  }, py::arg("x"), py::arg("y"), py::arg("packed_mask"), py::arg("rate"), py::arg("seed0"),
     py::arg("seed1"), py::arg("noise_shape") = py::none(), py::arg("stream") = 0,
     "y = dropout(x) into a preallocated y, and the packed mask (None: not stored).");
  m.def("cuda_dropout_backward", [](py::handle dy, py::handle dx, py::handle mask, py::handle rate,
                                    std::optional<std::pair<uint64_t, uint64_t>> seed,
                                    const std::optional<std::vector<int64_t>>& noise_shape,
                                    int64_t stream) {
    cuda_dropout_py(dy, dx, mask, rate, seed, noise_shape, false, "dy", "dx", stream);
  }, py::arg("dy"), py::arg("dx"), py::arg("packed_mask"), py::arg("rate"),
     py::arg("seed") = py::none(), py::arg("noise_shape") = py::none(), py::arg("stream") = 0);
  // Penalties from per-tensor sums, with the formulas of fusedopt/regularizers.h.
  const auto sums = [](const RegLists& r, int64_t stream) {
    std::vector<double> sum_abs(r.tensors.size(), 0.0), sum_squares(r.tensors.size(), 0.0);
    if (r.device >= 0) {
      cuda::Status status;
      {
        py::gil_scoped_release release;
        status = cuda::regularizer_sums(r.dtype, r.tensors, &sum_abs, &sum_squares, r.device,
                                        as_stream(stream));
      }
      raise_on_error(status);
    }
    return std::make_pair(sum_abs, sum_squares);
  };
  m.def("cuda_l1l2_penalty", [sums](py::handle w, py::handle l1_h, py::handle l2_h, int64_t stream) {
    const double l1 = nonnegative_number(l1_h, "l1"), l2 = nonnegative_number(l2_h, "l2");
    const RegLists r = reg_lists({{"w", w, kW}}, stream);
    const auto [sum_abs, sum_squares] = sums(r, stream);
    double total = 0.0;
    for (size_t i = 0; i < sum_abs.size(); ++i)
      total += regularizers::l1l2_penalty(sum_abs[i], sum_squares[i], l1, l2);
    return total;
  }, py::arg("w"), py::arg("l1"), py::arg("l2"), py::arg("stream") = 0,
     "l1 * sum|w| + l2 * sum w^2 over a list of CUDA arrays (waits for the stream).");
  m.def("cuda_l2sp_penalty", [sums](py::handle w, py::handle w0, py::handle alpha_h,
                                    py::handle beta_h, int64_t stream) {
    const double alpha = nonnegative_number(alpha_h, "alpha");
    const double beta = nonnegative_number(beta_h, "beta");
    as_list(w0, "w0");
    const RegLists r = reg_lists({{"w", w, kW}, {"w0", w0, kOptional}}, stream);
    const auto [sum_abs, sum_squares] = sums(r, stream);
    const py::sequence w0_list = py::reinterpret_borrow<py::sequence>(w0);
    double total = 0.0;
    for (size_t i = 0; i < sum_squares.size(); ++i)
      total += regularizers::l2sp_penalty(sum_squares[i], w0_list[i].is_none() ? beta : alpha);
    return total;
  }, py::arg("w"), py::arg("w0"), py::arg("alpha"), py::arg("beta"), py::arg("stream") = 0,
     "sum of alpha/2 ||w - w0||^2 (beta/2 ||w||^2 where w0[i] is None) over CUDA arrays.");
  m.def("cuda_l1l2_gradient", [](py::handle w, py::handle out, py::handle l1_h, py::handle l2_h,
                                 int64_t stream) {
    const double l1 = nonnegative_number(l1_h, "l1"), l2 = nonnegative_number(l2_h, "l2");
    const RegLists r = reg_lists({{"w", w, kW}, {"out", out, kOut}}, stream);
    if (r.device < 0) return;
    py::gil_scoped_release release;
    raise_on_error(cuda::l1l2_gradient(r.dtype, r.tensors, l1, l2, r.device, as_stream(stream)));
  }, py::arg("w"), py::arg("out"), py::arg("l1"), py::arg("l2"), py::arg("stream") = 0);
  m.def("cuda_l2sp_gradient", [](py::handle w, py::handle w0, py::handle out, py::handle alpha_h,
                                 py::handle beta_h, int64_t stream) {
    const double alpha = nonnegative_number(alpha_h, "alpha");
    const double beta = nonnegative_number(beta_h, "beta");
    const RegLists r = reg_lists({{"w", w, kW}, {"w0", w0, kOptional}, {"out", out, kOut}}, stream);
    if (r.device < 0) return;
    py::gil_scoped_release release;
    raise_on_error(cuda::l2sp_gradient(r.dtype, r.tensors, alpha, beta, r.device, as_stream(stream)));
  }, py::arg("w"), py::arg("w0"), py::arg("out"), py::arg("alpha"), py::arg("beta"),
     py::arg("stream") = 0);
  m.def("cuda_proximal_step", [](py::handle w, py::handle g, py::handle lr_h, py::handle l1_h,
                                 py::handle l2_h, int64_t stream) {
    const double lr = nonnegative_number(lr_h, "learning_rate");
    const double l1 = nonnegative_number(l1_h, "l1"), l2 = nonnegative_number(l2_h, "l2");
    const RegLists r = reg_lists({{"w", w, kWInPlace}, {"g", g, kInput}}, stream);
    if (r.device < 0) return;
    py::gil_scoped_release release;
    raise_on_error(cuda::proximal_step(r.dtype, r.tensors, lr, l1, l2, r.device, as_stream(stream)));
  }, py::arg("w"), py::arg("g"), py::arg("learning_rate"), py::arg("l1"), py::arg("l2"),
     py::arg("stream") = 0);
  m.def("cuda_synchronize", [](int device, int64_t stream) {
    cuda::Status status;
    {
      py::gil_scoped_release release;
      status = cuda::synchronize(device, as_stream(stream));
    }
    raise_on_error(status);
  }, py::arg("device") = -1, py::arg("stream") = 0);
#else
  m.attr("cuda_compiled") = false;
  m.def("cuda_device_count", [] { return 0; });
  m.def("cuda_no_device_reason", [] {
    return std::string("fusedopt was built without CUDA (FUSEDOPT_CUDA=OFF or no CUDA compiler)");
  });
  m.def("cuda_runtime_version", [] { return 0; });
#endif
}

}  // namespace fusedopt::bindings
