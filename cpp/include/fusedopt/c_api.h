/* A plain C interface to the CPU engine (libfusedopt_engine), for adapters
 * compiled apart from the package, like the TensorFlow op library: a stable
 * ABI whatever C++ flags the adapter is built with.
 *
 * Contract. Every function that computes (fusedopt_apply*, the regularizer
 * and dropout functions) checks all of its arguments before it writes
 * anything and returns FUSEDOPT_OK (0) or a negative status:
 *   FUSEDOPT_ERROR_INVALID_ARGUMENT  a bad argument (unknown rule or dtype,
 *       NULL or misaligned buffer, negative size, inconsistent shape, a
 *       hyperparameter or scalar out of range or not finite, an output that
 *       overlaps another buffer); nothing was written;
 *   FUSEDOPT_ERROR_RUNTIME  the system failed the call (out of memory, the
 *       thread pool could not start); outputs may be partly written.
 * fusedopt_last_error() then gives a message naming the argument (and tensor
 * index); it is per thread and valid until that thread's next call. No
 * exception leaves these functions and no argument aborts the process. What
 * cannot be checked: that a non-NULL pointer really points to `size`
 * readable (writable) elements. Calls from several threads are serialized;
 * after fork() the child gets an engine of its own (its thread pool starts at
 * its first parallel call). Results are bitwise identical for any thread
 * count. */
#ifndef FUSEDOPT_C_API_H_
#define FUSEDOPT_C_API_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { FUSEDOPT_FLOAT32 = 0, FUSEDOPT_FLOAT64 = 1 };
enum { FUSEDOPT_OK = 0, FUSEDOPT_ERROR_INVALID_ARGUMENT = -1, FUSEDOPT_ERROR_RUNTIME = -2 };

/* The message of this thread's last failed call ("" after a success). */
const char* fusedopt_last_error(void);
/* Why FUSEDOPT_NUM_THREADS / OMP_NUM_THREADS was ignored (not a whole number
 * in 1..1024), or "". */
const char* fusedopt_config_warning(void);

/* The most state buffers a rule has (fusedopt_rule_num_states). */
#define FUSEDOPT_MAX_STATES 4

typedef struct fusedopt_tensor {
  void* param;
  const void* grad;
  void* state[FUSEDOPT_MAX_STATES];
  int64_t size;
  /* Adafactor's [batch, rows, cols] view of a rank >= 2 tensor. */
  int64_t batch, rows, cols;
  int32_t factored;
} fusedopt_tensor;

/* Rule queries: -1 when there is no rule of that name or id. Rule ids are
 * 0 .. fusedopt_num_rules() - 1, stable across releases (new rules are
 * appended). */
int fusedopt_num_rules(void);
/* A rule's name (e.g. "adam"), NULL when out of range. */
const char* fusedopt_rule_name(int rule);
int fusedopt_rule_id(const char* name);
int fusedopt_rule_num_states(int rule);
int fusedopt_rule_num_hyper(int rule);
int fusedopt_rule_factored_states(int rule);
int fusedopt_rule_needs_positive_learning_rate(int rule);
/* The name of hyperparameter (state) k of a rule, in the rule's order; NULL
 * when out of range. Adapters pass hyperparameters by these names. */
const char* fusedopt_rule_hyper_name(int rule, int k);
const char* fusedopt_rule_state_name(int rule, int k);
/* Hyperparameter k's default (Keras's); NaN when it has none (the caller
 * must pass it, e.g. Nadam's u_product) or when out of range. */
double fusedopt_rule_hyper_default(int rule, int k);
/* NULL when the hyperparameters (fusedopt_rule_num_hyper(rule) values) are
 * valid, else a message naming the bad one. */
const char* fusedopt_rule_validate(int rule, const double* hyper);

/* One step over `n` tensors, each with fusedopt_rule_num_states(rule) state
 * buffers of `size` elements (Adafactor's factored tensors: [batch, rows]
 * and [batch, cols] statistics, unused otherwise), `hyper` in the rule's
 * order, step >= 1, learning_rate >= 0. Weight decay p -= p * decay is
 * applied first. */
int fusedopt_apply(int rule, int dtype, const fusedopt_tensor* tensors, int64_t n,
                    const double* hyper, int64_t step, double learning_rate, double decay);
/* fusedopt_apply with regularization fused into the same pass (all >= 0,
 * 0 = off; fusedopt/regularizers.h): the coupled gradient
 * g += l1 * sign(p) + 2 * l2 * p from p before the decay, and after the rule
 * the proximal step p = soft_threshold(p, learning_rate * proximal_l1). */
int fusedopt_apply_regularized(int rule, int dtype, const fusedopt_tensor* tensors, int64_t n,
                                const double* hyper, int64_t step, double learning_rate,
                                double decay, double l1, double l2, double proximal_l1);

/* Regularizers over one tensor of `size` elements (fusedopt/regularizers.h),
 * multi-threaded, the same result for every thread count. `w0` may be NULL
 * (zeros). */
/* sum |w - w0| and sum (w - w0)^2, accumulated in double. */
int fusedopt_regularizer_sums(int dtype, const void* w, const void* w0, int64_t size,
                               double* sum_abs, double* sum_squares);
/* out = l1 * sign(w) + 2 * l2 * w (Keras's L1L2 gradient; a zero strength's
 * term is left out). In the gradient functions `out` may be `w` (or `w0`)
 * itself, in place, but not overlap it otherwise. */
int fusedopt_l1l2_gradient(int dtype, const void* w, void* out, int64_t size, double l1,
                            double l2);
/* out = alpha * (w - w0) (the L2-SP gradient; w0 NULL: alpha * w). */
int fusedopt_l2sp_gradient(int dtype, const void* w, const void* w0, void* out, int64_t size,
                            double alpha);

/* Dropout (fusedopt/dropout.h): out = keep ? in * 1/(1 - rate) : 0 over a
 * tensor of shape x_shape[rank], the keep bits over noise_shape[rank] (each
 * entry 1 or x's) broadcast over it. The bits come from the Philox stream of
 * the TF stateless seed pair (seed0, seed1) when mask_in is NULL, else from
 * the packed mask_in; mask_out (may be NULL) receives them, ceil(noise
 * elements / 8) bytes, element j at bit j % 8 of byte j / 8. `out` may be
 * `in` (in place) but not overlap it otherwise. */
int fusedopt_dropout(int dtype, const void* in, void* out, const int64_t* x_shape,
                             const int64_t* noise_shape, int rank, double rate, uint64_t seed0,
                             uint64_t seed1, const uint8_t* mask_in, uint8_t* mask_out);

#ifdef __cplusplus
}
#endif

#endif /* FUSEDOPT_C_API_H_ */
