// The CUDA engine's entry points: device queries and the rule dispatch.
#include "device_common.cuh"
#include "fusedopt/rules.h"
#include "launchers.h"

namespace fusedopt::cuda {

int itemsize(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "unknown";
}

namespace {

struct DeviceQuery {
  int count = 0;
  std::string reason;
};

DeviceQuery query_devices() {
  DeviceQuery q;
  const cudaError_t err = cudaGetDeviceCount(&q.count);
  if (err != cudaSuccess) {
    q.count = 0;
    q.reason = std::string("no usable CUDA driver or device (") + cudaGetErrorName(err) + ": " +
               cudaGetErrorString(err) + ")";
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
  } else if (q.count == 0) {
    q.reason = "the CUDA runtime found no device";
  }
  return q;
}

const DeviceQuery& devices() {
  static const DeviceQuery q = query_devices();
  return q;
}

// Rule id -> launcher: Lamb and Adafactor have drivers of their own; every
// other rule's elementwise kernel is in part (id % kElementwiseParts).
RuleFn rule_launcher(int rule_id) {
  if (rule_id == id_of<rules::Lamb>()) return &run_lamb;
  if (rule_id == id_of<rules::Adafactor>()) return &run_adafactor;
  constexpr RuleFn (*kParts[])(int) = {&elementwise_part<0>, &elementwise_part<1>,
                                       &elementwise_part<2>, &elementwise_part<3>};
  static_assert(sizeof(kParts) / sizeof(kParts[0]) == kElementwiseParts);
  return kParts[rule_id % kElementwiseParts](rule_id);
}

}  // namespace

int device_count() { return devices().count; }
std::string no_device_reason() { return devices().reason; }

int runtime_version() { return CUDART_VERSION; }

int pointer_device(const void* ptr, std::string* why) {
  if (device_count() == 0) {
    if (why) *why = "no CUDA device: " + no_device_reason();
    return -1;
  }
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
  if (err != cudaSuccess) {
    cudaGetLastError();
    if (why) *why = std::string("cudaPointerGetAttributes failed: ") + cudaGetErrorName(err);
    return -1;
  }
  if (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) {
    if (why) *why = "its data pointer is not CUDA device memory";
    return -1;
  }
  return attr.device;
}

Status apply(int rule_id, DType dtype, const std::vector<Tensor>& tensors, const Update& update,
             int device, void* stream) {
  if (rule_id < 0 || rule_id >= kNumRules) return "unknown rule id " + std::to_string(rule_id);
  const RuleFn launch = rule_launcher(rule_id);
  if (launch == nullptr) return "no CUDA kernel for rule id " + std::to_string(rule_id);
  return guarded(device, [&] { launch(dtype, tensors, update, static_cast<cudaStream_t>(stream)); });
}

Status synchronize(int device, void* stream) {
  return guarded(device, [&] {
    check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
  });
}

}  // namespace fusedopt::cuda
