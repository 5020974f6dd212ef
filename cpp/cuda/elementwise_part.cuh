// One part of the elementwise rules' kernels (see kElementwiseParts in
// launchers.h): included by elementwise_part<K>.cu, which instantiates
// elementwise_part<K>.
#pragma once

#include "elementwise.cuh"
#include "launchers.h"

namespace fusedopt::cuda {

// run_elementwise<Rule> if part `Part` holds Rule, else nullptr. `if
// constexpr` keeps every other part from instantiating (compiling) the kernel.
template <int Part, class Rule> constexpr RuleFn part_launcher() {
  if constexpr (is_elementwise<Rule>() && id_of<Rule>() % kElementwiseParts == Part)
    return &run_elementwise<Rule>;
  else
    return nullptr;
}

template <int Part> RuleFn elementwise_part(int rule_id) {
  static_assert(Part >= 0 && Part < kElementwiseParts);
  static constexpr RuleFn kLaunchers[] = {
#define FUSEDOPT_PART_LAUNCHER(R) part_launcher<Part, rules::R>(),
      FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_PART_LAUNCHER)
#undef FUSEDOPT_PART_LAUNCHER
  };
  return rule_id >= 0 && rule_id < kNumRules ? kLaunchers[rule_id] : nullptr;
}

}  // namespace fusedopt::cuda
