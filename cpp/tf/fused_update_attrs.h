// The attributes of a fused update op, read and checked once for its CPU and
// GPU kernels (fused_update_kernel.h) and its XLA kernel (fused_update_xla.cc).
#pragma once

#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "fused_update_ops.h"
#include "fusedopt/c_api.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tensorflow {

struct FusedUpdateAttrs {
  int rule = -1;
  int num_tensors = 0;
  int num_states = 0;  // state inputs: slot variables, or one FusedoptVariableList
  bool state_list = false;
  int num_slot_vars = 0;  // slot variables: the rule's states per tensor * num_tensors
};

// The op's attributes; an error unless hyper_names are the rule's, in its
// order, and num_states matches the rule's states (or is one list handle).
inline absl::Status ReadFusedUpdateAttrs(OpKernelConstruction* ctx, FusedUpdateAttrs* a) {
  const std::string& op = ctx->def().op();
  a->rule = FusedUpdateRule(op);
  if (a->rule < 0) return errors::Internal("fusedopt engine has no rule for ", op);
  TF_RETURN_IF_ERROR(ctx->GetAttr("num_tensors", &a->num_tensors));
  TF_RETURN_IF_ERROR(ctx->GetAttr("num_states", &a->num_states));
  TF_RETURN_IF_ERROR(ctx->GetAttr("state_list", &a->state_list));
  std::vector<std::string> hyper_names;
  TF_RETURN_IF_ERROR(ctx->GetAttr("hyper_names", &hyper_names));
  std::vector<std::string> expected;
  for (int k = 0; const char* name = fusedopt_rule_hyper_name(a->rule, k); ++k) expected.emplace_back(name);
  if (hyper_names != expected)
    return errors::InvalidArgument(op, " takes the hyperparameters [", absl::StrJoin(expected, ", "),
                                   "] in that order; hyper_names is [", absl::StrJoin(hyper_names, ", "), "]");
  const int per_tensor = fusedopt_rule_num_states(a->rule);
  a->num_slot_vars = per_tensor * a->num_tensors;
  if (a->state_list && a->num_states != 1)
    return errors::InvalidArgument(op, " with state_list takes one FusedoptVariableList handle as states, got ",
                                   a->num_states);
  if (!a->state_list && a->num_states != a->num_slot_vars)
    return errors::InvalidArgument(op, " takes ", per_tensor, " slots per variable: num_states must be ",
                                   a->num_slot_vars, ", got ", a->num_states);
  return absl::OkStatus();
}

}  // namespace tensorflow
