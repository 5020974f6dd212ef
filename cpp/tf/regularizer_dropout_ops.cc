// Op registrations of the regularizer and dropout ops, with shape functions.
// Their gradients are registered in Python (fusedopt/keras/_op_library.py).
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {

// Keras's L1L2 penalty l1 * sum|x| + l2 * sum x^2 (a scalar), and its gradient
// l1 * sign(x) + 2 * l2 * x.
REGISTER_OP("FusedoptElasticPenalty")
    .Input("x: T")
    .Input("l1: double")
    .Input("l2: double")
    .Output("penalty: T")
    .Attr("T: {float, double}")
    .SetShapeFn(shape_inference::ScalarShape);
REGISTER_OP("FusedoptElasticGradient")
    .Input("x: T")
    .Input("l1: double")
    .Input("l2: double")
    .Output("gradient: T")
    .Attr("T: {float, double}")
    .SetShapeFn(shape_inference::UnchangedShape);

// L2-SP toward `reference`: alpha / 2 * sum (x - reference)^2, and its
// gradient alpha * (x - reference).
REGISTER_OP("FusedoptSpPenalty")
    .Input("x: T")
    .Input("reference: T")
    .Input("alpha: double")
    .Output("penalty: T")
    .Attr("T: {float, double}")
    .SetShapeFn(shape_inference::ScalarShape);
REGISTER_OP("FusedoptSpGradient")
    .Input("x: T")
    .Input("reference: T")
    .Input("alpha: double")
    .Output("gradient: T")
    .Attr("T: {float, double}")
    .SetShapeFn(shape_inference::UnchangedShape);

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
    .SetShapeFn([](shape_inference::InferenceContext* c) {
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
    .SetShapeFn(shape_inference::UnchangedShape);

}  // namespace tensorflow
