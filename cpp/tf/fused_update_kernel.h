// The fused update ops' kernel, shared by the CPU kernels
// (fused_update_kernels.cc) and the GPU kernels (fused_update_kernels_gpu.cc):
// look up and lock every variable (in address order), validate everything,
// make each buffer safe to write, then hand all tensors to the engine in one
// call through its C API.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine_status.h"
#include "fused_update_attrs.h"
#include "fused_update_ops.h"
#include "fusedopt/c_api.h"
#include "fusedopt/tensor_layout.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"

namespace tensorflow {

// The value of a scalar input (an InvalidArgument error, not a CHECK
// failure, when it is not one).
template <typename T>
absl::Status ScalarInput(OpKernelContext* ctx, int index, const char* name, T* out) {
  const Tensor& t = ctx->input(index);
  if (!TensorShapeUtils::IsScalar(t.shape()))
    return errors::InvalidArgument(name, " must be a scalar, got shape ", t.shape().DebugString());
  *out = t.scalar<T>()();
  return absl::OkStatus();
}

// The resource handle of input `index`, which must be a scalar handle.
inline absl::Status HandleInput(OpKernelContext* ctx, int index, const char* what, ResourceHandle* out) {
  const Tensor& t = ctx->input(index);
  if (t.dtype() != DT_RESOURCE || !TensorShapeUtils::IsScalar(t.shape()))
    return errors::InvalidArgument(what, " must be a scalar resource handle, got ", DataTypeString(t.dtype()),
                                   " of shape ", t.shape().DebugString());
  *out = t.scalar<ResourceHandle>()();
  return absl::OkStatus();
}

// What a FusedoptVariableList handle points to: references to its variables,
// in the order given.
class FusedoptVariableList : public ResourceBase {
 public:
  explicit FusedoptVariableList(std::vector<core::RefCountPtr<Var>> vars) : vars_(std::move(vars)) {}
  const std::vector<core::RefCountPtr<Var>>& vars() const { return vars_; }
  std::string DebugString() const override {
    return strings::StrCat("FusedoptVariableList of ", vars_.size(), " variables");
  }

