// CPU kernels of the regularizer and dropout ops: check the inputs, allocate
// the outputs, call the engine through its C API (the math is in
// fusedopt/regularizers.h and fusedopt/dropout.h).
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "engine_status.h"
#include "fusedopt/c_api.h"
#include "fusedopt/regularizers.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tensorflow {
namespace {

template <typename T> constexpr int engine_dtype() {
  return std::is_same<T, double>::value ? FUSEDOPT_FLOAT64 : FUSEDOPT_FLOAT32;
}

// A finite scalar double input >= 0 (>= 0 and < 1 for a rate), named in errors.
absl::Status scalar_input(OpKernelContext* ctx, int index, const char* name, bool is_rate, double* out) {
  const Tensor& t = ctx->input(index);
  if (!TensorShapeUtils::IsScalar(t.shape()))
    return errors::InvalidArgument(name, " must be a scalar, got shape ", t.shape().DebugString());
  *out = t.scalar<double>()();
  if (!std::isfinite(*out) || *out < 0.0 || (is_rate && *out >= 1.0))
    return errors::InvalidArgument(name, is_rate ? " must be in [0, 1)" : " must be finite and >= 0",
                                   ", got ", *out);
  return absl::OkStatus();
}

absl::Status same_shape(const Tensor& x, const Tensor& reference) {
  if (x.shape() != reference.shape())
    return errors::InvalidArgument("reference has shape ", reference.shape().DebugString(),
                                   " but x has shape ", x.shape().DebugString());
  return absl::OkStatus();
}

// The inputs after x: (l1, l2) for L1L2, (reference, alpha) for L2-SP.
template <bool kSp>
absl::Status strengths(OpKernelContext* ctx, double* a, double* b) {
  if (!kSp) {
    TF_RETURN_IF_ERROR(scalar_input(ctx, 1, "l1", false, a));
    return scalar_input(ctx, 2, "l2", false, b);
  }
  TF_RETURN_IF_ERROR(same_shape(ctx->input(0), ctx->input(1)));
  return scalar_input(ctx, 2, "alpha", false, a);
}

// Penalty ops: a scalar of T from the engine's double sums.
template <typename T, bool kSp>
class PenaltyOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor* reference = kSp ? &ctx->input(1) : nullptr;
    double a = 0.0, b = 0.0;
    OP_REQUIRES_OK(ctx, strengths<kSp>(ctx, &a, &b));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    double sum_abs = 0.0, sum_squares = 0.0;
    OP_REQUIRES_OK(ctx, EngineStatus(fusedopt_regularizer_sums(engine_dtype<T>(), x.flat<T>().data(),
                                                               reference ? reference->flat<T>().data() : nullptr,
                                                               x.NumElements(), &sum_abs, &sum_squares),
                                     "the penalty"));
    out->scalar<T>()() = T(kSp ? fusedopt::regularizers::l2sp_penalty(sum_squares, a)
                               : fusedopt::regularizers::l1l2_penalty(sum_abs, sum_squares, a, b));
  }
};

template <typename T, bool kSp>
class GradientOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    double a = 0.0, b = 0.0;
    OP_REQUIRES_OK(ctx, strengths<kSp>(ctx, &a, &b));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &out));
    const int status =
        kSp ? fusedopt_l2sp_gradient(engine_dtype<T>(), x.flat<T>().data(), ctx->input(1).flat<T>().data(),
                                     out->flat<T>().data(), x.NumElements(), a)
            : fusedopt_l1l2_gradient(engine_dtype<T>(), x.flat<T>().data(), out->flat<T>().data(),
                                     x.NumElements(), a, b);
    OP_REQUIRES_OK(ctx, EngineStatus(status, "the penalty gradient"));
  }
};

// The noise shape input: x's rank, each entry 1 or x's size there.
absl::Status noise_shape_input(OpKernelContext* ctx, int index, const TensorShape& x_shape,
                         std::vector<int64_t>* x_dims, std::vector<int64_t>* noise_dims,
                         int64_t* noise_size) {
  const Tensor& t = ctx->input(index);
  if (t.dims() != 1 || t.NumElements() != x_shape.dims())
    return errors::InvalidArgument("noise_shape must be a vector of x's rank (", x_shape.dims(),
                                   "), got shape ", t.shape().DebugString());
  *noise_size = 1;
  for (int d = 0; d < x_shape.dims(); ++d) {
    const int64_t n = t.vec<int64_t>()(d), xd = x_shape.dim_size(d);
    if (n != 1 && n != xd)
      return errors::InvalidArgument("noise_shape[", d, "] is ", n, " but must be 1 or x's size ", xd);
    x_dims->push_back(xd);
    noise_dims->push_back(n);
    *noise_size *= n;
  }
  return absl::OkStatus();
}

