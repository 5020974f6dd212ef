#include "fusedopt/c_api.h"

#include "dropout_ops.h"
#include "engine.h"
#include "regularizer_ops.h"

using namespace fusedopt;

namespace {
const RuleInfo* rule_at(int rule) {
  const auto& table = rule_table();
  return (rule >= 0 && size_t(rule) < table.size()) ? &table[size_t(rule)] : nullptr;
}
DType dtype_of(int dtype) { return dtype == FUSEDOPT_FLOAT64 ? DType::kFloat64 : DType::kFloat32; }

RegTensor reg_tensor(const void* w, const void* other, void* out, int64_t size) {
  RegTensor t;
  t.w = w;
  t.other = other;
  t.out = out;
  t.size = size;
  return t;
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
  fusedopt_apply_regularized(rule, dtype, tensors, n, hyper, step, learning_rate, decay, 0.0, 0.0,
                             0.0);
}

void fusedopt_apply_regularized(int rule, int dtype, const fusedopt_tensor* tensors, int64_t n,
                                const double* hyper, int64_t step, double learning_rate,
                                double decay, double l1, double l2, double proximal_l1) {
  Batch batch;
  batch.dtype = dtype_of(dtype);
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
  update.l1 = l1;
  update.l2 = l2;
  update.proximal_l1 = proximal_l1;
  apply(rule, batch, update);
}

void fusedopt_regularizer_sums(int dtype, const void* w, const void* w0, int64_t size,
                               double* sum_abs, double* sum_squares) {
  std::vector<double> abs_sums, square_sums;
  regularizer_sums(dtype_of(dtype), {reg_tensor(w, w0, nullptr, size)}, &abs_sums, &square_sums);
  *sum_abs = abs_sums[0];
  *sum_squares = square_sums[0];
}

void fusedopt_l1l2_gradient(int dtype, const void* w, void* out, int64_t size, double l1,
                            double l2) {
  l1l2_gradient(dtype_of(dtype), {reg_tensor(w, nullptr, out, size)}, l1, l2);
}

void fusedopt_l2sp_gradient(int dtype, const void* w, const void* w0, void* out, int64_t size,
                            double alpha) {
  l2sp_gradient(dtype_of(dtype), {reg_tensor(w, w0, out, size)}, alpha, alpha);
}

const char* fusedopt_dropout(int dtype, const void* in, void* out, const int64_t* x_shape,
                             const int64_t* noise_shape, int rank, double rate, uint64_t seed0,
                             uint64_t seed1, const uint8_t* mask_in, uint8_t* mask_out) {
  if (!(rate >= 0.0 && rate < 1.0)) return "rate must be in [0, 1)";
  const std::vector<int64_t> x_dims(x_shape, x_shape + rank), noise_dims(noise_shape, noise_shape + rank);
  int64_t size = 1;
  for (int d = 0; d < rank; ++d) {
    if (x_dims[size_t(d)] < 0 || !(noise_dims[size_t(d)] == 1 || noise_dims[size_t(d)] == x_dims[size_t(d)]))
      return "noise_shape does not broadcast to x's shape: each entry must be 1 or x's size there";
    size *= x_dims[size_t(d)];
  }
  const dropout::Stream stream = dropout::stream_from_seed(seed0, seed1);
  DropoutCall call;
  call.dtype = dtype_of(dtype);
  call.in = in;
  call.out = out;
  call.size = size;
  call.rate = rate;
  call.noise = make_noise_broadcast(x_dims, noise_dims);
  call.stream = mask_in ? nullptr : &stream;
  call.mask_in = mask_in;
  call.mask_out = mask_out;
  run_dropout(call);
  return nullptr;
}

}  // extern "C"
