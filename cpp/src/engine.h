// The CPU engine: applies one update rule to a list of tensors in one call.
// Work is split into a flat list of fixed-size chunks (independent of the
// thread count, so reductions are reproducible), run in one parallel region
// of a persistent thread pool, with kernels compiled per ISA.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "fusedopt/common.h"

namespace fusedopt {

enum class DType { kFloat32, kFloat64 };
constexpr int kMaxStates = 4;  // Adan's four

struct TensorRef {
  void* param = nullptr;
  const void* grad = nullptr;
  void* state[kMaxStates] = {};
  int64_t size = 0;
  // Adafactor's view of a rank >= 2 tensor: [batch, rows, cols].
  int64_t batch = 1, rows = 1, cols = 1;
  bool factored = false;
};

struct Batch {
  DType dtype = DType::kFloat32;
  std::vector<TensorRef> tensors;
};

struct Update {
  const double* hyper = nullptr;  // the rule's hyperparameters, in its kHyperNames order
  StepArgs step;
  double decay = 0.0;  // decoupled weight decay factor (weight_decay * lr), applied first
  // Regularization fused into the same pass (fusedopt/regularizers.h); 0 = off.
  // Coupled, from p before the decay: g <- g + l1 * sign(p) + 2 * l2 * p.
  double l1 = 0.0, l2 = 0.0;
  // Proximal L1 after the rule: p <- soft_threshold(p, learning_rate * proximal_l1).
  double proximal_l1 = 0.0;
};

// Static description of a rule, for validation and for the bindings.
struct RuleInfo {
  int id;
  std::string name;
  std::vector<std::string> hyper_names;
  std::vector<std::string> state_names;
  std::vector<double> hyper_defaults;  // kRequired (NaN): no default
  const char* (*validate)(const double*);
  bool factored_states;  // Adafactor: states 0 and 1 are row/column statistics
  bool needs_positive_learning_rate;
};

const std::vector<RuleInfo>& rule_table();
const RuleInfo* find_rule(const std::string& name);

// Runs one step of rule `rule_id` over every tensor of `batch`. Inputs must
// already be validated (validate_apply). Calls from several threads are
// serialized. Throws what a kernel throws (std::bad_alloc) or
// std::runtime_error when the thread pool cannot start; a fork() waits for a
// running call, and the child starts a pool of its own.
void apply(int rule_id, const Batch& batch, const Update& update);

// The memory-bandwidth roofline for a rule: each output o_k <- o_k + input,
// with the same chunking and threads as `apply`, so a rule that reads and
// writes the same bytes can be compared with it. Pointers are float or double.
void stream_roofline(DType dtype, const std::vector<std::vector<void*>>& outputs,
                     const std::vector<const void*>& inputs, const std::vector<int64_t>& sizes);

// Threads: 1 means the calling thread only. set_num_threads throws
// std::invalid_argument outside 1..kMaxThreads and std::runtime_error when the
// system cannot start the threads (the engine then keeps its pool). The
// default is FUSEDOPT_NUM_THREADS, else OMP_NUM_THREADS, else the CPU count.
constexpr int kMaxThreads = 1024;
void set_num_threads(int n);
int get_num_threads();
// Why a thread-count environment variable was ignored, or "".
std::string config_warning();

// Instruction-set dispatch.
std::string active_isa();
std::vector<std::string> available_isas();
void set_isa(const std::string& name);  // throws std::invalid_argument

// Chunking, shared by every ISA's kernels.
constexpr int64_t kChunkElements = int64_t(1) << 16;
struct Chunk {
  int32_t tensor;
  int64_t begin, end;
};
// The fixed chunk list of a batch: tensors in order, each cut every kChunkElements.
std::vector<Chunk> make_chunks(const Batch& batch);
// Runs fn(chunk_index) for every chunk, grouping small chunks into tasks of
// about kChunkElements, in parallel when the total is large enough.
void for_each_chunk(const std::vector<Chunk>& chunks,
                    const std::function<void(size_t)>& fn);
// Runs fn(i) for i in [0, n), one task each, in parallel.
void for_each_index(size_t n, const std::function<void(size_t)>& fn);
// Runs fn(active ISA name) holding the engine lock, so that kernels other than
// `apply` (regularizers, dropout) may call for_each_chunk / for_each_index.
void run_exclusive(const std::function<void(const std::string& isa)>& fn);

}  // namespace fusedopt
