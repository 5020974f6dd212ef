// XLA kernels of the fused update ops, for TensorFlow's jit_compile=True: each
// op becomes one custom call over all of its variables (the handler of
// cpp/xla, registered with TensorFlow's XLA for the "Host" platform), whose
// results are aliased to its operands and assigned back to the variables, so
// the update is in place. CPU only (the XLA_CPU_JIT device): on a GPU under
// XLA the variables take Keras's update. These are TensorFlow-internal APIs
// (tf2xla, the XLA builder): where this file does not compile, the op library
// is built without it and op_library_status() says why.
#define FUSEDOPT_FFI_HANDLER_SYMBOL fusedopt_tf_fused_update
#include "fused_update_ffi.h"

#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "fused_update_attrs.h"
#include "fused_update_ops.h"
#include "fusedopt/c_api.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/core/framework/kernel_def_builder.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/shape_util.h"

namespace xla::ffi {
// Defined in TensorFlow's library; xla/ffi/ffi_api.h, which declares it,
// needs headers the wheel lacks.
const XLA_FFI_Api* GetXlaFfiApi();
}  // namespace xla::ffi

namespace tensorflow {
namespace {

// An MLIR dense f64 array attribute ("array<f64: 0.9, 0.999>"), exact; NaN
// (a hyperparameter given as an operand) as its bit pattern.
std::string F64ArrayAttr(const std::vector<double>& values) {
  std::string out = "array<f64";
  for (size_t i = 0; i < values.size(); ++i) {
    char text[32];
    if (std::isnan(values[i]))
      std::snprintf(text, sizeof text, "0x7FF8000000000000");
    else
      std::snprintf(text, sizeof text, "%.17e", values[i]);  // MLIR floats need a "."
    out += (i == 0 ? ": " : ", ") + std::string(text);
  }
  return out + ">";
}

// The values of constant input `index` as doubles, or false where it is not a
// compile-time constant.
bool ConstantDoubles(XlaOpKernelContext* ctx, int index, std::vector<double>* out) {
  xla::Literal literal;
  if (!ctx->ConstantInput(index, &literal).ok()) return false;
  const auto data = literal.data<double>();
  out->assign(data.begin(), data.end());
  return true;
}

class FusedUpdateXlaOp : public XlaOpKernel {
 public:
  explicit FusedUpdateXlaOp(OpKernelConstruction* ctx) : XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadFusedUpdateAttrs(ctx, &attrs_));
    OP_REQUIRES(ctx, !attrs_.state_list,
                errors::InvalidArgument(ctx->def().op(), " under XLA takes one handle per slot, not a state_list"));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("T", &dtype_));
  }

  void Compile(XlaOpKernelContext* ctx) override {
    const int n = attrs_.num_tensors;
    const int num_states = attrs_.num_slot_vars;
    const int grads_start = n + num_states;
    const int hyper_input = grads_start + n;
    xla::XlaBuilder* b = ctx->builder();

    // Hyperparameters: attributes where constant, else one operand (e.g. Nadam's
    // momentum product, a variable).
    const int num_hyper = fusedopt_rule_num_hyper(attrs_.rule);
    std::vector<double> hyper;
    xla::XlaOp dynamic_hyper;
    if (num_hyper == 0 || ConstantDoubles(ctx, hyper_input, &hyper)) {
      dynamic_hyper = xla::ConstantR1<double>(b, {});
    } else {
      hyper.assign(num_hyper, std::nan(""));
      dynamic_hyper = ctx->Input(hyper_input);
    }
    OP_REQUIRES(ctx, int(hyper.size()) == num_hyper,
                errors::InvalidArgument("hyper must be a vector of ", num_hyper, " values"));
    std::vector<double> regularization;
    OP_REQUIRES(ctx, ConstantDoubles(ctx, hyper_input + 4, &regularization) && regularization.size() == 3,
                errors::InvalidArgument("regularization must be a constant [l1, l2, proximal_l1] under XLA"));

    std::vector<xla::XlaOp> operands = {ctx->Input(hyper_input + 1), ctx->Input(hyper_input + 2),
                                        ctx->Input(hyper_input + 3), dynamic_hyper};
    std::vector<xla::Shape> result_shapes;
    std::vector<xla::XlaOp> variables(n + num_states);
    const xla::PrimitiveType type = dtype_ == DT_DOUBLE ? xla::F64 : xla::F32;
    for (int i = 0; i < n + num_states; ++i) {
      TensorShape shape;
      OP_REQUIRES_OK(ctx, ctx->ReadVariableInput(i, dtype_, &shape, &variables[i]));
      result_shapes.push_back(xla::ShapeUtil::MakeShape(type, shape.dim_sizes()));
    }
    for (int i = 0; i < n; ++i) operands.push_back(variables[i]);
    for (int i = 0; i < n; ++i) operands.push_back(ctx->Input(grads_start + i));
    for (int j = 0; j < num_states; ++j) operands.push_back(variables[n + j]);

    // Result k (params, then states) is operand 4 + k (params) or 4 + n + k (states).
    std::vector<std::pair<xla::ShapeIndex, std::pair<int64_t, xla::ShapeIndex>>> aliasing;
    for (int k = 0; k < n + num_states; ++k)
      aliasing.push_back({xla::ShapeIndex{k}, {4 + (k < n ? k : n + k), xla::ShapeIndex{}}});
    const std::string rule = fusedopt_rule_name(attrs_.rule);
    const std::string attributes = "{rule = \"" + rule + "\", hyper = " + F64ArrayAttr(hyper) +
                                   ", regularization = " + F64ArrayAttr(regularization) + "}";
    const xla::XlaOp call =
        xla::CustomCall(b, "fusedopt_" + rule, operands, xla::ShapeUtil::MakeTupleShape(result_shapes), attributes,
                        /*has_side_effect=*/false, aliasing, /*literal=*/nullptr,
                        xla::CustomCallSchedule::SCHEDULE_NONE, xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
    for (int k = 0; k < n + num_states; ++k)
      OP_REQUIRES_OK(ctx, ctx->AssignVariable(k, dtype_, xla::GetTupleElement(call, k)));
  }

 private:
  FusedUpdateAttrs attrs_;
  DataType dtype_ = DT_FLOAT;
};

