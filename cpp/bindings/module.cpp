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
#include "checks.h"
#include "fusedopt/rules.h"

namespace py = pybind11;
using namespace fusedopt;
using namespace fusedopt::bindings;

namespace {

void apply_py(const std::string& rule_name, py::handle params_h, py::handle grads_h,
              py::handle states_h, py::dict hyper_d, int64_t step, py::handle lr_h,
              py::handle weight_decay_h, bool dry_run, py::handle l1_h, py::handle l2_h,
              py::handle proximal_l1_h) {
  const ApplyScalars scalars = checked_scalars(rule_name, hyper_d, step, lr_h, weight_decay_h,
                                               l1_h, l2_h, proximal_l1_h);
  const RuleInfo* rule = scalars.rule;
  const ApplyLists lists = checked_lists(*rule, params_h, grads_h, states_h);
  const py::sequence& params = lists.params;
  const py::sequence& grads = lists.grads;
  const std::vector<py::sequence>& state_lists = lists.states;
  const size_t n = params.size();
  const size_t num_states = state_lists.size();

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
    set_layout(&t, shape, rule->factored_states);
    outputs.push_back(span_of(p, pname));
    inputs.push_back(span_of(g, gname));
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
  require_no_aliasing(nonempty(std::move(outputs)), nonempty(inputs));

  if (dry_run) return;
  const Update update = scalars.update<Update>();
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

namespace fusedopt::bindings {
void register_regularizers(py::module_& m);  // regularizer_bindings.cpp
void register_dropout(py::module_& m);       // dropout_bindings.cpp
void register_cuda(py::module_& m);          // cuda_bindings.cpp (stubs without CUDA)
}  // namespace fusedopt::bindings

PYBIND11_MODULE(_core, m) {
  m.doc() = "fusedopt's C++ engine (private: use the fusedopt package).";
  register_regularizers(m);
  register_dropout(m);
  register_cuda(m);
  m.def("apply", &apply_py, py::arg("rule"), py::arg("params"), py::arg("grads"),
        py::arg("states"), py::arg("hyper"), py::arg("step"), py::arg("learning_rate"),
        py::arg("weight_decay") = 0.0, py::arg("dry_run") = false, py::arg("l1") = 0.0,
        py::arg("l2") = 0.0, py::arg("proximal_l1") = 0.0,
        "Apply one step of `rule` in place to every tensor. Validates everything first;\n"
        "with dry_run=True only validates. Weight decay is decoupled: p -= p * weight_decay\n"
        "* learning_rate before the rule. Regularization in the same pass: g += l1 * sign(p)\n"
        "+ 2 * l2 * p (from p before the decay), and after the rule p <- sign(p) *\n"
        "max(|p| - learning_rate * proximal_l1, 0).");
  m.def("rules", [] {
    py::dict out;
    for (const auto& r : rule_table()) {
      py::dict d;
      d["hyper"] = r.hyper_names;
      d["states"] = r.state_names;
      py::list defaults;  // None: no default (the caller passes it)
      for (double v : r.hyper_defaults) defaults.append(std::isnan(v) ? py::none() : py::object(py::float_(v)));
      d["defaults"] = defaults;
      out[py::str(r.name)] = d;
    }
    return out;
  }, "Every rule, in id order: its hyperparameter names and Keras defaults (None: no\n"
     "default) and its state (slot) names, in the engine's order.");
  m.def("set_num_threads", [](int n) {
    py::gil_scoped_release release;  // waits for a running step
    fusedopt::set_num_threads(n);   // std::invalid_argument -> ValueError, runtime_error -> RuntimeError
  }, py::arg("num_threads"));
  m.attr("max_threads") = kMaxThreads;
  m.def("config_warning", &fusedopt::config_warning,
        "Why FUSEDOPT_NUM_THREADS / OMP_NUM_THREADS was ignored, or ''.");
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
