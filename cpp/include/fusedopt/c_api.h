/* A plain C interface to the CPU engine (libfusedopt_engine), for adapters
 * compiled apart from the package, like the TensorFlow op library: a stable
 * ABI whatever C++ flags the adapter is built with. */
#ifndef FUSEDOPT_C_API_H_
#define FUSEDOPT_C_API_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { FUSEDOPT_FLOAT32 = 0, FUSEDOPT_FLOAT64 = 1 };

typedef struct fusedopt_tensor {
  void* param;
  const void* grad;
  void* state[3];
  int64_t size;
  /* Adafactor's [batch, rows, cols] view of a rank >= 2 tensor. */
  int64_t batch, rows, cols;
  int32_t factored;
} fusedopt_tensor;

/* -1 when there is no rule of that name. */
int fusedopt_rule_id(const char* name);
int fusedopt_rule_num_states(int rule);
int fusedopt_rule_num_hyper(int rule);
int fusedopt_rule_factored_states(int rule);
int fusedopt_rule_needs_positive_learning_rate(int rule);
/* NULL when the hyperparameters are valid, else a message naming the bad one. */
const char* fusedopt_rule_validate(int rule, const double* hyper);

/* One step over `n` tensors; arguments must already be validated. Weight
 * decay p -= p * decay is applied first. */
void fusedopt_apply(int rule, int dtype, const fusedopt_tensor* tensors, int64_t n,
                    const double* hyper, int64_t step, double learning_rate, double decay);

#ifdef __cplusplus
}
#endif

#endif /* FUSEDOPT_C_API_H_ */
