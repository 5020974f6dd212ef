// Op registrations: inputs, attributes and the (empty) shape function.
#include "fused_update_ops.h"
#include "input_shapes.h"

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {

inline absl::Status FusedUpdateShape(shape_inference::InferenceContext* c) {
  int num_tensors = 0, num_states = 0;
  TF_RETURN_IF_ERROR(c->GetAttr("num_tensors", &num_tensors));
  TF_RETURN_IF_ERROR(c->GetAttr("num_states", &num_states));
  const int hyper = 2 * num_tensors + num_states;
  for (int i = 0; i < num_tensors + num_states; ++i)
    TF_RETURN_IF_ERROR(InputOfRank(c, i, 0, i < num_tensors ? "params (a resource handle)" : "states (a resource handle)"));
  TF_RETURN_IF_ERROR(InputOfRank(c, hyper, 1, "hyper"));
  TF_RETURN_IF_ERROR(InputOfRank(c, hyper + 1, 0, "learning_rate"));
  TF_RETURN_IF_ERROR(InputOfRank(c, hyper + 2, 0, "step"));
  TF_RETURN_IF_ERROR(InputOfRank(c, hyper + 3, 0, "decay"));
  return InputOfRank(c, hyper + 4, 1, "regularization", 3);
}

// params:  num_tensors resource variables, updated in place
// states:  num_states resource variables, slot-major (slot k of tensor i at
//          k * num_tensors + i), in Keras's slot order; or, with state_list,
//          one FusedoptVariableList handle holding those variables in that order
// grads:   num_tensors dense gradients
// hyper:   the rule's hyperparameters (float64), named in order by the
//          hyper_names attribute, which must be the rule's (checked by the
//          kernel: a reordered or renamed list is an error, not a silent mix-up)
// learning_rate, step (1-based), decay (decoupled weight decay factor wd * lr)
// regularization: [l1, l2, proximal_l1], fused into the same pass (0 = off)
const InitOnStartupMarker kFusedUpdateOpsRegistered = [] {
  ForEachFusedUpdateOp([](const std::string& op_name, int) {
    register_op::OpDefBuilderWrapper(op_name.c_str())
        .Input("params: num_tensors * resource")
        .Input("states: num_states * resource")
        .Input("grads: num_tensors * T")
        .Input("hyper: double")
        .Input("learning_rate: double")
        .Input("step: int64")
        .Input("decay: double")
        .Input("regularization: double")
        .Attr("T: {float, double}")
        .Attr("num_tensors: int >= 0")
        .Attr("num_states: int >= 0")
        .Attr("state_list: bool = false")
        .Attr("hyper_names: list(string) >= 0")
        .SetIsStateful()
        .SetShapeFn(FusedUpdateShape)();
  });
  return InitOnStartupMarker{};
}();

// A fixed list of resource variables behind one handle (it holds a reference
// to each; freed with the last copy of the handle). Built once per set of
// optimizer slots, so that a step passes one handle instead of one per slot:
// each resource input of a tf.function call costs microseconds per call.
REGISTER_OP("FusedoptVariableList")
    .Input("variables: num_variables * resource")
    .Output("list: resource")
    .Attr("num_variables: int >= 0")
    .SetIsStateful()
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      for (int i = 0; i < c->num_inputs(); ++i)
        TF_RETURN_IF_ERROR(InputOfRank(c, i, 0, "variables (resource handles)"));
      c->set_output(0, c->Scalar());
      return absl::OkStatus();
    });

}  // namespace tensorflow
