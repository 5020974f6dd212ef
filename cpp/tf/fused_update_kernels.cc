// CPU kernels of the fused update ops (the kernel itself: fused_update_kernel.h)
// and of FusedoptVariableList.
#define EIGEN_USE_THREADS

#include "fused_update_kernel.h"
#include "tensorflow/core/kernels/training_op_helpers.h"

namespace tensorflow {

using CPUDevice = Eigen::ThreadPoolDevice;

struct CpuBackend {
  static constexpr bool kRegularization = true;
  static constexpr const char* kName = "CPU";

  template <typename T>
  static absl::Status MakeWritable(OpKernelContext* ctx, Var* var) {
    return PrepareToUpdateVariable<CPUDevice, T>(ctx, var->tensor(), var->copy_on_read_mode.load());
  }

  static absl::Status Run(OpKernelContext*, int rule, int dtype, const fusedopt_tensor* tensors, int n,
                          const double* hyper, int64_t step, double lr, double decay, const double* reg) {
    const int status =
        fusedopt_apply_regularized(rule, dtype, tensors, n, hyper, step, lr, decay, reg[0], reg[1], reg[2]);
    return EngineStatus(status, "the fused update");
  }
};

class VariableListOp : public OpKernel {
 public:
  using OpKernel::OpKernel;

  void Compute(OpKernelContext* ctx) override {
    std::vector<core::RefCountPtr<Var>> vars(ctx->num_inputs());
    ResourceHandle handle;
    for (int i = 0; i < ctx->num_inputs(); ++i) {
      OP_REQUIRES_OK(ctx, HandleInput(ctx, i, "variables", &handle));
      OP_REQUIRES_OK(ctx, LookupResource(ctx, handle, &vars[i]));
    }
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<ResourceHandle>()() =
        ResourceHandle::MakeRefCountingHandle(new FusedoptVariableList(std::move(vars)), ctx->device()->name());
  }
};
REGISTER_KERNEL_BUILDER(Name("FusedoptVariableList").Device(DEVICE_CPU), VariableListOp);

template <typename T>
OpKernel* MakeCpuKernel(OpKernelConstruction* ctx) {
  return new FusedUpdateOp<CpuBackend, T>(ctx);
}

const InitOnStartupMarker kCpuKernelsRegistered = [] {
  ForEachFusedUpdateOp([](const std::string& op_name, int) {
    kernel_factory::OpKernelRegistrar(
        register_kernel::Name(op_name.c_str()).Device(DEVICE_CPU).TypeConstraint<float>("T").Build(),
        "FusedUpdateOp<CPU, float>", &MakeCpuKernel<float>);
    kernel_factory::OpKernelRegistrar(
        register_kernel::Name(op_name.c_str()).Device(DEVICE_CPU).TypeConstraint<double>("T").Build(),
        "FusedUpdateOp<CPU, double>", &MakeCpuKernel<double>);
  });
  return InitOnStartupMarker{};
}();

}  // namespace tensorflow
