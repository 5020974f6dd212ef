// Shape-function checks shared by the op registrations.
#pragma once

#include <string>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tensorflow {

// Input `index` must have rank `rank` (and `length` entries if >= 0) where
// its shape is known; the error names the input. The kernel checks again
// (eager calls and unknown shapes).
inline absl::Status InputOfRank(shape_inference::InferenceContext* c, int index, int rank, const char* name,
                                int64_t length = -1) {
  shape_inference::ShapeHandle shape;
  shape_inference::DimensionHandle unused;
  if (!c->WithRank(c->input(index), rank, &shape).ok() ||
      (length >= 0 && !c->WithValue(c->Dim(shape, 0), length, &unused).ok()))
    return errors::InvalidArgument(name, " must have rank ", rank,
                                   length >= 0 ? absl::StrCat(" and ", length, " entries") : std::string(),
                                   ", got shape ", c->DebugString(c->input(index)));
  return absl::OkStatus();
}

}  // namespace tensorflow
