// How a parameter's shape maps onto the engine's tensor record, for every
// adapter (pybind11, TensorFlow, XLA FFI, C++ users): Adafactor's factored
// statistics and its [batch, rows, cols] view.
#pragma once

#include <cstdint>
#include <vector>

#include "fusedopt/c_api.h"

namespace fusedopt {

// The shape of a factored rule's row (which = 0) or column (which = 1)
// statistic: shape[:-1] and shape[:-2] + shape[-1:] for rank >= 2, a 0-d
// placeholder otherwise (such tensors keep a full second moment).
template <class Int> std::vector<Int> factored_shape(const std::vector<Int>& shape, int which) {
  if (shape.size() < 2) return {};
  std::vector<Int> out(shape.begin(), shape.end() - 2);
  out.push_back(which == 0 ? shape[shape.size() - 2] : shape.back());
  return out;
}

// Sets a tensor record's size and, for a factored rule's rank >= 2 tensor,
// its [batch, rows, cols] view (batch = the product of the leading
// dimensions). `Record`: fusedopt_tensor or the engine's own records;
// `Shape`: any container of integer dimensions.
template <class Record, class Shape> void set_layout(Record* t, const Shape& shape, bool factored) {
  int64_t size = 1;
  for (auto d : shape) size *= int64_t(d);
  t->size = size;
  t->batch = t->rows = t->cols = 1;
  t->factored = false;
  if (factored && shape.size() >= 2) {
    t->factored = true;
    t->rows = int64_t(shape[shape.size() - 2]);
    t->cols = int64_t(shape.back());
    t->batch = t->rows * t->cols == 0 ? 0 : size / (t->rows * t->cols);
  }
}

}  // namespace fusedopt
