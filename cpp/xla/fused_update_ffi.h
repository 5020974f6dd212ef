// The fused update as an XLA FFI handler: one custom call runs one rule over
// every tensor of a dtype group, in place, through the engine's C API. One
// handler for every rule, registered under the targets "fusedopt_<rule>". It
// is compiled at first use against the FFI headers of the XLA that loads it:
// JAX's (fused_update_ffi.cc, registered by python/fusedopt/keras/_xla_library.py)
// and TensorFlow's (cpp/tf/fused_update_xla.cc, in the op library). Each
// includes this file once, naming the exported handler
// FUSEDOPT_FFI_HANDLER_SYMBOL: two copies built against different headers
// must not share a symbol.
//
// Operands, in order:
//   learning_rate, step, decay   scalars (any float / integer dtype): traced
//                                values under jit;
//   dynamic_hyper                a vector with the hyperparameters that are
//                                traced values (e.g. Nadam's u_product), in
//                                the order of the NaNs in `hyper`;
//   params[n], grads[n], states[S * n]   state k of tensor i at k * n + i.
// Results: params[n], states[S * n], aliased to their operands.
// Attributes: rule (the engine's name), hyper (the rule's hyperparameters in
// its order, f64, NaN where dynamic_hyper gives the value), regularization
// ([l1, l2, proximal_l1], f64).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "fusedopt/c_api.h"
#include "fusedopt/tensor_layout.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {  // internal linkage: nothing but the handler symbol leaves a library

ffi::Error invalid(const std::string& message) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "fusedopt: " + message);
}

// The value of element `i` of a float or integer buffer.
bool element_value(const ffi::AnyBuffer& b, size_t i, double* out) {
  const void* p = b.untyped_data();
  switch (b.element_type()) {
    case ffi::DataType::F32: *out = static_cast<const float*>(p)[i]; return true;
    case ffi::DataType::F64: *out = static_cast<const double*>(p)[i]; return true;
    case ffi::DataType::S32: *out = static_cast<const int32_t*>(p)[i]; return true;
    case ffi::DataType::S64: *out = static_cast<double>(static_cast<const int64_t*>(p)[i]); return true;
    default: return false;
  }
}

ffi::Error scalar(const ffi::AnyBuffer& b, const char* name, double* out) {
  if (b.element_count() != 1 || !element_value(b, 0, out))
    return invalid(std::string(name) + " must be one float or integer value");
  return ffi::Error::Success();
}

std::vector<int64_t> dims_of(const ffi::AnyBuffer& b) {
  const auto d = b.dimensions();
  return std::vector<int64_t>(d.begin(), d.end());
}

