// The fused update ops: one op per engine rule, each taking every variable of
// a step at once. The list is the engine's own (fusedopt_num_rules), so a new
// rule gets its op without an edit here: rule "adam_amsgrad" is op
// "FusedoptAdamAmsgrad", whose Python wrapper is `fusedopt_adam_amsgrad`.
// Shared by the op registrations and the kernels (registered when the library
// loads, as REGISTER_OP and REGISTER_KERNEL_BUILDER do).
#pragma once

#include <cctype>
#include <string>

#include "fusedopt/c_api.h"

namespace tensorflow {

// "Fusedopt" + the rule's name in CamelCase.
inline std::string FusedUpdateOpName(const char* rule) {
  std::string name = "Fusedopt";
  bool upper = true;
  for (const char* c = rule; *c != '\0'; ++c) {
    if (*c == '_') {
      upper = true;
    } else {
      name += upper ? char(std::toupper(static_cast<unsigned char>(*c))) : *c;
      upper = false;
    }
  }
  return name;
}

// Calls f(op_name, rule_id) for every rule of the engine, in id order.
template <class F>
void ForEachFusedUpdateOp(F&& f) {
  for (int rule = 0; rule < fusedopt_num_rules(); ++rule) f(FusedUpdateOpName(fusedopt_rule_name(rule)), rule);
}

// The rule of a fused update op, -1 if `op` is none.
inline int FusedUpdateRule(const std::string& op) {
  int found = -1;
  ForEachFusedUpdateOp([&](const std::string& name, int rule) {
    if (name == op) found = rule;
  });
  return found;
}

}  // namespace tensorflow
