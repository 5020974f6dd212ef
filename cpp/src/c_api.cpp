// The C API: every call checks its arguments (validation.h) and catches every
// exception, so that nothing a caller passes can crash the process.
#include "fusedopt/c_api.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>

#include "dropout_ops.h"
#include "engine.h"
#include "regularizer_ops.h"
#include "validation.h"

using namespace fusedopt;

namespace {

thread_local std::string last_error;

int fail(int code, std::string message) {
  last_error = std::move(message);
  return code;
}

// Runs `body` (which returns "" or an argument error), mapping errors and
// exceptions to status codes.
template <class Body>
int guarded(Body&& body) {
  try {
    std::string err = body();
    if (!err.empty()) return fail(FUSEDOPT_ERROR_INVALID_ARGUMENT, std::move(err));
    last_error.clear();
    return FUSEDOPT_OK;
  } catch (const std::bad_alloc&) {
    return fail(FUSEDOPT_ERROR_RUNTIME, "out of memory");
  } catch (const std::exception& e) {
    return fail(FUSEDOPT_ERROR_RUNTIME, e.what());
  } catch (...) {
    return fail(FUSEDOPT_ERROR_RUNTIME, "unknown error");
  }
}

const RuleInfo* rule_at(int rule) {
  const auto& table = rule_table();
  return (rule >= 0 && size_t(rule) < table.size()) ? &table[size_t(rule)] : nullptr;
}

std::string dtype_of(int code, DType* out) {
  if (code == FUSEDOPT_FLOAT32) *out = DType::kFloat32;
  else if (code == FUSEDOPT_FLOAT64) *out = DType::kFloat64;
  else return "dtype must be FUSEDOPT_FLOAT32 (0) or FUSEDOPT_FLOAT64 (1), got " + std::to_string(code);
  return "";
}

std::string strength(double x, const char* name) {
  if (!std::isfinite(x) || x < 0.0) return std::string(name) + " must be finite and >= 0";
  return "";
}

// Same pointer (in place) is fine for elementwise kernels; a partial overlap is not.
std::string no_partial_overlap(const void* out, const void* in, int64_t bytes, const char* out_name,
                               const char* in_name) {
  if (out == in || in == nullptr || bytes == 0) return "";
  const auto o = reinterpret_cast<uintptr_t>(out), i = reinterpret_cast<uintptr_t>(in);
  if (o < i + uintptr_t(bytes) && i < o + uintptr_t(bytes))
    return std::string(out_name) + " partially overlaps " + in_name;
  return "";
}

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

const char* fusedopt_last_error(void) { return last_error.c_str(); }

const char* fusedopt_config_warning(void) {
  static thread_local std::string warning;
  try {
    warning = config_warning();
  } catch (...) {
    warning.clear();
  }
  return warning.c_str();
}

int fusedopt_num_rules(void) { return int(rule_table().size()); }
const char* fusedopt_rule_name(int rule) {
  const RuleInfo* r = rule_at(rule);
  return r ? r->name.c_str() : nullptr;
}
int fusedopt_rule_id(const char* name) {
  if (name == nullptr) return -1;
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
  return r ? int(r->factored_states) : -1;
}
int fusedopt_rule_needs_positive_learning_rate(int rule) {
  const RuleInfo* r = rule_at(rule);
  return r ? int(r->needs_positive_learning_rate) : -1;
}
const char* fusedopt_rule_hyper_name(int rule, int k) {
  const RuleInfo* r = rule_at(rule);
  return r && k >= 0 && size_t(k) < r->hyper_names.size() ? r->hyper_names[size_t(k)].c_str() : nullptr;
}
const char* fusedopt_rule_state_name(int rule, int k) {
  const RuleInfo* r = rule_at(rule);
  return r && k >= 0 && size_t(k) < r->state_names.size() ? r->state_names[size_t(k)].c_str() : nullptr;
}
double fusedopt_rule_hyper_default(int rule, int k) {
  const RuleInfo* r = rule_at(rule);
  return r && k >= 0 && size_t(k) < r->hyper_defaults.size() ? r->hyper_defaults[size_t(k)] : kRequired;
}
const char* fusedopt_rule_validate(int rule, const double* hyper) {
  const RuleInfo* r = rule_at(rule);
  if (r == nullptr) return "unknown rule";
  if (hyper == nullptr) return r->hyper_names.empty() ? nullptr : "hyper is NULL";
  return r->validate(hyper);
}

int fusedopt_apply(int rule, int dtype, const fusedopt_tensor* tensors, int64_t n,
                   const double* hyper, int64_t step, double learning_rate, double decay) {
  return fusedopt_apply_regularized(rule, dtype, tensors, n, hyper, step, learning_rate, decay, 0.0,
                                    0.0, 0.0);
}

int fusedopt_apply_regularized(int rule, int dtype, const fusedopt_tensor* tensors, int64_t n,
                               const double* hyper, int64_t step, double learning_rate,
                               double decay, double l1, double l2, double proximal_l1) {
  return guarded([&]() -> std::string {
    Batch batch;
    if (auto err = dtype_of(dtype, &batch.dtype); !err.empty()) return err;
    if (n < 0) return "n must be >= 0, got " + std::to_string(n);
    if (n > 0 && tensors == nullptr) return "tensors is NULL";
    batch.tensors.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) {
      copy_tensor_record(tensors[i], &batch.tensors[size_t(i)]);
    }
    Update update;
    update.hyper = hyper;
    update.step = StepArgs{step, learning_rate};
    update.decay = decay;
    update.l1 = l1;
    update.l2 = l2;
    update.proximal_l1 = proximal_l1;
    if (auto err = validate_apply(rule, batch, update); !err.empty()) return err;
    apply(rule, batch, update);
    return "";
  });
}