ffi::Error FusedUpdate(ffi::AnyBuffer learning_rate, ffi::AnyBuffer step, ffi::AnyBuffer decay,
                       ffi::AnyBuffer dynamic_hyper, ffi::RemainingArgs args, ffi::RemainingRets rets,
                       std::string_view rule_name, ffi::Span<const double> hyper_attr,
                       ffi::Span<const double> regularization) {
  const int rule = fusedopt_rule_id(std::string(rule_name).c_str());
  if (rule < 0) return invalid("no rule named " + std::string(rule_name));
  const size_t num_states = size_t(fusedopt_rule_num_states(rule));
  // args: n params, n grads, S * n states; rets: n params, S * n states.
  const size_t n = args.size() - rets.size();
  if (args.size() < rets.size() || rets.size() != n * (1 + num_states))
    return invalid(std::string(rule_name) + " takes params, grads and " + std::to_string(num_states) +
                   " states per tensor; got " + std::to_string(args.size()) + " tensor operands and " +
                   std::to_string(rets.size()) + " results");

  // Hyperparameters: the attribute's, with the traced ones filled in.
  if (hyper_attr.size() != size_t(fusedopt_rule_num_hyper(rule)))
    return invalid(std::string(rule_name) + " takes " + std::to_string(fusedopt_rule_num_hyper(rule)) +
                   " hyperparameters, got " + std::to_string(hyper_attr.size()));
  std::vector<double> hyper(hyper_attr.begin(), hyper_attr.end());
  size_t filled = 0;
  for (double& h : hyper) {
    if (!std::isnan(h)) continue;
    if (filled >= dynamic_hyper.element_count() || !element_value(dynamic_hyper, filled, &h))
      return invalid("dynamic_hyper must hold a float for each NaN in hyper");
    ++filled;
  }
  if (filled != dynamic_hyper.element_count())
    return invalid("dynamic_hyper has more values than hyper has NaNs");
  if (regularization.size() != 3) return invalid("regularization must be [l1, l2, proximal_l1]");
  double lr = 0, step_value = 0, decay_value = 0;
  if (auto e = scalar(learning_rate, "learning_rate", &lr); e.failure()) return e;
  if (auto e = scalar(step, "step", &step_value); e.failure()) return e;
  if (auto e = scalar(decay, "decay", &decay_value); e.failure()) return e;

  // Buffers: one dtype, the engine's shapes; results hold the operands' values.
  std::vector<ffi::AnyBuffer> in;
  std::vector<void*> out;
  for (size_t i = 0; i < args.size(); ++i) {
    auto b = args.get<ffi::AnyBuffer>(i);
    if (b.has_error()) return b.error();
    in.push_back(*b);
  }
  for (size_t i = 0; i < rets.size(); ++i) {
    auto r = rets.get<ffi::AnyBuffer>(i);
    if (r.has_error()) return r.error();
    out.push_back((*r)->untyped_data());
  }
  const ffi::DataType type = n ? in[0].element_type() : ffi::DataType::F32;
  if (type != ffi::DataType::F32 && type != ffi::DataType::F64)
    return invalid("params must be float32 or float64");
  for (size_t i = 0; i < in.size(); ++i)
    if (in[i].element_type() != type) return invalid("every tensor of one call must have params[0]'s dtype");
  const bool factored = fusedopt_rule_factored_states(rule) != 0;
  std::vector<fusedopt_tensor> tensors(n);
  for (size_t i = 0; i < n; ++i) {
    const std::vector<int64_t> shape = dims_of(in[i]);
    if (dims_of(in[n + i]) != shape)
      return invalid("grads[" + std::to_string(i) + "] must have params[" + std::to_string(i) + "]'s shape");
    for (size_t k = 0; k < num_states; ++k) {
      const bool stat = factored && k < 2;
      if (dims_of(in[2 * n + k * n + i]) != (stat ? fusedopt::factored_shape(shape, int(k)) : shape))
        return invalid("state " + std::to_string(k) + " of params[" + std::to_string(i) + "] has the wrong shape");
    }
  }
  // Aliased results are the operands' buffers; otherwise start from a copy.
  for (size_t r = 0; r < out.size(); ++r) {
    const ffi::AnyBuffer& src = in[r < n ? r : r + n];
    if (out[r] != src.untyped_data()) std::memcpy(out[r], src.untyped_data(), src.size_bytes());
  }
  for (size_t i = 0; i < n; ++i) {
    fusedopt_tensor& t = tensors[i];
    t = fusedopt_tensor{};
    t.param = out[i];
    t.grad = in[n + i].untyped_data();
    for (size_t k = 0; k < num_states; ++k) t.state[k] = out[n + k * n + i];
    fusedopt::set_layout(&t, dims_of(in[i]), factored);
  }
  const int dtype = type == ffi::DataType::F64 ? FUSEDOPT_FLOAT64 : FUSEDOPT_FLOAT32;
  const int status = fusedopt_apply_regularized(rule, dtype, tensors.data(), int64_t(n), hyper.data(),
                                                int64_t(step_value), lr, decay_value, regularization[0],
                                                regularization[1], regularization[2]);
  if (status == FUSEDOPT_ERROR_INVALID_ARGUMENT) return invalid(fusedopt_last_error());
  if (status != FUSEDOPT_OK) return ffi::Error::Internal(std::string("fusedopt: ") + fusedopt_last_error());
  return ffi::Error::Success();
}

}  // namespace

#ifndef FUSEDOPT_FFI_HANDLER_SYMBOL
#error "define FUSEDOPT_FFI_HANDLER_SYMBOL, the handler's exported name, before including this file"
#endif

XLA_FFI_DEFINE_HANDLER_SYMBOL(FUSEDOPT_FFI_HANDLER_SYMBOL, FusedUpdate,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // learning_rate
                                  .Arg<ffi::AnyBuffer>()  // step
                                  .Arg<ffi::AnyBuffer>()  // decay
                                  .Arg<ffi::AnyBuffer>()  // dynamic_hyper
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<std::string_view>("rule")
                                  .Attr<ffi::Span<const double>>("hyper")
                                  .Attr<ffi::Span<const double>>("regularization"));
