// pybind11 adapter for the regularizer kernels (used by fusedopt.regularizers):
// validate every list and scalar, release the GIL, call the engine.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "../src/regularizer_ops.h"
#include "checks.h"
#include "fusedopt/regularizers.h"

namespace fusedopt::bindings {
namespace {

DType dtype_of(const py::array& a, const std::string& name) {
  if (a.dtype().equal(py::dtype::of<float>())) return DType::kFloat32;
  if (a.dtype().equal(py::dtype::of<double>())) return DType::kFloat64;
  throw py::type_error(name + " has dtype " + std::string(py::str(a.dtype())) +
                       "; supported dtypes are float32 and float64");
}

// A validated list of arrays; `none[i]` where None was allowed and given.
struct ArrayList {
  std::vector<py::array> arrays;
  std::vector<bool> none;
  std::vector<Span> spans;
};

// The arrays of list `name`: one float dtype for all, or, given `like`, the
// dtype and shapes of `like` (named `like_name`).

ArrayList array_list(py::handle list_h, const std::string& name, bool writable,
                     const ArrayList* like, const std::string& like_name, bool allow_none = false) {
  const py::sequence list = as_list(list_h, name);
  if (like && list.size() != like->arrays.size())
    throw py::value_error(name + " has " + std::to_string(list.size()) + " arrays but " + like_name +
                          " has " + std::to_string(like->arrays.size()));
  ArrayList out;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string n = label(name, i);
    out.none.push_back(allow_none && list[i].is_none());
    if (out.none.back()) {
      out.arrays.emplace_back();
      continue;
    }
    py::array a = as_array(list[i], n);
    if (like) {
      const py::array& ref = like->arrays[i];
      require_dtype(a, ref.dtype(), n, label(like_name, i));
      require_shape(a, shape_of(ref), n, label(like_name, i) + " has shape");
    } else {
      dtype_of(a, n);
      if (i > 0) require_dtype(a, out.arrays[0].dtype(), n, label(name, 0));
    }
    require_layout(a, n, writable);
    if (a.nbytes() > 0) out.spans.push_back(span_of(a, n));
    out.arrays.push_back(std::move(a));
  }
  return out;
}

DType list_dtype(const ArrayList& w) {
  return w.arrays.empty() ? DType::kFloat32 : dtype_of(w.arrays[0], "w[0]");
}

std::vector<RegTensor> tensors_of(const ArrayList& w, const ArrayList* other, ArrayList* out) {
  std::vector<RegTensor> ts(w.arrays.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    ts[i].w = w.arrays[i].data();
    ts[i].size = int64_t(w.arrays[i].size());
    if (other && !other->none[i]) ts[i].other = other->arrays[i].data();
    if (out) ts[i].out = out->arrays[i].mutable_data();
  }
  return ts;
}

double l1l2_penalty_py(py::handle w_h, py::handle l1_h, py::handle l2_h) {
  const double l1 = nonnegative_number(l1_h, "l1"), l2 = nonnegative_number(l2_h, "l2");
  const ArrayList w = array_list(w_h, "w", false, nullptr, "");
  const DType dtype = list_dtype(w);
  const auto tensors = tensors_of(w, nullptr, nullptr);
  std::vector<double> sum_abs, sum_sq;
  {
    py::gil_scoped_release release;
    regularizer_sums(dtype, tensors, &sum_abs, &sum_sq);
  }
  double total = 0.0;
  for (size_t i = 0; i < sum_abs.size(); ++i)
    total += regularizers::l1l2_penalty(sum_abs[i], sum_sq[i], l1, l2);
  return total;
}

void l1l2_gradient_py(py::handle w_h, py::handle out_h, py::handle l1_h, py::handle l2_h) {
  const double l1 = nonnegative_number(l1_h, "l1"), l2 = nonnegative_number(l2_h, "l2");
  const ArrayList w = array_list(w_h, "w", false, nullptr, "");
  ArrayList out = array_list(out_h, "out", true, &w, "w");
  require_no_aliasing(out.spans, w.spans);
  const DType dtype = list_dtype(w);
  const auto tensors = tensors_of(w, nullptr, &out);
  py::gil_scoped_release release;
  l1l2_gradient(dtype, tensors, l1, l2);
}

double l2sp_penalty_py(py::handle w_h, py::handle w0_h, py::handle alpha_h, py::handle beta_h) {
  const double alpha = nonnegative_number(alpha_h, "alpha");
  const double beta = nonnegative_number(beta_h, "beta");
  const ArrayList w = array_list(w_h, "w", false, nullptr, "");
  const ArrayList w0 = array_list(w0_h, "w0", false, &w, "w", /*allow_none=*/true);
  const DType dtype = list_dtype(w);
  const auto tensors = tensors_of(w, &w0, nullptr);
  std::vector<double> sum_abs, sum_sq;
  {
    py::gil_scoped_release release;
    regularizer_sums(dtype, tensors, &sum_abs, &sum_sq);
  }
  double total = 0.0;
  for (size_t i = 0; i < sum_sq.size(); ++i)
    total += regularizers::l2sp_penalty(sum_sq[i], w0.none[i] ? beta : alpha);
  return total;
}

void l2sp_gradient_py(py::handle w_h, py::handle w0_h, py::handle out_h, py::handle alpha_h,
                      py::handle beta_h) {
  const double alpha = nonnegative_number(alpha_h, "alpha");
  const double beta = nonnegative_number(beta_h, "beta");
  const ArrayList w = array_list(w_h, "w", false, nullptr, "");
  const ArrayList w0 = array_list(w0_h, "w0", false, &w, "w", /*allow_none=*/true);
  ArrayList out = array_list(out_h, "out", true, &w, "w");
  std::vector<Span> inputs = w.spans;
  inputs.insert(inputs.end(), w0.spans.begin(), w0.spans.end());
  require_no_aliasing(out.spans, inputs);
  const DType dtype = list_dtype(w);
  const auto tensors = tensors_of(w, &w0, &out);
  py::gil_scoped_release release;
  l2sp_gradient(dtype, tensors, alpha, beta);
}

void proximal_step_py(py::handle w_h, py::handle g_h, py::handle lr_h, py::handle l1_h,
                      py::handle l2_h) {
  const double lr = nonnegative_number(lr_h, "learning_rate");
  const double l1 = nonnegative_number(l1_h, "l1"), l2 = nonnegative_number(l2_h, "l2");
  ArrayList w = array_list(w_h, "w", true, nullptr, "");
  const ArrayList g = array_list(g_h, "g", false, &w, "w");
  require_no_aliasing(w.spans, g.spans);
  const DType dtype = list_dtype(w);
  const auto tensors = tensors_of(w, &g, &w);
  py::gil_scoped_release release;
  proximal_step(dtype, tensors, lr, l1, l2);
}

}  // namespace

