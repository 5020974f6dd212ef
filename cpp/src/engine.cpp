#include "engine.h"

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

template <class Rule>
std::vector<std::string> names_of(const char* const* names, int count) {
  std::vector<std::string> out;
  for (int i = 0; i < count; ++i) out.emplace_back(names[i]);
  return out;
}

template <class Rule>
bool needs_positive_lr() {
  if constexpr (std::is_same_v<Rule, rules::Ftrl>) return true;
  return false;
}

std::vector<RuleInfo> build_rule_table() {
  std::vector<RuleInfo> table;
#define FUSEDOPT_RULE_INFO(R)                                                          \
  table.push_back(RuleInfo{int(table.size()), rules::R::kName,                       \
                           names_of<rules::R>(rules::R::kHyperNames, rules::R::kNumHyper), \
                           names_of<rules::R>(rules::R::kStateNames, rules::R::kNumStates), \
                           &rules::R::validate, std::is_same_v<rules::R, rules::Adafactor>, \
                           needs_positive_lr<rules::R>()});
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

int default_num_threads() {
  for (const char* var : {"FUSEDOPT_NUM_THREADS", "OMP_NUM_THREADS"}) {
    if (const char* v = std::getenv(var)) {
      const int n = std::atoi(v);
      if (n > 0) return n;
    }
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? int(hw) : 1;
}

struct EngineState {
  std::mutex mutex;  // serializes apply / set_num_threads / set_isa
  std::unique_ptr<ThreadPool> pool{new ThreadPool(default_num_threads())};
  const IsaEntry* isa = detect_isa();
};

EngineState& state() {
  static EngineState s;
  return s;
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
  if (n < 1) throw std::invalid_argument("num_threads must be >= 1");
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.pool->num_threads() != n) s.pool.reset(new ThreadPool(n));
}

int get_num_threads() {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  return s.pool->num_threads();
}

std::string active_isa() { return state().isa->name; }

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
    state().pool->run(num_tasks, run_task);
  }
}

void for_each_index(size_t n, const std::function<void(size_t)>& fn) {
  state().pool->run(int64_t(n), [&](int64_t i) { fn(size_t(i)); });
}

void run_exclusive(const std::function<void(const std::string& isa)>& fn) {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  fn(s.isa->name);
}

}  // namespace fusedopt
