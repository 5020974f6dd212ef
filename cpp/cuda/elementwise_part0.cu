// Part 0 of the elementwise rules' kernels: every elementwise rule whose id
// is 0 modulo kElementwiseParts (launchers.h).
#include "elementwise_part.cuh"

namespace fusedopt::cuda {
template RuleFn elementwise_part<0>(int rule_id);
}  // namespace fusedopt::cuda
