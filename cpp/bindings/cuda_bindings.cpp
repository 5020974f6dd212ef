// pybind11 adapter for the CUDA engine (cpp/cuda): the cuda_* entry points
// and register_cuda. CUDA arrays arrive through DLPack (__dlpack_device__ ==
// kDLCUDA) or __cuda_array_interface__ (cuda_arrays.h), are validated as the
// CPU adapter validates NumPy arrays (dtype, shape, contiguity, writability,
// aliasing, hyperparameters; plus: every pointer is device memory of one
// device; checks.h and cuda_checks.h) before anything is written, and are
// updated in place on the caller's stream. Builds without CUDA register only
// `cuda_compiled = False` and a device count of 0.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "checks.h"

#ifdef FUSEDOPT_WITH_CUDA
#include "../cuda/cuda_engine.h"
#include "../src/dropout_ops.h"
#include "../src/regularizer_ops.h"
#include "cuda_arrays.h"
#include "cuda_checks.h"
#include "fusedopt/dropout.h"
#include "fusedopt/regularizers.h"
#endif

namespace fusedopt::bindings {

#ifdef FUSEDOPT_WITH_CUDA
namespace {

void raise_on_error(const cuda::Status& status) {
  if (!status.empty()) throw std::runtime_error("CUDA: " + status);
}

void* as_stream(int64_t stream) { return reinterpret_cast<void*>(static_cast<intptr_t>(stream)); }

// The same checks, in the same order and words, as the CPU adapter's apply.
void cuda_apply_py(const std::string& rule_name, py::handle params_h, py::handle grads_h,
                   py::handle states_h, py::dict hyper_d, int64_t step, py::handle lr_h,
                   py::handle weight_decay_h, bool dry_run, py::handle l1_h, py::handle l2_h,
                   py::handle proximal_l1_h, int64_t stream) {
  const ApplyScalars scalars = checked_scalars(rule_name, hyper_d, step, lr_h, weight_decay_h,
                                               l1_h, l2_h, proximal_l1_h);
  const RuleInfo* rule = scalars.rule;
  const ApplyLists lists = checked_lists(*rule, params_h, grads_h, states_h);
  const size_t n = lists.params.size();
  const size_t num_states = lists.states.size();

  std::vector<DeviceArray> arrays;  // every array of the call, kept until the launch
  arrays.reserve(n * (2 + num_states));
  std::vector<cuda::Tensor> tensors;
  std::vector<Span> outputs, inputs;
  for (size_t i = 0; i < n; ++i) {
    arrays.push_back(device_array(lists.params[i], label("params", i), stream));
    const DeviceArray& p = arrays.back();
    if (i == 0)
      require_float(p, kUpdateDtypes, "supported dtypes are float32, float64, float16 and bfloat16");
    else
      require_like(p, arrays[0], false);
    require_layout(p, true);
    arrays.push_back(device_array(lists.grads[i], label("grads", i), stream));
    const DeviceArray& g = arrays.back();
    require_like(g, p, true);
    require_layout(g, false);

    cuda::Tensor t;
    t.param = p.data;
    t.grad = g.data;
    set_layout(&t, p.shape, rule->factored_states);
    if (p.size > 0) outputs.push_back(span(p));
    if (g.size > 0) inputs.push_back(span(g));
    const size_t p_index = arrays.size() - 2;
    for (size_t k = 0; k < num_states; ++k) {
      arrays.push_back(device_array(lists.states[k][i], label(rule->state_names[k], i), stream));
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
  const int device = common_device(arrays);
  require_no_aliasing(outputs, inputs);
  if (dry_run || device < 0) return;

  const auto update = scalars.update<cuda::Update>();
  const auto dtype = cuda::DType(arrays[0].dtype);
  cuda::Status status;
  {
    py::gil_scoped_release release;
    status = cuda::apply(rule->id, dtype, tensors, update, device, as_stream(stream));
  }
  raise_on_error(status);
}

// Dropout: x (or dy) -> y (or dx), preallocated by the caller on x's device.
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
  const double rate = checked_rate(rate_h);
  const NoiseBroadcast nb = checked_noise(x.shape, noise_shape);
  arrays.push_back(device_array(out_h, out_name, stream));
  const DeviceArray& y = arrays.back();
  require_like(y, x, true);
  require_layout(y, true);
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
    if (mask->size != mask_bytes(nb) || mask->shape.size() != 1)
      throw py::value_error("packed_mask has shape " + shape_text(mask->shape) + " but " +
                            std::to_string(nb.noise_size) + " mask bits take (" +
                            std::to_string(mask_bytes(nb)) + ",) bytes");
  }
  const int device = common_device(arrays);
  std::vector<Span> outputs{span(y)}, inputs{span(x)};
  if (mask) (store_mask ? outputs : inputs).push_back(span(*mask));
  require_no_aliasing(nonempty(std::move(outputs)), nonempty(inputs));
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
