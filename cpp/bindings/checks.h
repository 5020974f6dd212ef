// Argument conversion and validation shared by the pybind11 adapters: each
// raises TypeError/ValueError naming the argument, before anything is written.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "../src/dropout_ops.h"
#include "../src/engine.h"
#include "../src/validation.h"
#include "fusedopt/tensor_layout.h"

namespace fusedopt::bindings {

namespace py = pybind11;

inline std::string label(const std::string& arg, size_t i) { return arg + "[" + std::to_string(i) + "]"; }

// A shape as Python prints it: "(2, 3)", "(4,)", "()".
template <class Int> std::string shape_text(const std::vector<Int>& s) {
  std::string out = "(";
  for (size_t d = 0; d < s.size(); ++d)
    out += std::to_string(s[d]) + (s.size() == 1 ? "," : d + 1 < s.size() ? ", " : "");
  return out + ")";
}

inline std::vector<py::ssize_t> shape_of(const py::array& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

inline std::string shape_str(const py::array& a) { return shape_text(shape_of(a)); }

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
  if (shape_of(a) != want)
    throw py::value_error(name + " has shape " + shape_str(a) + " but " + what + " " + shape_text(want));
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

// apply's arguments other than the arrays (the CPU and the CUDA adapter):
// the rule, the scalars and the hyperparameters, checked in this order.
struct ApplyScalars {
  const RuleInfo* rule = nullptr;
  std::vector<double> hyper;  // in the rule's hyper_names order
  int64_t step = 1;
  double learning_rate = 0.0, weight_decay = 0.0, l1 = 0.0, l2 = 0.0, proximal_l1 = 0.0;

  // The engine's Update (the CPU engine's or the CUDA engine's); it points
  // into `hyper`.
  template <class UpdateT> UpdateT update() const {
    UpdateT u;
    u.hyper = hyper.data();
    u.step = StepArgs{step, learning_rate};
    u.decay = weight_decay * learning_rate;
    u.l1 = l1;
    u.l2 = l2;
    u.proximal_l1 = proximal_l1;
    return u;
  }
};

inline ApplyScalars checked_scalars(const std::string& rule_name, py::dict hyper_d, int64_t step,
                                    py::handle lr_h, py::handle weight_decay_h, py::handle l1_h,
                                    py::handle l2_h, py::handle proximal_l1_h) {
  ApplyScalars s;
  s.rule = find_rule(rule_name);
  if (s.rule == nullptr) throw py::value_error("unknown rule '" + rule_name + "'");
  const RuleInfo& rule = *s.rule;

  // Scalars first: they are cheap and name themselves.
  const double lr = finite_number(lr_h, "learning_rate");
  if (lr < 0.0) throw py::value_error("learning_rate must be >= 0, got " + std::to_string(lr));
  if (rule.needs_positive_learning_rate && lr <= 0.0)
    throw py::value_error("learning_rate must be > 0 for " + rule.name);
  const double wd = finite_number(weight_decay_h, "weight_decay");
  if (wd < 0.0) throw py::value_error("weight_decay must be >= 0, got " + std::to_string(wd));
  s.learning_rate = lr;
  s.weight_decay = wd;
  s.l1 = nonnegative_number(l1_h, "l1");
  s.l2 = nonnegative_number(l2_h, "l2");
  s.proximal_l1 = nonnegative_number(proximal_l1_h, "proximal_l1");
  if (step < 1) throw py::value_error("step must be >= 1, got " + std::to_string(step));
  s.step = step;

  for (const auto& name : rule.hyper_names) {
    if (!hyper_d.contains(name))
      throw py::value_error("missing hyperparameter '" + name + "' for " + rule.name);
    s.hyper.push_back(finite_number(hyper_d[name.c_str()], name));
  }
  for (auto item : hyper_d) {
    const auto key = py::str(item.first).cast<std::string>();
    if (std::find(rule.hyper_names.begin(), rule.hyper_names.end(), key) == rule.hyper_names.end())
      throw py::value_error("unknown hyperparameter '" + key + "' for " + rule.name);
  }
  if (const char* err = rule.validate(s.hyper.data())) throw py::value_error(err);
  return s;
}

// apply's lists: params, grads and the rule's state lists, one array per
// param in each (the arrays themselves are the adapter's to check).
struct ApplyLists {
  py::sequence params, grads;
  std::vector<py::sequence> states;  // in the rule's state_names order
};

inline ApplyLists checked_lists(const RuleInfo& rule, py::handle params_h, py::handle grads_h,
                                py::handle states_h) {
  ApplyLists l;
  l.params = as_list(params_h, "params");
  l.grads = as_list(grads_h, "grads");
  const py::sequence states = as_list(states_h, "states");
  const size_t n = l.params.size();
  if (l.grads.size() != n)
    throw py::value_error("grads has " + std::to_string(l.grads.size()) + " tensors but params has " +
                          std::to_string(n));
  const size_t num_states = rule.state_names.size();
  if (states.size() != num_states)
    throw py::value_error(rule.name + " takes " + std::to_string(num_states) + " state lists (" +
                          std::to_string(states.size()) + " given)");
  for (size_t k = 0; k < num_states; ++k) {
    const std::string& sname = rule.state_names[k];
    l.states.push_back(as_list(states[k], sname));
    if (l.states.back().size() != n)
      throw py::value_error(sname + " has " + std::to_string(l.states.back().size()) +
                            " tensors but params has " + std::to_string(n));
  }
  return l;
}

// Dropout's rate: in [0, 1).
inline double checked_rate(py::handle rate_h) {
  const double rate = finite_number(rate_h, "rate");
  if (!(rate >= 0.0 && rate < 1.0))
    throw py::value_error("rate must be in [0, 1), got " + std::to_string(rate));
  return rate;
}

// Dropout's noise shape, right-aligned against x's shape and padded with 1s;
// every entry must be 1 or x's size there.
inline NoiseBroadcast checked_noise(const std::vector<int64_t>& x_shape,
                                    const std::optional<std::vector<int64_t>>& noise) {
  if (!noise) return make_noise_broadcast(x_shape, x_shape);
  const std::vector<int64_t>& given = *noise;
  bool ok = given.size() <= x_shape.size();
  std::vector<int64_t> padded(x_shape.size(), 1);
  for (size_t d = 0; ok && d < given.size(); ++d) {
    const size_t xd = x_shape.size() - given.size() + d;
    ok = given[d] == 1 || given[d] == x_shape[xd];
    padded[xd] = given[d];
  }
  if (!ok)
    throw py::value_error("noise_shape " + shape_text(given) + " does not broadcast to x's shape " +
                          shape_text(x_shape) + ": each entry must be 1 or x's size there");
  return make_noise_broadcast(x_shape, padded);
}

// The packed mask's length in bytes: one bit per noise element.
inline int64_t mask_bytes(const NoiseBroadcast& nb) { return (nb.noise_size + 7) / 8; }

}  // namespace fusedopt::bindings