void register_regularizers(py::module_& m) {
  m.def("l1l2_penalty", &l1l2_penalty_py, py::arg("w"), py::arg("l1"), py::arg("l2"),
        "sum over the list of l1 * sum|w| + l2 * sum w^2 (sums in double).");
  m.def("l1l2_gradient", &l1l2_gradient_py, py::arg("w"), py::arg("out"), py::arg("l1"),
        py::arg("l2"), "out[i] = l1 * sign(w[i]) + 2 * l2 * w[i].");
  m.def("l2sp_penalty", &l2sp_penalty_py, py::arg("w"), py::arg("w0"), py::arg("alpha"),
        py::arg("beta"),
        "sum of alpha/2 * ||w - w0||^2 (beta/2 * ||w||^2 where w0[i] is None).");
  m.def("l2sp_gradient", &l2sp_gradient_py, py::arg("w"), py::arg("w0"), py::arg("out"),
        py::arg("alpha"), py::arg("beta"),
        "out[i] = alpha * (w[i] - w0[i]) (beta * w[i] where w0[i] is None).");
  m.def("proximal_step", &proximal_step_py, py::arg("w"), py::arg("g"), py::arg("learning_rate"),
        py::arg("l1"), py::arg("l2"),
        "In place: v = w - lr * g; w = sign(v) * max(|v| - lr * l1, 0) / (1 + lr * l2).");
}

}  // namespace fusedopt::bindings
