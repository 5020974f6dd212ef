/* The CUDA half of the engine's C API (libfusedopt_engine), next to
 * fusedopt/c_api.h: the same rules and tensor records over device pointers.
 * Every build exports these functions; a build without CUDA reports
 * fusedopt_cuda_compiled() == 0 and no devices. */
#ifndef FUSEDOPT_C_API_CUDA_H_
#define FUSEDOPT_C_API_CUDA_H_

#include <stdint.h>

#include "c_api.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Storage dtypes beyond FUSEDOPT_FLOAT32 / FUSEDOPT_FLOAT64 that the CUDA
 * kernels take (computed in float32). */
enum { FUSEDOPT_FLOAT16 = 2, FUSEDOPT_BFLOAT16 = 3 };

/* 1 when the engine was built with its CUDA kernels. */
int fusedopt_cuda_compiled(void);
/* The number of CUDA devices usable now: 0 without CUDA support, a driver or
 * a device (never fails; the driver is loaded at the first call). */
int fusedopt_cuda_available(void);
/* The message of this thread's last failed fusedopt_cuda_* call. */
const char* fusedopt_cuda_last_error(void);

/* One step over `n` tensors in device memory, on the device that owns the
 * first nonempty tensor's param, queued on `stream` (a cudaStream_t; NULL is
 * the legacy default stream), not waited for. Arguments must already be
 * validated, as for fusedopt_apply. Returns 0, or -1 with
 * fusedopt_cuda_last_error() saying why. */
int fusedopt_cuda_apply(int rule, int dtype, const fusedopt_tensor* tensors, int64_t n,
                        const double* hyper, int64_t step, double learning_rate, double decay,
                        void* stream);

#ifdef __cplusplus
}
#endif

#endif /* FUSEDOPT_C_API_CUDA_H_ */
