// The per-rule launchers the CUDA engine dispatches to: Lamb's and Adafactor's
// drivers (lamb.cu, adafactor.cu), and every other rule of
// FUSEDOPT_FOR_EACH_RULE through the one elementwise kernel, instantiated in
// the elementwise_part*.cu translation units (split so that a parallel build
// compiles them side by side).
#pragma once

#include <cuda_runtime.h>

#include <type_traits>
#include <vector>

#include "cuda_engine.h"
#include "fusedopt/rules.h"

namespace fusedopt::cuda {

using RuleFn = void (*)(DType, const std::vector<Tensor>&, const Update&, cudaStream_t);

void run_lamb(DType dtype, const std::vector<Tensor>& tensors, const Update& u,
              cudaStream_t stream);
void run_adafactor(DType dtype, const std::vector<Tensor>& tensors, const Update& u,
                   cudaStream_t stream);

// The rule id of Rule: its position in FUSEDOPT_FOR_EACH_RULE (-1 if absent).
template <class Rule> constexpr int id_of() {
  int id = -1, position = 0;
#define FUSEDOPT_RULE_ID(R)                          \
  if (std::is_same_v<Rule, rules::R>) id = position; \
  ++position;
  FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_RULE_ID)
#undef FUSEDOPT_RULE_ID
  return id;
}

#define FUSEDOPT_RULE_COUNT(R) +1
constexpr int kNumRules = 0 FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_RULE_COUNT);
#undef FUSEDOPT_RULE_COUNT

// Every rule but Lamb and Adafactor runs the elementwise kernel.
template <class Rule> constexpr bool is_elementwise() {
  return !std::is_same_v<Rule, rules::Lamb> && !std::is_same_v<Rule, rules::Adafactor>;
}

// The elementwise rules are dealt out by rule id over kElementwiseParts
// translation units: part K (elementwise_part<K>.cu) instantiates the kernel
// for every elementwise rule whose id is K modulo kElementwiseParts. Dealing
// them out from the rule list itself means a rule added to
// FUSEDOPT_FOR_EACH_RULE gets its CUDA kernel with no edit in cpp/cuda.
constexpr int kElementwiseParts = 4;

// Part `Part`'s launcher for rule `rule_id`, or nullptr where the rule is not
// that part's (defined in elementwise_part.cuh, instantiated once per part).
template <int Part> RuleFn elementwise_part(int rule_id);

}  // namespace fusedopt::cuda
