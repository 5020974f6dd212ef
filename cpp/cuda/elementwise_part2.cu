// Part 2 of the elementwise rules' kernels: every elementwise rule whose id
// is 2 modulo kElementwiseParts (launchers.h).
#include "elementwise_part.cuh"

namespace fusedopt::cuda {
template RuleFn elementwise_part<2>(int rule_id);
}  // namespace fusedopt::cuda