 private:
  const std::vector<core::RefCountPtr<Var>> vars_;
};

// One op kernel for every rule and device. `Backend` does what differs per
// device: make a variable's buffer safe to write (TF's copy-on-write
// discipline) and run the engine over all tensors (CPU engine or CUDA).
template <typename Backend, typename T>
class FusedUpdateOp : public OpKernel {
 public:
  explicit FusedUpdateOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadFusedUpdateAttrs(ctx, &attrs_));
  }

  void Compute(OpKernelContext* ctx) override {
    const int n = attrs_.num_tensors;
    const int slots = n == 0 ? 0 : attrs_.num_slot_vars / n;
    const int num_vars = n + attrs_.num_slot_vars;
    const int grads_start = n + attrs_.num_states;
    const int hyper_input = grads_start + n;

    // Scalars.
    const Tensor& hyper_t = ctx->input(hyper_input);
    OP_REQUIRES(ctx, hyper_t.dims() == 1 && hyper_t.NumElements() == fusedopt_rule_num_hyper(attrs_.rule),
                errors::InvalidArgument("hyper must be a vector of ", fusedopt_rule_num_hyper(attrs_.rule),
                                        " values, got shape ", hyper_t.shape().DebugString()));
    std::vector<double> hyper(hyper_t.flat<double>().data(),
                              hyper_t.flat<double>().data() + hyper_t.NumElements());
    for (size_t i = 0; i < hyper.size(); ++i)
      OP_REQUIRES(ctx, std::isfinite(hyper[i]), errors::InvalidArgument("hyper[", i, "] is not finite"));
    if (const char* err = fusedopt_rule_validate(attrs_.rule, hyper.data()))
      OP_REQUIRES(ctx, false, errors::InvalidArgument(err));
    double lr = 0.0, decay = 0.0;
    int64_t step = 0;
    OP_REQUIRES_OK(ctx, ScalarInput(ctx, hyper_input + 1, "learning_rate", &lr));
    OP_REQUIRES_OK(ctx, ScalarInput(ctx, hyper_input + 2, "step", &step));
    OP_REQUIRES_OK(ctx, ScalarInput(ctx, hyper_input + 3, "decay", &decay));
    OP_REQUIRES(ctx, std::isfinite(lr) && lr >= 0.0,
                errors::InvalidArgument("learning_rate must be finite and >= 0, got ", lr));
    OP_REQUIRES(ctx, !fusedopt_rule_needs_positive_learning_rate(attrs_.rule) || lr > 0.0,
                errors::InvalidArgument("learning_rate must be > 0 for ", ctx->op_kernel().type_string()));
    OP_REQUIRES(ctx, step >= 1, errors::InvalidArgument("step must be >= 1, got ", step));
    OP_REQUIRES(ctx, std::isfinite(decay) && decay >= 0.0,
                errors::InvalidArgument("decay must be finite and >= 0, got ", decay));
    const Tensor& reg_t = ctx->input(hyper_input + 4);
    OP_REQUIRES(ctx, reg_t.dims() == 1 && reg_t.NumElements() == 3,
                errors::InvalidArgument("regularization must be [l1, l2, proximal_l1], got shape ",
                                        reg_t.shape().DebugString()));
    const double* reg = reg_t.flat<double>().data();
    static const char* const kRegNames[3] = {"l1", "l2", "proximal_l1"};
    for (int k = 0; k < 3; ++k) {
      OP_REQUIRES(ctx, std::isfinite(reg[k]) && reg[k] >= 0.0,
                  errors::InvalidArgument(kRegNames[k], " must be finite and >= 0, got ", reg[k]));
      OP_REQUIRES(ctx, Backend::kRegularization || reg[k] == 0.0,
                  errors::InvalidArgument(kRegNames[k], " is not supported by the ", Backend::kName,
                                          " kernel: it must be 0"));
    }

    // Look up every variable; the same variable twice would alias outputs.
    std::vector<core::RefCountPtr<Var>> vars(num_vars);
    ResourceHandle handle;
    for (int i = 0; i < n; ++i) {
      OP_REQUIRES_OK(ctx, HandleInput(ctx, i, "params", &handle));
      OP_REQUIRES_OK(ctx, LookupResource(ctx, handle, &vars[i]));
    }
    if (attrs_.state_list) {
      core::RefCountPtr<FusedoptVariableList> list;
      OP_REQUIRES_OK(ctx, HandleInput(ctx, n, "states", &handle));
      OP_REQUIRES_OK(ctx, LookupResource(ctx, handle, &list));
      OP_REQUIRES(ctx, static_cast<int>(list->vars().size()) == attrs_.num_slot_vars,
                  errors::InvalidArgument("the state list holds ", list->vars().size(), " variables, expected ",
                                          attrs_.num_slot_vars));
      for (int j = 0; j < attrs_.num_slot_vars; ++j) {
        Var* v = list->vars()[j].get();
        v->Ref();
        vars[n + j].reset(v);
      }
    } else {
      for (int i = n; i < num_vars; ++i) {
        OP_REQUIRES_OK(ctx, HandleInput(ctx, i, "states", &handle));
        OP_REQUIRES_OK(ctx, LookupResource(ctx, handle, &vars[i]));
      }
    }
    std::vector<Var*> sorted;
    sorted.reserve(num_vars);
    for (auto& v : vars) sorted.push_back(v.get());
    std::sort(sorted.begin(), sorted.end());
    OP_REQUIRES(ctx, std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end(),
                errors::InvalidArgument("the same variable is passed twice"));

    // Lock in address order (sorted above), as TF's training ops do.
    std::vector<mutex_lock> locks;
    locks.reserve(sorted.size());
    for (Var* v : sorted) locks.emplace_back(*v->mu());

    const bool factored = fusedopt_rule_factored_states(attrs_.rule) != 0;
    for (int i = 0; i < num_vars; ++i) {
      Tensor* t = vars[i]->tensor();
      OP_REQUIRES(ctx, t->IsInitialized(), errors::FailedPrecondition("variable ", i, " is not initialized"));
      OP_REQUIRES(ctx, t->dtype() == DataTypeToEnum<T>::v(),
                  errors::InvalidArgument("variable ", i, " has dtype ", DataTypeString(t->dtype()),
                                          ", expected ", DataTypeString(DataTypeToEnum<T>::v())));
    }
    std::vector<fusedopt_tensor> tensors(n);
    for (int i = 0; i < n; ++i) {
      const Tensor* p = vars[i]->tensor();
      const Tensor& g = ctx->input(grads_start + i);
      OP_REQUIRES(ctx, g.dtype() == DataTypeToEnum<T>::v(),
                  errors::InvalidArgument("grads[", i, "] has dtype ", DataTypeString(g.dtype()), ", expected ",
                                          DataTypeString(DataTypeToEnum<T>::v())));
      OP_REQUIRES(ctx, g.shape() == p->shape(),
                  errors::InvalidArgument("grads[", i, "] has shape ", g.shape().DebugString(),
                                          " but params[", i, "] has shape ", p->shape().DebugString()));
      const int rank = p->dims();
      for (int k = 0; k < slots; ++k) {
        const Tensor* s = vars[n + k * n + i]->tensor();
        TensorShape want = p->shape();
        if (factored && k < 2) {
          want = TensorShape();
          if (rank >= 2) {
            for (int d = 0; d < rank - 2; ++d) want.AddDim(p->dim_size(d));
            want.AddDim(p->dim_size(k == 0 ? rank - 2 : rank - 1));
          }
        }
        OP_REQUIRES(ctx, s->shape() == want,
                    errors::InvalidArgument("slot ", k, " of params[", i, "] has shape ",
                                            s->shape().DebugString(), ", expected ", want.DebugString()));
      }
    }

    // Everything is valid: make buffers exclusively ours, then update.
    for (int i = 0; i < num_vars; ++i)
      OP_REQUIRES_OK(ctx, Backend::template MakeWritable<T>(ctx, vars[i].get()));
    for (int i = 0; i < n; ++i) {
      Tensor* p = vars[i]->tensor();
      fusedopt_tensor& t = tensors[i];
      t = fusedopt_tensor{};
      t.param = p->flat<T>().data();
      t.grad = ctx->input(grads_start + i).flat<T>().data();
      for (int k = 0; k < slots; ++k) t.state[k] = vars[n + k * n + i]->tensor()->flat<T>().data();
      fusedopt::set_layout(&t, p->shape().dim_sizes(), factored);
    }
    const int dtype = std::is_same<T, double>::value ? FUSEDOPT_FLOAT64 : FUSEDOPT_FLOAT32;
    OP_REQUIRES_OK(ctx, Backend::Run(ctx, attrs_.rule, dtype, tensors.data(), n, hyper.data(), step, lr, decay, reg));
  }

 private:
  FusedUpdateAttrs attrs_;
};

}  // namespace tensorflow
