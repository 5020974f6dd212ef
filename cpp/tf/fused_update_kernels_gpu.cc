// GPU kernels of the fused update ops: the same kernel (fused_update_kernel.h)
// over variables in GPU memory, running the engine's CUDA kernels
// (fusedopt_cuda_apply) on the op's own stream, so that they are ordered with
// the TensorFlow ops around them. Built only where TensorFlow has CUDA and the
// engine was built with its CUDA kernels (see fusedopt.keras._op_library).
//
// No CUDA headers here: the stream is TensorFlow's StreamExecutor stream, and
// copies go through it.
#include "fused_update_kernel.h"
#include "fusedopt/c_api_cuda.h"
#include "xla/stream_executor/device_memory.h"
#include "xla/stream_executor/stream.h"

namespace tensorflow {

struct GpuBackend {
  // fusedopt_cuda_apply has no fused regularization: fusedopt.keras sends
  // variables with l1/l2/proximal_l1 on a GPU to Keras's update.
  static constexpr bool kRegularization = false;
  static constexpr const char* kName = "GPU";

  static se::Stream* StreamOf(OpKernelContext* ctx) {
    return ctx->op_device_context() ? ctx->op_device_context()->stream() : nullptr;
  }

  // As PrepareToUpdateVariable: copy when a read still shares the buffer or
  // the variable is in copy-on-read mode (a device-to-device copy, queued
  // before the update on the same stream).
  template <typename T>
  static absl::Status MakeWritable(OpKernelContext* ctx, Var* var) {
    Tensor* tensor = var->tensor();
    if (!var->copy_on_read_mode.load() && tensor->RefCountIsOne()) return absl::OkStatus();
    se::Stream* stream = StreamOf(ctx);
    if (stream == nullptr) return errors::Internal("the fused op's GPU kernel has no stream");
    Tensor copy;
    tsl::AllocatorAttributes attr;
    attr.set_gpu_compatible(true);
    attr.set_nic_compatible(true);
    TF_RETURN_IF_ERROR(ctx->allocate_temp(tensor->dtype(), tensor->shape(), &copy, attr));
    const uint64_t bytes = tensor->TotalBytes();
    if (bytes > 0) {
      se::DeviceMemoryBase to(copy.data(), bytes);
      TF_RETURN_IF_ERROR(stream->MemcpyD2D(&to, se::DeviceMemoryBase(tensor->data(), bytes), bytes));
    }
    *tensor = copy;
    return absl::OkStatus();
  }

  static absl::Status Run(OpKernelContext* ctx, int rule, int dtype, const fusedopt_tensor* tensors, int n,
                          const double* hyper, int64_t step, double lr, double decay, const double*) {
    se::Stream* stream = StreamOf(ctx);
    if (stream == nullptr) return errors::Internal("the fused op's GPU kernel has no stream");
    if (fusedopt_cuda_apply(rule, dtype, tensors, n, hyper, step, lr, decay,
                            stream->platform_specific_handle().stream) != 0)
      return errors::Internal("fusedopt's CUDA update failed: ", fusedopt_cuda_last_error());
    return absl::OkStatus();
  }
};

template <typename T>
OpKernel* MakeGpuKernel(OpKernelConstruction* ctx) {
  return new FusedUpdateOp<GpuBackend, T>(ctx);
}

// The scalars are read on the host while the kernel validates its inputs.
template <typename T>
void RegisterGpuKernel(const std::string& op_name) {
  kernel_factory::OpKernelRegistrar(register_kernel::Name(op_name.c_str())
                                        .Device(DEVICE_GPU)
                                        .HostMemory("hyper")
                                        .HostMemory("learning_rate")
                                        .HostMemory("step")
                                        .HostMemory("decay")
                                        .HostMemory("regularization")
                                        .TypeConstraint<T>("T")
                                        .Build(),
                                    "FusedUpdateOp<GPU>", &MakeGpuKernel<T>);
}

const InitOnStartupMarker kGpuKernelsRegistered = [] {
  ForEachFusedUpdateOp([](const std::string& op_name, int) {
    RegisterGpuKernel<float>(op_name);
    RegisterGpuKernel<double>(op_name);
  });
  return InitOnStartupMarker{};
}();

}  // namespace tensorflow
