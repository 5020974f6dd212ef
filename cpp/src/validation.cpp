#include "validation.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace fusedopt {

namespace {
std::string tensor_label(const char* what, size_t i) {
  return std::string("tensors[") + std::to_string(i) + "]." + what;
}
std::string number(double x) {
  std::string s = std::to_string(x);
  return std::isfinite(x) ? s : (std::isnan(x) ? "nan" : (x > 0 ? "inf" : "-inf"));
}
std::string nonnegative(double x, const char* name) {
  if (!std::isfinite(x) || x < 0.0) return std::string(name) + " must be finite and >= 0, got " + number(x);
  return "";
}
}  // namespace

int64_t element_size(DType dtype) { return dtype == DType::kFloat64 ? 8 : 4; }

std::string check_buffer(const void* p, int64_t elements, int64_t element_size, const std::string& name) {
  if (elements < 0) return name + ": size must be >= 0, got " + std::to_string(elements);
  if (elements > std::numeric_limits<int64_t>::max() / 8) return name + ": size " + std::to_string(elements) + " is too large";
  if (elements == 0) return "";
  if (p == nullptr) return name + " is NULL";
  if (reinterpret_cast<uintptr_t>(p) % uintptr_t(element_size) != 0)
    return name + " is not aligned to its element size (" + std::to_string(element_size) + " bytes)";
  return "";
}

std::string check_no_overlap(std::vector<ByteSpan> outputs, const std::vector<ByteSpan>& inputs) {
  std::sort(outputs.begin(), outputs.end(), [](const ByteSpan& a, const ByteSpan& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < outputs.size(); ++i)
    if (outputs[i].begin < outputs[i - 1].end) return outputs[i].name + " shares memory with " + outputs[i - 1].name;
  for (const ByteSpan& in : inputs) {
    auto it = std::upper_bound(outputs.begin(), outputs.end(), in.begin,
                               [](uintptr_t x, const ByteSpan& s) { return x < s.end; });
    if (it != outputs.end() && it->begin < in.end) return in.name + " shares memory with " + it->name;
  }
  return "";
}

std::vector<ByteSpan> nonempty(std::vector<ByteSpan> spans) {
  spans.erase(std::remove_if(spans.begin(), spans.end(), [](const ByteSpan& s) { return s.end == s.begin; }),
              spans.end());
  return spans;
}

std::string validate_update(int rule_id, const Update& update) {
  const auto& table = rule_table();
  if (rule_id < 0 || size_t(rule_id) >= table.size())
    return "rule must be a rule id in 0.." + std::to_string(table.size() - 1) + ", got " + std::to_string(rule_id);
  const RuleInfo& rule = table[size_t(rule_id)];
  if (update.step.step < 1) return "step must be >= 1, got " + std::to_string(update.step.step);
  const double lr = update.step.learning_rate;
  if (auto err = nonnegative(lr, "learning_rate"); !err.empty()) return err;
  if (rule.needs_positive_learning_rate && lr <= 0.0) return "learning_rate must be > 0 for " + rule.name;
  for (auto [value, name] : {std::pair<double, const char*>{update.decay, "decay"}, {update.l1, "l1"},
                             {update.l2, "l2"}, {update.proximal_l1, "proximal_l1"}})
    if (auto err = nonnegative(value, name); !err.empty()) return err;
  if (!rule.hyper_names.empty()) {
    if (update.hyper == nullptr) return "hyper is NULL (" + rule.name + " has hyperparameters)";
    for (size_t k = 0; k < rule.hyper_names.size(); ++k)
      if (!std::isfinite(update.hyper[k]))
        return rule.hyper_names[k] + " must be finite, got " + number(update.hyper[k]);
    if (const char* err = rule.validate(update.hyper)) return err;
  }
  return "";
}

std::string validate_apply(int rule_id, const Batch& batch, const Update& update) {
  if (auto err = validate_update(rule_id, update); !err.empty()) return err;
  const RuleInfo& rule = rule_table()[size_t(rule_id)];

  const int64_t es = element_size(batch.dtype);
  const size_t num_states = rule.state_names.size();
  std::vector<ByteSpan> outputs, inputs;
  for (size_t i = 0; i < batch.tensors.size(); ++i) {
    const TensorRef& t = batch.tensors[i];
    if (auto err = check_buffer(t.param, t.size, es, tensor_label("param", i)); !err.empty()) return err;
    if (auto err = check_buffer(t.grad, t.size, es, tensor_label("grad", i)); !err.empty()) return err;
    int64_t state_sizes[kMaxStates] = {t.size, t.size, t.size, t.size};
    if (rule.factored_states) {
      state_sizes[0] = state_sizes[1] = 0;  // unused placeholders unless factored
      if (t.factored) {
        // size == batch * rows * cols, checked without overflow; an empty
        // tensor is never read.
        const bool consistent =
            t.size == 0 || (t.rows > 0 && t.cols > 0 && t.cols <= t.size / t.rows &&
                            t.size % (t.rows * t.cols) == 0 && t.batch == t.size / (t.rows * t.cols));
        if (!consistent)
          return tensor_label("batch * rows * cols", i) + " must equal its size " + std::to_string(t.size);
        if (t.size == 0) continue;
        state_sizes[0] = t.batch * t.rows;
        state_sizes[1] = t.batch * t.cols;
      }
    } else if (t.factored) {
      return tensor_label("factored", i) + " is set but " + rule.name + " has no factored states";
    }
    outputs.push_back(byte_span(t.param, t.size, es, tensor_label("param", i)));
    inputs.push_back(byte_span(t.grad, t.size, es, tensor_label("grad", i)));
    for (size_t k = 0; k < num_states; ++k) {
      const std::string name = tensor_label("state", i) + "[" + std::to_string(k) + "] (" + rule.state_names[k] + ")";
      if (auto err = check_buffer(t.state[k], state_sizes[k], es, name); !err.empty()) return err;
      outputs.push_back(byte_span(t.state[k], state_sizes[k], es, name));
    }
  }
  return check_no_overlap(nonempty(std::move(outputs)), nonempty(inputs));
}

}  // namespace fusedopt
