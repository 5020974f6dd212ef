// pybind11 adapter for the dropout kernels (used by fusedopt.ops.dropout):
// validate, allocate the outputs, release the GIL, call the engine.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <optional>

#include "../src/dropout_ops.h"
#include "checks.h"

namespace fusedopt::bindings {
namespace {

// x (or dy): a C-contiguous float32/float64 array.
DType float_input(const py::array& x, const std::string& name) {
  require_layout(x, name, false);
  if (x.dtype().equal(py::dtype::of<float>())) return DType::kFloat32;
  if (x.dtype().equal(py::dtype::of<double>())) return DType::kFloat64;
  throw py::type_error(name + " has dtype " + std::string(py::str(x.dtype())) +
                       "; dropout supports float32 and float64");
}

// x's shape, as the noise shape is checked against it.
std::vector<int64_t> dims(const py::array& x) { return std::vector<int64_t>(x.shape(), x.shape() + x.ndim()); }

py::tuple dropout_py(py::handle x_h, py::handle rate_h, uint64_t seed0, uint64_t seed1,
                     const std::optional<std::vector<int64_t>>& noise_shape) {
  const py::array x = as_array(x_h, "x");
  DropoutCall call;
  call.dtype = float_input(x, "x");
  call.rate = checked_rate(rate_h);
  call.noise = checked_noise(dims(x), noise_shape);
  py::array y(x.dtype(), std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
  py::array_t<uint8_t> mask(py::ssize_t(mask_bytes(call.noise)));
  const dropout::Stream stream = dropout::stream_from_seed(seed0, seed1);
  call.in = x.data();
  call.out = y.mutable_data();
  call.size = int64_t(x.size());
  call.stream = &stream;
  call.mask_out = mask.mutable_data();
  {
    py::gil_scoped_release release;
    run_dropout(call);
  }
  return py::make_tuple(y, mask);
}

py::array dropout_backward_py(py::handle dy_h, py::handle mask_h, py::handle rate_h,
                              std::optional<std::pair<uint64_t, uint64_t>> seed,
                              const std::optional<std::vector<int64_t>>& noise_shape) {
  const py::array dy = as_array(dy_h, "dy");
  DropoutCall call;
  call.dtype = float_input(dy, "dy");
  call.rate = checked_rate(rate_h);
  call.noise = checked_noise(dims(dy), noise_shape);
  py::array mask;
  if (mask_h.is_none() == !seed.has_value())
    throw py::value_error("pass exactly one of packed_mask (the mask from dropout) and seed "
                          "(to regenerate it)");
  if (!mask_h.is_none()) {
    mask = as_array(mask_h, "packed_mask");
    if (!mask.dtype().equal(py::dtype::of<uint8_t>()))
      throw py::type_error("packed_mask has dtype " + std::string(py::str(mask.dtype())) +
                           "; it must be the uint8 mask returned by dropout");
    require_layout(mask, "packed_mask", false);
    if (int64_t(mask.size()) != mask_bytes(call.noise) || mask.ndim() != 1)
      throw py::value_error("packed_mask has shape " + shape_str(mask) + " but " +
                            std::to_string(call.noise.noise_size) + " mask bits take (" +
                            std::to_string(mask_bytes(call.noise)) + ",) bytes");
    call.mask_in = static_cast<const uint8_t*>(mask.data());
  }
  py::array dx(dy.dtype(), std::vector<py::ssize_t>(dy.shape(), dy.shape() + dy.ndim()));
  dropout::Stream stream{};
  if (seed) {
    stream = dropout::stream_from_seed(seed->first, seed->second);
    call.stream = &stream;
  }
  call.in = dy.data();
  call.out = dx.mutable_data();
  call.size = int64_t(dy.size());
  {
    py::gil_scoped_release release;
    run_dropout(call);
  }
  return dx;
}

}  // namespace

void register_dropout(py::module_& m) {
  m.def("dropout", &dropout_py, py::arg("x"), py::arg("rate"), py::arg("seed0"), py::arg("seed1"),
        py::arg("noise_shape") = py::none(),
        "(y, packed_mask) for a TF stateless seed pair (seed0, seed1), each as uint64.");
  m.def("dropout_backward", &dropout_backward_py, py::arg("dy"), py::arg("packed_mask"),
        py::arg("rate"), py::arg("seed") = py::none(), py::arg("noise_shape") = py::none(),
        "dx = keep ? dy * scale : 0, keep from packed_mask or regenerated from seed.");
  m.def("philox4x32_10", [](std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key) {
    std::array<uint32_t, 4> out;
    philox::block(counter.data(), key.data(), out.data());
    return out;
  }, py::arg("counter"), py::arg("key"), "One Philox4x32-10 block (for known-answer tests).");
  m.def("dropout_stream", [](uint64_t seed0, uint64_t seed1) {
    const dropout::Stream s = dropout::stream_from_seed(seed0, seed1);
    return py::make_tuple(std::array<uint32_t, 2>{s.key[0], s.key[1]},
                          std::array<uint32_t, 4>{s.counter[0], s.counter[1], s.counter[2], s.counter[3]});
  }, py::arg("seed0"), py::arg("seed1"),
     "(key, counter) of the Philox stream of a seed pair, as TF's StatelessRandomGetKeyCounter.");
}

}  // namespace fusedopt::bindings