int fusedopt_regularizer_sums(int dtype, const void* w, const void* w0, int64_t size,
                              double* sum_abs, double* sum_squares) {
  return guarded([&]() -> std::string {
    DType dt;
    if (auto err = dtype_of(dtype, &dt); !err.empty()) return err;
    if (auto err = check_buffer(w, size, element_size(dt), "w"); !err.empty()) return err;
    if (w0 != nullptr)
      if (auto err = check_buffer(w0, size, element_size(dt), "w0"); !err.empty()) return err;
    if (sum_abs == nullptr || sum_squares == nullptr) return "sum_abs and sum_squares must not be NULL";
    std::vector<double> abs_sums, square_sums;
    regularizer_sums(dt, {reg_tensor(w, w0, nullptr, size)}, &abs_sums, &square_sums);
    *sum_abs = abs_sums[0];
    *sum_squares = square_sums[0];
    return "";
  });
}

int fusedopt_l1l2_gradient(int dtype, const void* w, void* out, int64_t size, double l1, double l2) {
  return guarded([&]() -> std::string {
    DType dt;
    if (auto err = dtype_of(dtype, &dt); !err.empty()) return err;
    const int64_t es = element_size(dt);
    if (auto err = check_buffer(w, size, es, "w"); !err.empty()) return err;
    if (auto err = check_buffer(out, size, es, "out"); !err.empty()) return err;
    if (auto err = strength(l1, "l1"); !err.empty()) return err;
    if (auto err = strength(l2, "l2"); !err.empty()) return err;
    if (auto err = no_partial_overlap(out, w, size * es, "out", "w"); !err.empty()) return err;
    l1l2_gradient(dt, {reg_tensor(w, nullptr, out, size)}, l1, l2);
    return "";
  });
}