template <typename T>
class DropoutOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    double rate = 0.0;
    OP_REQUIRES_OK(ctx, scalar_input(ctx, 1, "rate", true, &rate));
    const Tensor& seed = ctx->input(2);
    OP_REQUIRES(ctx, seed.dims() == 1 && seed.NumElements() == 2,
                errors::InvalidArgument("seed must be a vector of 2 values, got shape ",
                                        seed.shape().DebugString()));
    std::vector<int64_t> x_dims, noise_dims;
    int64_t noise_size = 0;
    OP_REQUIRES_OK(ctx, noise_shape_input(ctx, 3, x.shape(), &x_dims, &noise_dims, &noise_size));
    Tensor *y = nullptr, *mask = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({(noise_size + 7) / 8}), &mask));
    // As TF's stateless kernels read an int64 seed: each value as uint64.
    const int status = fusedopt_dropout(
        engine_dtype<T>(), x.flat<T>().data(), y->flat<T>().data(), x_dims.data(), noise_dims.data(),
        int(x_dims.size()), rate, uint64_t(seed.vec<int64_t>()(0)), uint64_t(seed.vec<int64_t>()(1)),
        nullptr, mask->flat<uint8_t>().data());
    OP_REQUIRES_OK(ctx, EngineStatus(status, "dropout"));
  }
};

template <typename T>
class DropoutGradOp : public OpKernel {
 public:
  using OpKernel::OpKernel;
  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& mask = ctx->input(1);
    double rate = 0.0;
    OP_REQUIRES_OK(ctx, scalar_input(ctx, 2, "rate", true, &rate));
    std::vector<int64_t> x_dims, noise_dims;
    int64_t noise_size = 0;
    OP_REQUIRES_OK(ctx, noise_shape_input(ctx, 3, dy.shape(), &x_dims, &noise_dims, &noise_size));
    OP_REQUIRES(ctx, mask.dims() == 1 && mask.NumElements() == (noise_size + 7) / 8,
                errors::InvalidArgument("mask has shape ", mask.shape().DebugString(), " but ",
                                        noise_size, " mask bits take (", (noise_size + 7) / 8,
                                        ",) bytes"));
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, dy.shape(), &dx));
    const int status = fusedopt_dropout(engine_dtype<T>(), dy.flat<T>().data(), dx->flat<T>().data(),
                                        x_dims.data(), noise_dims.data(), int(x_dims.size()), rate,
                                        0, 0, mask.flat<uint8_t>().data(), nullptr);
    OP_REQUIRES_OK(ctx, EngineStatus(status, "dropout's gradient"));
  }
};

}  // namespace

#define FUSEDOPT_REGISTER_REG_DROPOUT(T)                                                         \
  REGISTER_KERNEL_BUILDER(Name("FusedoptElasticPenalty").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
                          PenaltyOp<T, false>);                                                  \
  REGISTER_KERNEL_BUILDER(Name("FusedoptElasticGradient").Device(DEVICE_CPU).TypeConstraint<T>("T"), \
                          GradientOp<T, false>);                                                 \
  REGISTER_KERNEL_BUILDER(Name("FusedoptSpPenalty").Device(DEVICE_CPU).TypeConstraint<T>("T"),    \
                          PenaltyOp<T, true>);                                                   \
  REGISTER_KERNEL_BUILDER(Name("FusedoptSpGradient").Device(DEVICE_CPU).TypeConstraint<T>("T"),   \
                          GradientOp<T, true>);                                                  \
  REGISTER_KERNEL_BUILDER(Name("FusedoptDropout").Device(DEVICE_CPU).TypeConstraint<T>("T"),      \
                          DropoutOp<T>);                                                         \
  REGISTER_KERNEL_BUILDER(Name("FusedoptDropoutGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),  \
                          DropoutGradOp<T>);
FUSEDOPT_REGISTER_REG_DROPOUT(float)
FUSEDOPT_REGISTER_REG_DROPOUT(double)

}  // namespace tensorflow
