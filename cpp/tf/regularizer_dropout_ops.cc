// Op registrations of the regularizer and dropout ops, with shape functions.
// Their gradients are registered in Python (fusedopt/keras/_op_library.py).
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {
namespace {

using shape_inference::InferenceContext;
using shape_inference::ShapeHandle;

// Inputs [first, last] must be scalars (where their shapes are known; the
// kernels check again).
absl::Status Scalars(InferenceContext* c, int first, int last) {
  ShapeHandle unused;
  for (int i = first; i <= last; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
  return absl::OkStatus();
}

absl::Status PenaltyShape(InferenceContext* c) {
  TF_RETURN_IF_ERROR(Scalars(c, 1, 2));
  c->set_output(0, c->Scalar());
  return absl::OkStatus();
}

absl::Status SpShape(InferenceContext* c, bool scalar_output) {
  ShapeHandle x;
  TF_RETURN_IF_ERROR(c->Merge(c->input(0), c->input(1), &x));
  TF_RETURN_IF_ERROR(Scalars(c, 2, 2));
  c->set_output(0, scalar_output ? c->Scalar() : x);
  return absl::OkStatus();
}

// noise_shape: a vector of x's rank.
absl::Status NoiseShape(InferenceContext* c, int x_index, int noise_index) {
  ShapeHandle noise;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(noise_index), 1, &noise));
  if (c->RankKnown(c->input(x_index))) {
    shape_inference::DimensionHandle unused;
    TF_RETURN_IF_ERROR(c->WithValue(c->Dim(noise, 0), c->Rank(c->input(x_index)), &unused));
  }
  return absl::OkStatus();
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
      TF_RETURN_IF_ERROR(Scalars(c, 1, 2));
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
      TF_RETURN_IF_ERROR(Scalars(c, 1, 1));
      ShapeHandle seed;
      shape_inference::DimensionHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 1, &seed));
      TF_RETURN_IF_ERROR(c->WithValue(c->Dim(seed, 0), 2, &unused));
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
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &unused));
      TF_RETURN_IF_ERROR(Scalars(c, 2, 2));
      TF_RETURN_IF_ERROR(NoiseShape(c, 0, 3));
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

}  // namespace tensorflow