int fusedopt_l2sp_gradient(int dtype, const void* w, const void* w0, void* out, int64_t size,
                           double alpha) {
  return guarded([&]() -> std::string {
    DType dt;
    if (auto err = dtype_of(dtype, &dt); !err.empty()) return err;
    const int64_t es = element_size(dt);
    if (auto err = check_buffer(w, size, es, "w"); !err.empty()) return err;
    if (w0 != nullptr)
      if (auto err = check_buffer(w0, size, es, "w0"); !err.empty()) return err;
    if (auto err = check_buffer(out, size, es, "out"); !err.empty()) return err;
    if (auto err = strength(alpha, "alpha"); !err.empty()) return err;
    if (auto err = no_partial_overlap(out, w, size * es, "out", "w"); !err.empty()) return err;
    if (auto err = no_partial_overlap(out, w0, size * es, "out", "w0"); !err.empty()) return err;
    l2sp_gradient(dt, {reg_tensor(w, w0, out, size)}, alpha, alpha);
    return "";
  });
}

int fusedopt_dropout(int dtype, const void* in, void* out, const int64_t* x_shape,
                     const int64_t* noise_shape, int rank, double rate, uint64_t seed0,
                     uint64_t seed1, const uint8_t* mask_in, uint8_t* mask_out) {
  return guarded([&]() -> std::string {
    DType dt;
    if (auto err = dtype_of(dtype, &dt); !err.empty()) return err;
    if (!(rate >= 0.0 && rate < 1.0)) return "rate must be in [0, 1)";
    if (rank < 0) return "rank must be >= 0, got " + std::to_string(rank);
    if (rank > 0 && (x_shape == nullptr || noise_shape == nullptr)) return "x_shape and noise_shape must not be NULL";
    const std::vector<int64_t> x_dims(x_shape, x_shape + rank), noise_dims(noise_shape, noise_shape + rank);
    int64_t size = 1, noise_size = 1;
    for (int d = 0; d < rank; ++d) {
      const int64_t xd = x_dims[size_t(d)], nd = noise_dims[size_t(d)];
      if (xd < 0) return "x_shape[" + std::to_string(d) + "] must be >= 0";
      if (!(nd == 1 || nd == xd))
        return "noise_shape does not broadcast to x's shape: each entry must be 1 or x's size there";
      if (xd > 0 && size > std::numeric_limits<int64_t>::max() / 8 / xd) return "x_shape is too large";
      size *= xd;
      noise_size *= nd;
    }
    const int64_t es = element_size(dt);
    if (auto err = check_buffer(in, size, es, "in"); !err.empty()) return err;
    if (auto err = check_buffer(out, size, es, "out"); !err.empty()) return err;
    if (auto err = no_partial_overlap(out, in, size * es, "out", "in"); !err.empty()) return err;
    const int64_t mask_bytes = (noise_size + 7) / 8;
    if (mask_out != nullptr) {
      std::vector<ByteSpan> inputs = {byte_span(mask_in, mask_in ? mask_bytes : 0, 1, "mask_in")};
      if (in != out) inputs.push_back(byte_span(in, size, es, "in"));
      if (auto err = check_no_overlap(
              nonempty({byte_span(out, size, es, "out"), byte_span(mask_out, mask_bytes, 1, "mask_out")}),
              nonempty(inputs));
          !err.empty())
        return err;
    }
    const dropout::Stream stream = dropout::stream_from_seed(seed0, seed1);
    DropoutCall call;
    call.dtype = dt;
    call.in = in;
    call.out = out;
    call.size = size;
    call.rate = rate;
    call.noise = make_noise_broadcast(x_dims, noise_dims);
    call.stream = mask_in ? nullptr : &stream;
    call.mask_in = mask_in;
    call.mask_out = mask_in ? nullptr : mask_out;
    run_dropout(call);
    if (mask_in != nullptr && mask_out != nullptr && mask_bytes > 0) {
      // The bits it used, as c_api.h promises; padding bits 0, as generated masks have.
      std::memcpy(mask_out, mask_in, size_t(mask_bytes));
      if (noise_size % 8 != 0) mask_out[mask_bytes - 1] &= uint8_t((1u << (noise_size % 8)) - 1u);
    }
    return "";
  });
}

}  // extern "C"