OpKernel* MakeFusedUpdateXlaOp(OpKernelConstruction* ctx) { return new FusedUpdateXlaOp(ctx); }

// Registered when the library loads, for every rule of the engine: the XLA
// kernel of op Fusedopt<Rule> and the handler of target fusedopt_<rule>.
// TensorFlow turns the XLA op registry into kernels once, at its first XLA
// compilation, which may come before this library loads: so that step is run
// first here (a no-op if done), and the kernels are then registered directly
// on the XLA CPU device, as that step does; the registry entries only make the
// ops known to XLA's op registry.
const InitOnStartupMarker kFusedUpdateXlaRegistered = [] {
  XlaOpRegistry::RegisterCompilationKernels();
  static std::vector<std::unique_ptr<XlaOpRegistrar>> registrars;
  static std::vector<std::unique_ptr<kernel_factory::OpKernelRegistrar>> kernels;
  ForEachFusedUpdateOp([](const std::string& op_name, int rule) {
    registrars.push_back(std::make_unique<XlaOpRegistrar>(
        XlaOpRegistrationBuilder::Name(op_name)
            .Device(DEVICE_CPU_XLA_JIT)
            .TypeConstraint("T", {DT_FLOAT, DT_DOUBLE})
            .AllowResourceTypes()
            .Build(MakeFusedUpdateXlaOp)));
    const KernelDef* kernel_def =
        KernelDefBuilder(op_name.c_str()).Device(DEVICE_CPU_XLA_JIT).TypeConstraint("T", {DT_FLOAT, DT_DOUBLE}).Build();
    kernels.push_back(
        std::make_unique<kernel_factory::OpKernelRegistrar>(kernel_def, "FusedUpdateXlaOp", MakeFusedUpdateXlaOp));
    const std::string target = std::string("fusedopt_") + fusedopt_rule_name(rule);
    if (XLA_FFI_Error* error = xla::ffi::Ffi::RegisterStaticHandler(xla::ffi::GetXlaFfiApi(), target, "Host",
                                                                    fusedopt_tf_fused_update))
      std::fprintf(stderr, "fusedopt: registering the XLA handler %s failed\n", target.c_str()), (void)error;
  });
  return InitOnStartupMarker{};
}();

}  // namespace
}  // namespace tensorflow
