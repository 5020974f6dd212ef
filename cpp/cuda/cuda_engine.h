// The CUDA engine's launchers: plain C++ over device pointers, no CUDA
// headers, so that the bindings and the C API include it with any compiler.
// The kernels (cpp/cuda/*.cu) call the same math headers as the CPU engine:
// fusedopt/rules/*.h, fusedopt/regularizers.h, fusedopt/dropout.h.
//
// Every launcher validates nothing about the data (callers do, before
// anything is written), switches to `device` for the call, runs on `stream`
// (a cudaStream_t; nullptr is the legacy default stream), does not wait for
// the kernels to finish (except where a result comes back to the host), and
// returns an empty Status on success or a message on a CUDA error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fusedopt/common.h"

namespace fusedopt {
struct NoiseBroadcast;  // dropout_ops.h
struct RegTensor;       // regularizer_ops.h
namespace dropout {
struct Stream;  // fusedopt/dropout.h
}
}  // namespace fusedopt

namespace fusedopt::cuda {

// The same values as the C API's FUSEDOPT_FLOAT32 ... FUSEDOPT_BFLOAT16.
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };
int itemsize(DType dtype);
const char* dtype_name(DType dtype);

constexpr int kMaxStates = 4;

// One tensor of an update, as the CPU engine's TensorRef.
struct Tensor {
  void* param = nullptr;
  const void* grad = nullptr;
  void* state[kMaxStates] = {};
  int64_t size = 0;
  int64_t batch = 1, rows = 1, cols = 1;  // Adafactor's [batch, rows, cols] view
  bool factored = false;
};

// As the CPU engine's Update: hyperparameters in the rule's kHyperNames
// order, then decoupled decay (wd * lr) and the fused regularization.
struct Update {
  const double* hyper = nullptr;
  StepArgs step;
  double decay = 0.0;
  double l1 = 0.0, l2 = 0.0, proximal_l1 = 0.0;
};

// Empty on success, else what failed.
using Status = std::string;

// Devices the CUDA runtime sees: 0 without a driver or a device (never throws;
// the runtime loads the driver library lazily, at this first call).
int device_count();
// Why device_count() is 0 ("" when it is not).
std::string no_device_reason();
// The CUDA runtime version this engine was built with, e.g. 13000.
int runtime_version();
// The device that owns `ptr`, or -1 (with a reason in `why`) when `ptr` is not
// device or managed memory that this process can use.
int pointer_device(const void* ptr, std::string* why);

// One step of rule `rule_id` (the FUSEDOPT_FOR_EACH_RULE order) over `tensors`.
Status apply(int rule_id, DType dtype, const std::vector<Tensor>& tensors, const Update& update,
             int device, void* stream);

// Dropout (see dropout_ops.h's DropoutCall; float32 and float64). `scratch`
// is allocated on the stream where a noise shape needs generated bits and no
// mask is stored.
struct DropoutArgs {
  DType dtype = DType::kFloat32;
  const void* in = nullptr;
  void* out = nullptr;
  int64_t size = 0;
  double rate = 0.0;
  const NoiseBroadcast* noise = nullptr;
  const dropout::Stream* stream = nullptr;  // generate the bits, or
  const uint8_t* mask_in = nullptr;         // read them;
  uint8_t* mask_out = nullptr;              // store them (ceil(noise_size / 8) bytes)
};
Status dropout(const DropoutArgs& args, int device, void* stream);

// The regularizer kernels of regularizer_ops.h over device pointers.
// `sums` waits for the stream: its results land in host vectors.
Status regularizer_sums(DType dtype, const std::vector<RegTensor>& tensors,
                        std::vector<double>* sum_abs, std::vector<double>* sum_squares, int device,
                        void* stream);
Status l1l2_gradient(DType dtype, const std::vector<RegTensor>& tensors, double l1, double l2,
                     int device, void* stream);
Status l2sp_gradient(DType dtype, const std::vector<RegTensor>& tensors, double alpha, double beta,
                     int device, void* stream);
Status proximal_step(DType dtype, const std::vector<RegTensor>& tensors, double lr, double l1,
                     double l2, int device, void* stream);

// Waits for `stream` (tests and benchmarks).
Status synchronize(int device, void* stream);

}  // namespace fusedopt::cuda
