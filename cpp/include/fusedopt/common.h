// Shared vocabulary of the update-rule headers: the host/device qualifier,
// the "opmath" type every rule computes in, and the per-step arguments.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FUSEDOPT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FUSEDOPT_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace fusedopt {

// Rules compute in float for float/half/bfloat16 storage and in double for
// double storage (as PyTorch's opmath_type does).
template <class T> struct opmath { using type = float; };
template <> struct opmath<double> { using type = double; };
template <class T> using opmath_t = typename opmath<T>::type;

// What changes from one step to the next; hyperparameters stay in a flat
// `const double*` indexed by each rule's `Hyper` enum.
struct StepArgs {
  int64_t step = 1;            // 1-based: Keras's `iterations + 1`
  double learning_rate = 0.0;  // already evaluated for this step
};

// NaN in, NaN out, as TF's (Keras's) sign, maximum and minimum: a NaN state
// or gradient must not be silently replaced by a number.
template <class T> FUSEDOPT_HOST_DEVICE T sign_of(T x) {
  return x != x ? x : static_cast<T>((x > T(0)) - (x < T(0)));
}

template <class T> FUSEDOPT_HOST_DEVICE T max_of(T a, T b) { return (a > b || a != a) ? a : b; }
template <class T> FUSEDOPT_HOST_DEVICE T min_of(T a, T b) { return (a < b || a != a) ? a : b; }

// A hyperparameter default (kHyperDefaults) that is not a number: the caller
// must pass the value (e.g. Nadam's running u_product).
constexpr double kRequired = __builtin_nan("");

// Validation helpers for hyperparameters.
inline bool in_unit_interval_open_right(double x) { return x >= 0.0 && x < 1.0; }

}  // namespace fusedopt
