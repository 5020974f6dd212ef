// Argument checks at the engine's boundary, for every caller that does not
// check for itself (the C API: TF op library, C++ users). Each returns "" when
// the call is valid, else a message naming the argument (and tensor index).
// Nothing here writes anything.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine.h"
#include "fusedopt/c_api.h"

namespace fusedopt {

// The engine's tensor record (TensorRef, or the CUDA engine's) from the C
// API's.
template <class Record>
void copy_tensor_record(const fusedopt_tensor& in, Record* t) {
  static_assert(sizeof(t->state) / sizeof(t->state[0]) == FUSEDOPT_MAX_STATES, "state slots");
  t->param = in.param;
  t->grad = in.grad;
  for (int k = 0; k < kMaxStates; ++k) t->state[k] = in.state[k];
  t->size = in.size;
  t->batch = in.batch;
  t->rows = in.rows;
  t->cols = in.cols;
  t->factored = in.factored != 0;
}

// A byte range of one argument, for the overlap checks.
struct ByteSpan {
  uintptr_t begin = 0, end = 0;
  std::string name;
};
inline ByteSpan byte_span(const void* p, int64_t elements, int64_t element_size, std::string name) {
  const auto b = reinterpret_cast<uintptr_t>(p);
  return ByteSpan{b, b + uintptr_t(elements) * uintptr_t(element_size), std::move(name)};
}
// No output span may overlap another output or an input: "" or a message
// "<a> shares memory with <b>". Shared by the C API and the pybind11 checks.
std::string check_no_overlap(std::vector<ByteSpan> outputs, const std::vector<ByteSpan>& inputs);
// `spans` without the empty ones (an empty buffer is never read or written).
std::vector<ByteSpan> nonempty(std::vector<ByteSpan> spans);
// A buffer of `elements` values of `element_size` bytes: null only when empty,
// aligned to its element size; `elements` in range.
std::string check_buffer(const void* p, int64_t elements, int64_t element_size, const std::string& name);
int64_t element_size(DType dtype);

// The rule id, the scalars (step >= 1, finite learning_rate >= 0, > 0 where
// the rule needs it; finite decay, l1, l2, proximal_l1 >= 0) and the
// hyperparameters (finite, in the rule's ranges): what every device checks.
std::string validate_update(int rule_id, const Update& update);

// Everything `apply` needs: the rule, the scalars (step >= 1, finite
// learning_rate >= 0, > 0 where the rule needs it; finite decay, l1, l2,
// proximal_l1 >= 0), the hyperparameters (finite, in the rule's ranges), and
// each tensor's buffers (present, aligned, Adafactor's factored view
// consistent), with no output overlapping any other buffer.
std::string validate_apply(int rule_id, const Batch& batch, const Update& update);

}  // namespace fusedopt
