#include "fusedopt/c_api.h"

#include "engine.h"

using namespace fusedopt;

namespace {
const RuleInfo* rule_at(int rule) {
  const auto& table = rule_table();
  return (rule >= 0 && size_t(rule) < table.size()) ? &table[size_t(rule)] : nullptr;
}
}  // namespace

extern "C" {

int fusedopt_rule_id(const char* name) {
  const RuleInfo* r = find_rule(name);
  return r ? r->id : -1;
}
int fusedopt_rule_num_states(int rule) {
  const RuleInfo* r = rule_at(rule);
  return r ? int(r->state_names.size()) : -1;
}
int fusedopt_rule_num_hyper(int rule) {
  const RuleInfo* r = rule_at(rule);
  return r ? int(r->hyper_names.size()) : -1;
}
int fusedopt_rule_factored_states(int rule) {
  const RuleInfo* r = rule_at(rule);
  return r ? int(r->factored_states) : 0;
}
int fusedopt_rule_needs_positive_learning_rate(int rule) {
  const RuleInfo* r = rule_at(rule);
  return r ? int(r->needs_positive_learning_rate) : 0;
}
const char* fusedopt_rule_validate(int rule, const double* hyper) {
  const RuleInfo* r = rule_at(rule);
  return r ? r->validate(hyper) : "unknown rule";
}

void fusedopt_apply(int rule, int dtype, const fusedopt_tensor* tensors, int64_t n,
                    const double* hyper, int64_t step, double learning_rate, double decay) {
  Batch batch;
  batch.dtype = dtype == FUSEDOPT_FLOAT64 ? DType::kFloat64 : DType::kFloat32;
  batch.tensors.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) {
    const fusedopt_tensor& in = tensors[i];
    TensorRef& t = batch.tensors[size_t(i)];
    t.param = in.param;
    t.grad = in.grad;
    for (int k = 0; k < kMaxStates; ++k) t.state[k] = in.state[k];
    t.size = in.size;
    t.batch = in.batch;
    t.rows = in.rows;
    t.cols = in.cols;
    t.factored = in.factored != 0;
  }
  Update update;
  update.hyper = hyper;
  update.step = StepArgs{step, learning_rate};
  update.decay = decay;
  apply(rule, batch, update);
}

}  // extern "C"
