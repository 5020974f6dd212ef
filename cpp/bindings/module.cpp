// pybind11 adapter: convert and validate every argument, then release the GIL
// and call the engine. Nothing is written unless the whole call is valid.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/numpy.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../src/engine.h"
#include "fusedopt/rules.h"

namespace py = pybind11;
using namespace fusedopt;

namespace {

std::string label(const std::string& arg, size_t i) { return arg + "[" + std::to_string(i) + "]"; }

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += std::to_string(a.shape(d)) + (a.ndim() == 1 ? "," : d + 1 < a.ndim() ? ", " : "");
  return s + ")";
}

std::vector<py::ssize_t> shape_of(const py::array& a) {
  return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

py::sequence as_list(py::handle h, const std::string& arg) {
  if (!py::isinstance<py::list>(h) && !py::isinstance<py::tuple>(h))
    throw py::type_error(arg + " must be a list of arrays, got " +
                         std::string(py::str(py::type::of(h).attr("__name__"))));
  return py::reinterpret_borrow<py::sequence>(h);
}

struct Checked {
  py::array array;
  std::string name;
};

py::array as_array(py::handle h, const std::string& name) {
  if (!py::isinstance<py::array>(h))
    throw py::type_error(name + " must be a numpy.ndarray (or a CPU tensor with DLPack), got " +
                         std::string(py::str(py::type::of(h).attr("__name__"))));
  return py::reinterpret_borrow<py::array>(h);
}

void require_layout(const py::array& a, const std::string& name, bool writable) {
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(name + " must be C-contiguous");
  if (writable && !a.writeable()) throw py::value_error(name + " is read-only");
}

void require_dtype(const py::array& a, const py::dtype& want, const std::string& name,
                   const std::string& reference) {
  if (!a.dtype().is(want) && !a.dtype().equal(want))
    throw py::type_error(name + " has dtype " + std::string(py::str(a.dtype())) + " but " +
                         reference + " has dtype " + std::string(py::str(want)));
}

void require_shape(const py::array& a, const std::vector<py::ssize_t>& want, const std::string& name,
                   const std::string& what) {
  if (shape_of(a) != want) {
    std::string w = "(";
    for (size_t d = 0; d < want.size(); ++d) w += std::to_string(want[d]) + (want.size() == 1 ? "," : d + 1 < want.size() ? ", " : "");
    throw py::value_error(name + " has shape " + shape_str(a) + " but " + what + " " + w + ")");
  }
}

double finite_number(py::handle h, const std::string& name) {
  if (!py::isinstance<py::float_>(h) && !py::isinstance<py::int_>(h) &&
      !py::hasattr(h, "__float__"))
    throw py::type_error(name + " must be a number, got " +
                         std::string(py::str(py::type::of(h).attr("__name__"))));
  if (py::isinstance<py::bool_>(h)) return h.cast<bool>() ? 1.0 : 0.0;
  const double x = py::float_(py::reinterpret_borrow<py::object>(h)).cast<double>();
  if (!std::isfinite(x)) throw py::value_error(name + " must be finite, got " + std::to_string(x));
  return x;
}

// No output buffer may overlap any other buffer of the call.
struct Span {
  uintptr_t begin, end;
  std::string name;
};

void require_no_aliasing(std::vector<Span> outputs, const std::vector<Span>& inputs) {
  std::sort(outputs.begin(), outputs.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < outputs.size(); ++i)
    if (outputs[i].begin < outputs[i - 1].end)
      throw py::value_error(outputs[i].name + " shares memory with " + outputs[i - 1].name);
  for (const Span& in : inputs) {
    auto it = std::upper_bound(outputs.begin(), outputs.end(), in.begin,
                               [](uintptr_t x, const Span& s) { return x < s.end; });
    if (it != outputs.end() && it->begin < in.end)
      throw py::value_error(in.name + " shares memory with " + it->name);
  }
}

Span span_of(const py::array& a, const std::string& name) {
  const auto b = reinterpret_cast<uintptr_t>(a.data());
  return Span{b, b + uintptr_t(a.nbytes()), name};
}

// Adafactor's row/column statistics: shape[:-1] and shape[:-2] + shape[-1:]
// for rank >= 2; a 0-d placeholder otherwise.
std::vector<py::ssize_t> factored_shape(const std::vector<py::ssize_t>& shape, int which) {
  if (shape.size() < 2) return {};
  std::vector<py::ssize_t> out(shape.begin(), shape.end() - 2);
  out.push_back(which == 0 ? shape[shape.size() - 2] : shape.back());
  return out;
}

void apply_py(const std::string& rule_name, py::handle params_h, py::handle grads_h,
              py::handle states_h, py::dict hyper_d, int64_t step, py::handle lr_h,
              py::handle weight_decay_h, bool dry_run) {
  const RuleInfo* rule = find_rule(rule_name);
  if (rule == nullptr) throw py::value_error("unknown rule '" + rule_name + "'");

  // Scalars first: they are cheap and name themselves.
  const double lr = finite_number(lr_h, "learning_rate");
  if (lr < 0.0) throw py::value_error("learning_rate must be >= 0, got " + std::to_string(lr));
  if (rule->needs_positive_learning_rate && lr <= 0.0)
    throw py::value_error("learning_rate must be > 0 for " + rule->name);
  const double wd = finite_number(weight_decay_h, "weight_decay");
  if (wd < 0.0) throw py::value_error("weight_decay must be >= 0, got " + std::to_string(wd));
  if (step < 1) throw py::value_error("step must be >= 1, got " + std::to_string(step));

  std::vector<double> hyper;
  for (const auto& name : rule->hyper_names) {
    if (!hyper_d.contains(name)) throw py::value_error("missing hyperparameter '" + name + "' for " + rule->name);
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
    throw py::value_error("grads has " + std::to_string(grads.size()) + " tensors but params has " + std::to_string(n));
  const size_t num_states = rule->state_names.size();
  if (states.size() != num_states)
    throw py::value_error(rule->name + " takes " + std::to_string(num_states) + " state lists (" +
                          std::to_string(states.size()) + " given)");
  std::vector<py::sequence> state_lists;
  for (size_t k = 0; k < num_states; ++k) {
    const std::string sname = rule->state_names[k];
    state_lists.push_back(as_list(states[k], sname));
    if (state_lists.back().size() != n)
      throw py::value_error(sname + " has " + std::to_string(state_lists.back().size()) +
                            " tensors but params has " + std::to_string(n));
  }

  Batch batch;
  std::vector<py::array> keep_alive;
  std::vector<Span> outputs, inputs;
  py::dtype dtype = py::dtype::of<float>();
  for (size_t i = 0; i < n; ++i) {
    const std::string pname = label("params", i);
    py::array p = as_array(params[i], pname);
    if (i == 0) {
      dtype = p.dtype();
      if (!dtype.equal(py::dtype::of<float>()) && !dtype.equal(py::dtype::of<double>()))
        throw py::type_error("params[0] has dtype " + std::string(py::str(dtype)) +
                             "; supported dtypes are float32 and float64");
      batch.dtype = dtype.equal(py::dtype::of<double>()) ? DType::kFloat64 : DType::kFloat32;
    } else {
      require_dtype(p, dtype, pname, "params[0]");
    }
    require_layout(p, pname, /*writable=*/true);
    const auto shape = shape_of(p);

    const std::string gname = label("grads", i);
    py::array g = as_array(grads[i], gname);
    require_dtype(g, dtype, gname, pname);
    require_shape(g, shape, gname, pname + " has shape");
    require_layout(g, gname, /*writable=*/false);

    TensorRef t;
    t.param = p.mutable_data();
    t.grad = g.data();
    t.size = int64_t(p.size());
    outputs.push_back(span_of(p, pname));
    inputs.push_back(span_of(g, gname));
    if (rule->factored_states && shape.size() >= 2) {
      t.factored = true;
      t.cols = shape.back();
      t.rows = shape[shape.size() - 2];
      t.batch = t.cols * t.rows == 0 ? 0 : t.size / (t.rows * t.cols);
    }
    for (size_t k = 0; k < num_states; ++k) {
      const std::string sname = label(rule->state_names[k], i);
      py::array s = as_array(state_lists[k][i], sname);
      require_dtype(s, dtype, sname, pname);
      if (rule->factored_states && k < 2)
        require_shape(s, factored_shape(shape, int(k)), sname, "it must have shape");
      else
        require_shape(s, shape, sname, pname + " has shape");
      require_layout(s, sname, /*writable=*/true);
      t.state[k] = s.mutable_data();
      outputs.push_back(span_of(s, sname));
      keep_alive.push_back(std::move(s));
    }
    keep_alive.push_back(std::move(p));
    keep_alive.push_back(std::move(g));
    batch.tensors.push_back(t);
  }
  outputs.erase(std::remove_if(outputs.begin(), outputs.end(), [](const Span& s) { return s.end == s.begin; }), outputs.end());
  inputs.erase(std::remove_if(inputs.begin(), inputs.end(), [](const Span& s) { return s.end == s.begin; }), inputs.end());
  require_no_aliasing(outputs, inputs);

  if (dry_run) return;
  Update update;
  update.hyper = hyper.data();
  update.step = StepArgs{step, lr};
  update.decay = wd * lr;
  py::gil_scoped_release release;
  fusedopt::apply(rule->id, batch, update);
}

// outputs[k][i] <- outputs[k][i] + inputs[i], for every slot k and tensor i.
void stream_roofline_py(py::handle outputs_h, py::handle inputs_h) {
  const py::sequence inputs = as_list(inputs_h, "inputs");
  const py::sequence output_lists = as_list(outputs_h, "outputs");
  const size_t n = inputs.size();
  std::vector<std::vector<void*>> outs(n);
  std::vector<const void*> ins;
  std::vector<int64_t> sizes;
  std::vector<py::array> keep_alive;
  std::vector<Span> out_spans, in_spans;
  py::dtype dtype = py::dtype::of<float>();
  for (size_t i = 0; i < n; ++i) {
    const std::string iname = label("inputs", i);
    py::array in = as_array(inputs[i], iname);
    if (i == 0) {
      dtype = in.dtype();
      if (!dtype.equal(py::dtype::of<float>()) && !dtype.equal(py::dtype::of<double>()))
        throw py::type_error("inputs[0] must be float32 or float64");
    }
    require_dtype(in, dtype, iname, "inputs[0]");
    require_layout(in, iname, false);
    ins.push_back(in.data());
    sizes.push_back(int64_t(in.size()));
    in_spans.push_back(span_of(in, iname));
    keep_alive.push_back(in);
  }
  for (size_t k = 0; k < output_lists.size(); ++k) {
    const py::sequence outs_k = as_list(output_lists[k], label("outputs", k));
    if (outs_k.size() != n) throw py::value_error(label("outputs", k) + " must have one array per input");
    for (size_t i = 0; i < n; ++i) {
      const std::string oname = label("outputs", k) + "[" + std::to_string(i) + "]";
      py::array o = as_array(outs_k[i], oname);
      require_dtype(o, dtype, oname, "inputs[0]");
      require_shape(o, shape_of(py::reinterpret_borrow<py::array>(inputs[i])), oname, "inputs has shape");
      require_layout(o, oname, true);
      outs[i].push_back(o.mutable_data());
      out_spans.push_back(span_of(o, oname));
      keep_alive.push_back(o);
    }
  }
  require_no_aliasing(out_spans, in_spans);
  const DType dt = dtype.equal(py::dtype::of<double>()) ? DType::kFloat64 : DType::kFloat32;
  py::gil_scoped_release release;
  fusedopt::stream_roofline(dt, outs, ins, sizes);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fusedopt's C++ engine (private: use the fusedopt package).";
  m.def("apply", &apply_py, py::arg("rule"), py::arg("params"), py::arg("grads"),
        py::arg("states"), py::arg("hyper"), py::arg("step"), py::arg("learning_rate"),
        py::arg("weight_decay") = 0.0, py::arg("dry_run") = false,
        "Apply one step of `rule` in place to every tensor. Validates everything first;\n"
        "with dry_run=True only validates. Weight decay is decoupled: p -= p * weight_decay\n"
        "* learning_rate before the rule.");
  m.def("rules", [] {
    py::dict out;
    for (const auto& r : rule_table()) {
      py::dict d;
      d["hyper"] = r.hyper_names;
      d["states"] = r.state_names;
      out[py::str(r.name)] = d;
    }
    return out;
  }, "Every rule's hyperparameter names and state (slot) names, in order.");
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error("num_threads must be >= 1, got " + std::to_string(n));
    fusedopt::set_num_threads(n);
  }, py::arg("num_threads"));
  m.def("get_num_threads", &fusedopt::get_num_threads);
  m.def("active_isa", &fusedopt::active_isa);
  m.def("available_isas", &fusedopt::available_isas);
  m.def("set_isa", [](const std::string& name) {
    try {
      fusedopt::set_isa(name);
    } catch (const std::invalid_argument& e) {
      throw py::value_error(e.what());
    }
  }, py::arg("isa"));
  m.def("nadam_next_u_product", &rules::Nadam::next_u_product, py::arg("previous"),
        py::arg("beta_1"), py::arg("step"),
        "Nadam's running product of momentum-schedule factors after `step`.");
  m.def("stream_roofline", &stream_roofline_py, py::arg("outputs"), py::arg("inputs"),
        "Memory roofline for benchmarks: outputs[k][i] += inputs[i] with the engine's\n"
        "chunking and threads (reads len(outputs)+1 arrays, writes len(outputs)).");
  m.attr("chunk_elements") = kChunkElements;
#if defined(__clang__)
  m.attr("compiler") = "clang " __clang_version__;
#elif defined(__GNUC__)
  m.attr("compiler") = "gcc " __VERSION__;
#else
  m.attr("compiler") = "unknown";
#endif
}
