// Argument conversion and validation shared by the pybind11 adapters: each
// raises TypeError/ValueError naming the argument, before anything is written.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../src/validation.h"

namespace fusedopt::bindings {

namespace py = pybind11;

inline std::string label(const std::string& arg, size_t i) { return arg + "[" + std::to_string(i) + "]"; }

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += std::to_string(a.shape(d)) + (a.ndim() == 1 ? "," : d + 1 < a.ndim() ? ", " : "");
  return s + ")";
}

inline std::vector<py::ssize_t> shape_of(const py::array& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

inline py::sequence as_list(py::handle h, const std::string& arg) {
  if (!py::isinstance<py::list>(h) && !py::isinstance<py::tuple>(h))
    throw py::type_error(arg + " must be a list of arrays, got " +
                         std::string(py::str(py::type::of(h).attr("__name__"))));
  return py::reinterpret_borrow<py::sequence>(h);
}

inline py::array as_array(py::handle h, const std::string& name) {
  if (!py::isinstance<py::array>(h))
    throw py::type_error(name + " must be a numpy.ndarray (or a CPU tensor with DLPack), got " +
                         std::string(py::str(py::type::of(h).attr("__name__"))));
  return py::reinterpret_borrow<py::array>(h);
}

inline void require_layout(const py::array& a, const std::string& name, bool writable) {
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(name + " must be C-contiguous");
  // The kernels read T* directly: a view at an odd byte offset would be
  // undefined behaviour (and a fault on some CPUs), so it is refused.
  if (a.size() > 0 && reinterpret_cast<uintptr_t>(a.data()) % uintptr_t(a.itemsize()) != 0)
    throw py::value_error(name + " is not aligned to its " + std::to_string(a.itemsize()) +
                          "-byte element size (a view at an odd byte offset); pass a copy");
  if (writable && !a.writeable()) throw py::value_error(name + " is read-only");
}

inline void require_dtype(const py::array& a, const py::dtype& want, const std::string& name,
                          const std::string& reference) {
  if (!a.dtype().is(want) && !a.dtype().equal(want))
    throw py::type_error(name + " has dtype " + std::string(py::str(a.dtype())) + " but " +
                         reference + " has dtype " + std::string(py::str(want)));
}

inline void require_shape(const py::array& a, const std::vector<py::ssize_t>& want,
                          const std::string& name, const std::string& what) {
  if (shape_of(a) != want) {
    std::string w = "(";
    for (size_t d = 0; d < want.size(); ++d) w += std::to_string(want[d]) + (want.size() == 1 ? "," : d + 1 < want.size() ? ", " : "");
    throw py::value_error(name + " has shape " + shape_str(a) + " but " + what + " " + w + ")");
  }
}

inline double finite_number(py::handle h, const std::string& name) {
  if (!py::isinstance<py::float_>(h) && !py::isinstance<py::int_>(h) &&
      !py::hasattr(h, "__float__"))
    throw py::type_error(name + " must be a number, got " +
                         std::string(py::str(py::type::of(h).attr("__name__"))));
  if (py::isinstance<py::bool_>(h)) return h.cast<bool>() ? 1.0 : 0.0;
  double x = 0.0;
  try {
    x = py::float_(py::reinterpret_borrow<py::object>(h)).cast<double>();
  } catch (py::error_already_set& e) {
    // float() of an int beyond double range, or of an array that is not 0-d.
    if (e.matches(PyExc_OverflowError))
      throw py::value_error(name + " is too large for a double");
    if (e.matches(PyExc_TypeError) || e.matches(PyExc_ValueError))
      throw py::type_error(name + " must be a number (or a 0-d array), got " +
                           std::string(py::str(py::type::of(h).attr("__name__"))));
    throw;
  }
  if (!std::isfinite(x)) throw py::value_error(name + " must be finite, got " + std::to_string(x));
  return x;
}

inline double nonnegative_number(py::handle h, const std::string& name) {
  const double x = finite_number(h, name);
  if (x < 0.0) throw py::value_error(name + " must be >= 0, got " + std::to_string(x));
  return x;
}

// No output buffer may overlap any other buffer of the call.
using Span = ByteSpan;

inline void require_no_aliasing(std::vector<Span> outputs, const std::vector<Span>& inputs) {
  const std::string err = check_no_overlap(std::move(outputs), inputs);
  if (!err.empty()) throw py::value_error(err);
}

inline Span span_of(const py::array& a, const std::string& name) {
  const auto b = reinterpret_cast<uintptr_t>(a.data());
  return Span{b, b + uintptr_t(a.nbytes()), name};
}

}  // namespace fusedopt::bindings
