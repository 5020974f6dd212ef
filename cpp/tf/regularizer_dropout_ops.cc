// Op registrations of the regularizer and dropout ops, with shape functions.
// Their gradients are registered in Python (fusedopt/keras/_op_library.py).
#include <initializer_list>

#include "input_shapes.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {
namespace {

using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

// Inputs first, first + 1, ... (named by `names`) must be scalars.
absl::Status Scalars(InferenceContext* c, int first, std::initializer_list<const char*> names) {
  int i = first;
  for (const char* name : names) TF_RETURN_IF_ERROR(InputOfRank(c, i++, 0, name));
  return absl::OkStatus();
}

absl::Status PenaltyShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(Scalars(c, 1, {"l1", "l2"}));
  c->set_output(0, c->Scalar());
  return absl::OkStatus();
}

absl::Status SpShape(InferenceContext* c, bool scalar_output) {
  ShapeHandle x;
  if (!c->Merge(c->input(0), c->input(1), &x).ok())
    return errors::InvalidArgument("reference has shape ", c->DebugString(c->input(1)), " but x has shape ",
                                   c->DebugString(c->input(0)));
  TF_RETURN_IF_ERROR(Scalars(c, 2, {"alpha"}));
  c->set_output(0, scalar_output ? c->Scalar() : x);
  return absl::OkStatus();
}

// noise_shape: a vector of x's rank.
absl::Status NoiseShape(InferenceContext* c, int x_index, int noise_index) {
  const bool rank_known = c->RankKnown(c->input(x_index));
  return InputOfRank(c, noise_index, 1, "noise_shape", rank_known ? c->Rank(c->input(x_index)) : -1);
}

}  // namespace

// Keras's L1L2 penalty l1 * sum|x| + l2 * sum x^2 (a scalar), and its gradient
// l1 * sign(x) + 2 * l2 * x.
REGISTER_OP("FusedoptElasticPenalty")
    .Input("x: T")
    .Input("l1: double")
    .Input("l2: double")
    .Output("penalty: T")
    .Attr("T: {float, double}")
    .SetShapeFn(PenaltyShape);
REGISTER_OP("FusedoptElasticGradient")
    .Input("x: T")
    .Input("l1: double")
    .Input("l2: double")
    .Output("gradient: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(Scalars(c, 1, {"l1", "l2"}));
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

// L2-SP toward `reference`: alpha / 2 * sum (x - reference)^2, and its
// gradient alpha * (x - reference).
REGISTER_OP("FusedoptSpPenalty")
    .Input("x: T")
    .Input("reference: T")
    .Input("alpha: double")
    .Output("penalty: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) { return SpShape(c, true); });
REGISTER_OP("FusedoptSpGradient")
    .Input("x: T")
    .Input("reference: T")
    .Input("alpha: double")
    .Output("gradient: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) { return SpShape(c, false); });

// Inverted dropout with keep bits from the Philox stream of a TF stateless
// seed pair (bit-identical to tf.nn.experimental.stateless_dropout on CPU);
// `mask` holds the keep bits packed, 1 bit per element of the noise shape.
REGISTER_OP("FusedoptDropout")
    .Input("x: T")
    .Input("rate: double")
    .Input("seed: int64")
    .Input("noise_shape: int64")
    .Output("y: T")
    .Output("mask: uint8")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(Scalars(c, 1, {"rate"}));
      TF_RETURN_IF_ERROR(InputOfRank(c, 2, 1, "seed", 2));
      TF_RETURN_IF_ERROR(NoiseShape(c, 0, 3));
      c->set_output(0, c->input(0));
      c->set_output(1, c->Vector(c->UnknownDim()));
      return absl::OkStatus();
    });
// dx = keep ? dy / (1 - rate) : 0, the keep bits from FusedoptDropout's mask.
REGISTER_OP("FusedoptDropoutGrad")
    .Input("dy: T")
    .Input("mask: uint8")
    .Input("rate: double")
    .Input("noise_shape: int64")
    .Output("dx: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) {
      TF_RETURN_IF_ERROR(InputOfRank(c, 1, 1, "mask"));
      TF_RETURN_IF_ERROR(Scalars(c, 2, {"rate"}));
      TF_RETURN_IF_ERROR(NoiseShape(c, 0, 3));
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

}  // namespace tensorflow
