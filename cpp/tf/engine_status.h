// The engine's C API status as a TensorFlow status, for every kernel of the
// op library.
#pragma once

#include "fusedopt/c_api.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tensorflow {

// Its message comes from fusedopt_last_error, read on the thread that made
// the call.
inline absl::Status EngineStatus(int status, const char* what) {
  if (status == FUSEDOPT_OK) return absl::OkStatus();
  if (status == FUSEDOPT_ERROR_INVALID_ARGUMENT) return errors::InvalidArgument(what, ": ", fusedopt_last_error());
  return errors::Internal(what, " failed: ", fusedopt_last_error());
}

}  // namespace tensorflow
