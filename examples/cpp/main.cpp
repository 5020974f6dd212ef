// One Adam step over four floats through fusedopt's C API (fusedopt/c_api.h),
// checked against the same step computed here by hand, then two bad calls
// that must be refused with FUSEDOPT_ERROR_INVALID_ARGUMENT and a message.
// Exit code 0 only if every check holds.
#include <fusedopt/c_api.h>
#include <fusedopt/c_api_cuda.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {

constexpr int kSize = 4;
constexpr double kLearningRate = 0.01;
constexpr double kBeta1 = 0.9, kBeta2 = 0.999, kEpsilon = 1e-7;  // Keras's defaults

// The engine orders hyperparameters its own way: ask it for each name.
bool hyper_by_name(const char* name, double* value) {
  if (std::strcmp(name, "beta_1") == 0) *value = kBeta1;
  else if (std::strcmp(name, "beta_2") == 0) *value = kBeta2;
  else if (std::strcmp(name, "epsilon") == 0) *value = kEpsilon;
  else return false;
  return true;
}

bool expect_invalid_argument(const char* what, int status) {
  const bool ok = status == FUSEDOPT_ERROR_INVALID_ARGUMENT && fusedopt_last_error()[0] != '\0';
  std::printf("%s: status %d, message \"%s\" (%s)\n", what, status, fusedopt_last_error(),
              ok ? "refused as expected" : "FAILED: expected FUSEDOPT_ERROR_INVALID_ARGUMENT");
  return ok;
}

}  // namespace

int main() {
  const int adam = fusedopt_rule_id("adam");
  if (adam < 0) {
    std::printf("FAILED: the engine has no rule \"adam\"\n");
    return 1;
  }
  const int num_states = fusedopt_rule_num_states(adam);
  if (num_states != 2) {
    std::printf("FAILED: adam has %d states, this example gives 2\n", num_states);
    return 1;
  }
  const int num_hyper = fusedopt_rule_num_hyper(adam);
  std::vector<double> hyper(num_hyper);
  for (int k = 0; k < num_hyper; ++k) {
    const char* name = fusedopt_rule_hyper_name(adam, k);
    if (!hyper_by_name(name, &hyper[k])) {
      std::printf("FAILED: adam has a hyperparameter this example does not know: %s\n", name);
      return 1;
    }
  }

  const float initial[kSize] = {1.0f, -2.0f, 0.5f, 3.0f};
  const float grad[kSize] = {0.1f, -0.2f, 0.3f, -4.0f};
  float param[kSize], momentum[kSize] = {}, velocity[kSize] = {};
  std::memcpy(param, initial, sizeof param);

  fusedopt_tensor tensor = {};
  tensor.param = param;
  tensor.grad = grad;
  tensor.state[0] = momentum;  // adam's states: momentum, velocity
  tensor.state[1] = velocity;
  tensor.size = kSize;

  const int status = fusedopt_apply(adam, FUSEDOPT_FLOAT32, &tensor, 1, hyper.data(), /*step=*/1,
                                    kLearningRate, /*decay=*/0.0);
  if (status != FUSEDOPT_OK) {
    std::printf("FAILED: fusedopt_apply returned %d: %s\n", status, fusedopt_last_error());
    return 1;
  }

  // Step 1 by hand, as keras.optimizers.Adam computes it (fusedopt/rules/adam.h):
  // from zero slots m = (1 - b1) g, v = (1 - b2) g^2, p -= alpha m / (sqrt(v) + eps)
  // with alpha = lr sqrt(1 - b2^1) / (1 - b1^1) (epsilon outside the square root).
  bool all_close = true;
  const double alpha = kLearningRate * std::sqrt(1.0 - kBeta2) / (1.0 - kBeta1);
  std::printf("adam step 1: learning_rate=%.9g beta_1=%.9g beta_2=%.9g epsilon=%.9g\n",
              kLearningRate, kBeta1, kBeta2, kEpsilon);
  for (int i = 0; i < kSize; ++i) {
    const double m = (1.0 - kBeta1) * grad[i];
    const double v = (1.0 - kBeta2) * double(grad[i]) * grad[i];
    const double expected = initial[i] - alpha * m / (std::sqrt(v) + kEpsilon);
    // The engine computes in float: agree within float rounding.
    const bool close = std::fabs(param[i] - expected) <= 1e-6 * (1.0 + std::fabs(expected));
    all_close = all_close && close;
    std::printf("param[%d]: %.9g -> %.9g (by hand %.9g)%s\n", i, initial[i], param[i], expected,
                close ? "" : "  FAILED");
  }

  // Bad calls: refused, with a message, and nothing written.
  float param_before[kSize], momentum_before[kSize], velocity_before[kSize];
  std::memcpy(param_before, param, sizeof param);
  std::memcpy(momentum_before, momentum, sizeof momentum);
  std::memcpy(velocity_before, velocity, sizeof velocity);
  // (Each message is read right after its call: fusedopt_last_error() is the last call's.)
  const int unknown_rule = fusedopt_apply(fusedopt_rule_id("no_such_rule"), FUSEDOPT_FLOAT32,
                                          &tensor, 1, hyper.data(), 2, kLearningRate, 0.0);
  bool refused = expect_invalid_argument("unknown rule", unknown_rule);
  fusedopt_tensor no_grad = tensor;
  no_grad.grad = nullptr;
  const int null_grad = fusedopt_apply(adam, FUSEDOPT_FLOAT32, &no_grad, 1, hyper.data(), 2,
                                       kLearningRate, 0.0);
  refused = expect_invalid_argument("NULL grad", null_grad) && refused;
  if (std::memcmp(param_before, param, sizeof param) != 0 ||
      std::memcmp(momentum_before, momentum, sizeof momentum) != 0 ||
      std::memcmp(velocity_before, velocity, sizeof velocity) != 0) {
    std::printf("FAILED: a refused call changed the parameters or the slots\n");
    refused = false;
  }

  // Every build exports the CUDA entry points; 0 without the CUDA kernels.
  std::printf("cuda kernels compiled: %d\n", fusedopt_cuda_compiled());

  const bool ok = all_close && refused;
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
