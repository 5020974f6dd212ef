#include "engine.h"

#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "fusedopt/rules.h"
#include "thread_pool.h"

namespace fusedopt {

// One `apply` per ISA, each compiled from kernels.cpp with its own flags.
#define FUSEDOPT_DECLARE_ISA(ns) \
  namespace ns {                 \
  void apply(int rule_id, const Batch& batch, const Update& update); \
  void stream_roofline(DType, const std::vector<std::vector<void*>>&,      \
                       const std::vector<const void*>&, const Batch&);      \
  }
FUSEDOPT_DECLARE_ISA(isa_baseline)
#ifdef FUSEDOPT_HAVE_AVX2
FUSEDOPT_DECLARE_ISA(isa_avx2)
#endif
#ifdef FUSEDOPT_HAVE_AVX512
FUSEDOPT_DECLARE_ISA(isa_avx512)
#endif

namespace {

// A rule's facts, as its header declares them (fusedopt/rules.h).
template <class R>
RuleInfo info_of(int id) {
  RuleInfo info{id, R::kName, {}, {}, {}, &R::validate, rules::factored_states<R>::value,
                rules::needs_positive_learning_rate<R>::value};
  for (int k = 0; k < R::kNumHyper; ++k) {
    info.hyper_names.emplace_back(R::kHyperNames[k]);
    info.hyper_defaults.push_back(R::kHyperDefaults[k]);
  }
  for (int k = 0; k < R::kNumStates; ++k) info.state_names.emplace_back(R::kStateNames[k]);
  return info;
}

std::vector<RuleInfo> build_rule_table() {
  std::vector<RuleInfo> table;
#define FUSEDOPT_RULE_INFO(R) table.push_back(info_of<rules::R>(int(table.size())));
  FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_RULE_INFO)
#undef FUSEDOPT_RULE_INFO
  return table;
}

struct IsaEntry {
  const char* name;
  bool (*supported)();
  void (*apply)(int, const Batch&, const Update&);
  void (*roofline)(DType, const std::vector<std::vector<void*>>&, const std::vector<const void*>&,
                   const Batch&);
};

bool always() { return true; }
#if defined(__x86_64__) || defined(_M_X64)
bool has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#endif

// Best first.
const std::vector<IsaEntry>& isa_table() {
  static const std::vector<IsaEntry> table = {
#ifdef FUSEDOPT_HAVE_AVX512
      {"avx512", &has_avx512, &isa_avx512::apply, &isa_avx512::stream_roofline},
#endif
#ifdef FUSEDOPT_HAVE_AVX2
      {"avx2", &has_avx2, &isa_avx2::apply, &isa_avx2::stream_roofline},
#endif
      {"baseline", &always, &isa_baseline::apply, &isa_baseline::stream_roofline},
  };
  return table;
}

const IsaEntry* detect_isa() {
  // FUSEDOPT_ISA=baseline|avx2|avx512 caps the choice (for testing and for
  // machines where a wider ISA downclocks).
  const char* cap = std::getenv("FUSEDOPT_ISA");
  bool allowed = cap == nullptr || *cap == '\0';
  for (const auto& e : isa_table()) {
    if (!allowed && std::string(cap) == e.name) allowed = true;
    if (allowed && e.supported()) return &e;
  }
  return &isa_table().back();
}

// A thread count from the environment: a whole number in 1..kMaxThreads,
// else 0 (not set) and, for a set but bad value, a warning for the caller.
int threads_from_env(const char* var, std::string* warning) {
  const char* v = std::getenv(var);
  if (v == nullptr || *v == '\0') return 0;
  errno = 0;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  // OMP_NUM_THREADS may list one count per nesting level ("4,2"): the first is ours.
  const bool omp_list = std::string(var) == "OMP_NUM_THREADS" && end != v && *end == ',';
  if (errno == 0 && end != v && (*end == '\0' || omp_list) && n >= 1 && n <= kMaxThreads)
    return int(n);
  if (warning->empty())
    *warning = std::string(var) + "='" + v + "' is not a whole number in 1.." +
               std::to_string(kMaxThreads) + "; it is ignored";
  return 0;
}

int default_num_threads(std::string* warning) {
  for (const char* var : {"FUSEDOPT_NUM_THREADS", "OMP_NUM_THREADS"})
    if (const int n = threads_from_env(var, warning)) return n;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? int(std::min<unsigned>(hw, unsigned(kMaxThreads))) : 1;
}

void before_fork();
void after_fork_in_parent();
void after_fork_in_child();

struct EngineState {
  std::mutex mutex;  // serializes apply / set_num_threads / set_isa, and fork
  // Started at the first parallel region (and again in a forked child, whose
  // copy of the workers does not exist).
  std::unique_ptr<ThreadPool> pool;
  std::string config_warning;
  int num_threads = default_num_threads(&config_warning);
  const IsaEntry* isa = detect_isa();

