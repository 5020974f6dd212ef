// The C API's CUDA entry points (fusedopt/c_api_cuda.h). Compiled in every
// build: without FUSEDOPT_WITH_CUDA they report that CUDA is not compiled.
#include "fusedopt/c_api_cuda.h"

#include <string>
#include <vector>

#ifdef FUSEDOPT_WITH_CUDA
#include "../src/validation.h"
#include "cuda_engine.h"
#endif

namespace {
thread_local std::string last_error;

int fail(std::string message) {
  last_error = std::move(message);
  return -1;
}
}  // namespace

extern "C" {

const char* fusedopt_cuda_last_error(void) { return last_error.c_str(); }

#ifdef FUSEDOPT_WITH_CUDA

int fusedopt_cuda_compiled(void) { return 1; }
int fusedopt_cuda_available(void) { return fusedopt::cuda::device_count(); }

int fusedopt_cuda_apply(int rule, int dtype, const fusedopt_tensor* tensors, int64_t n,
                        const double* hyper, int64_t step, double learning_rate, double decay,
                        void* stream) {
  using namespace fusedopt::cuda;
  if (dtype < FUSEDOPT_FLOAT32 || dtype > FUSEDOPT_BFLOAT16)
    return fail("unknown dtype " + std::to_string(dtype));
  if (n < 0 || (n > 0 && tensors == nullptr)) return fail("tensors must hold n >= 0 records");
  {
    fusedopt::Update checked;
    checked.hyper = hyper;
    checked.step = fusedopt::StepArgs{step, learning_rate};
    checked.decay = decay;
    if (auto err = fusedopt::validate_update(rule, checked); !err.empty()) return fail(err);
  }
  std::vector<Tensor> batch(size_t(n > 0 ? n : 0));
  int device = -1;
  for (int64_t i = 0; i < n; ++i) {
    const fusedopt_tensor& in = tensors[i];
    fusedopt::copy_tensor_record(in, &batch[size_t(i)]);
    if (device < 0 && in.size > 0) {
      std::string why;
      device = pointer_device(in.param, &why);
      if (device < 0) return fail("tensors[" + std::to_string(i) + "].param: " + why);
    }
  }
  if (device < 0) return 0;  // nothing to update
  Update update;
  update.hyper = hyper;
  update.step = fusedopt::StepArgs{step, learning_rate};
  update.decay = decay;
  const Status status = apply(rule, DType(dtype), batch, update, device, stream);
  return status.empty() ? 0 : fail(status);
}

#else  // no CUDA in this build

int fusedopt_cuda_compiled(void) { return 0; }
int fusedopt_cuda_available(void) { return 0; }
int fusedopt_cuda_apply(int, int, const fusedopt_tensor*, int64_t, const double*, int64_t, double,
                        double, void*) {
  return fail("fusedopt was built without CUDA (FUSEDOPT_CUDA=OFF or no CUDA compiler)");
}

#endif

}  // extern "C"
