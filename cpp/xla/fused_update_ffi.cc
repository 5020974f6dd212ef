// The XLA FFI handler library JAX loads (see fused_update_ffi.h).
#define FUSEDOPT_FFI_HANDLER_SYMBOL fusedopt_fused_update
#include "fused_update_ffi.h"