  EngineState() { pthread_atfork(&before_fork, &after_fork_in_parent, &after_fork_in_child); }

  // Call with `mutex` held.
  ThreadPool& running_pool() {
    if (!pool) pool.reset(new ThreadPool(num_threads));
    return *pool;
  }
};

EngineState& state() {
  static EngineState s;
  return s;
}

// fork() copies only the calling thread. Holding the engine lock across it
// means no step is half done in the child's copy of memory; the child then
// drops its copy of the pool (its workers do not exist there: joining or
// waking them would hang) and starts a new one at its first parallel step.
void before_fork() { state().mutex.lock(); }
void after_fork_in_parent() { state().mutex.unlock(); }
void after_fork_in_child() {
  EngineState& s = state();
  (void)s.pool.release();  // leaked on purpose: its threads and locks are the parent's
  s.mutex.unlock();
}

// Totals below this run on the calling thread: waking workers costs more.
constexpr int64_t kParallelThreshold = int64_t(1) << 15;

}  // namespace

const std::vector<RuleInfo>& rule_table() {
  static const std::vector<RuleInfo> table = build_rule_table();
  return table;
}

const RuleInfo* find_rule(const std::string& name) {
  for (const auto& r : rule_table())
    if (r.name == name) return &r;
  return nullptr;
}

void apply(int rule_id, const Batch& batch, const Update& update) {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.isa->apply(rule_id, batch, update);
}

void stream_roofline(DType dtype, const std::vector<std::vector<void*>>& outputs,
                     const std::vector<const void*>& inputs, const std::vector<int64_t>& sizes) {
  Batch sizes_only;
  sizes_only.dtype = dtype;
  for (int64_t n : sizes) {
    TensorRef t;
    t.size = n;
    sizes_only.tensors.push_back(t);
  }
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.isa->roofline(dtype, outputs, inputs, sizes_only);
}

void set_num_threads(int n) {
  if (n < 1 || n > kMaxThreads)
    throw std::invalid_argument("num_threads must be in 1.." + std::to_string(kMaxThreads) + ", got " +
                                std::to_string(n));
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.pool && s.pool->num_threads() == n) return;
  // Start the new workers before dropping the old ones: if the system cannot
  // start them, the engine keeps the pool it had.
  s.pool = std::make_unique<ThreadPool>(n);
  s.num_threads = n;
}

int get_num_threads() {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  return s.num_threads;
}

std::string config_warning() { return state().config_warning; }

std::string active_isa() {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);  // set_isa writes it under the lock
  return s.isa->name;
}

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (const auto& e : isa_table())
    if (e.supported()) out.emplace_back(e.name);
  return out;
}

void set_isa(const std::string& name) {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  for (const auto& e : isa_table()) {
    if (name == e.name) {
      if (!e.supported()) throw std::invalid_argument("ISA '" + name + "' is not supported by this CPU");
      s.isa = &e;
      return;
    }
  }
  throw std::invalid_argument("unknown ISA '" + name + "'");
}

std::vector<Chunk> make_chunks(const Batch& batch) {
  std::vector<Chunk> chunks;
  for (size_t t = 0; t < batch.tensors.size(); ++t) {
    const int64_t n = batch.tensors[t].size;
    for (int64_t b = 0; b < n; b += kChunkElements)
      chunks.push_back(Chunk{int32_t(t), b, std::min(n, b + kChunkElements)});
  }
  return chunks;
}

// Called from inside `apply`, which holds the engine mutex.
void for_each_chunk(const std::vector<Chunk>& chunks, const std::function<void(size_t)>& fn) {
  // Tasks are runs of consecutive chunks holding about kChunkElements in all,
  // so that a thousand tiny tensors make a few tasks, not a thousand.
  std::vector<size_t> task_begin;
  int64_t total = 0, in_task = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (in_task == 0) task_begin.push_back(i);
    const int64_t len = chunks[i].end - chunks[i].begin;
    in_task += len;
    total += len;
    if (in_task >= kChunkElements) in_task = 0;
  }
  task_begin.push_back(chunks.size());
  const auto run_task = [&](int64_t task) {
    for (size_t i = task_begin[size_t(task)]; i < task_begin[size_t(task) + 1]; ++i) fn(i);
  };
  const int64_t num_tasks = int64_t(task_begin.size()) - 1;
  if (total < kParallelThreshold) {
    for (int64_t t = 0; t < num_tasks; ++t) run_task(t);
  } else {
    state().running_pool().run(num_tasks, run_task);
  }
}

void for_each_index(size_t n, const std::function<void(size_t)>& fn) {
  state().running_pool().run(int64_t(n), [&](int64_t i) { fn(size_t(i)); });
}

void run_exclusive(const std::function<void(const std::string& isa)>& fn) {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  fn(s.isa->name);
}

}  // namespace fusedopt
