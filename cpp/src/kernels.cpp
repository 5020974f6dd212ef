// The per-ISA kernels: this file is compiled once per instruction set with
// FUSEDOPT_ISA_NAMESPACE naming the namespace (isa_baseline, isa_avx2, ...).
// The loops are written once over scalars; the compiler vectorizes them for
// each ISA. -ffp-contract=off keeps every ISA's results bitwise identical.
#include <type_traits>
#include <vector>

#include "adafactor_driver.h"
#include "engine.h"
#include "fusedopt/pipeline.h"
#include "fusedopt/rules.h"

#ifndef FUSEDOPT_ISA_NAMESPACE
#error "FUSEDOPT_ISA_NAMESPACE must be defined"
#endif

namespace fusedopt {
namespace FUSEDOPT_ISA_NAMESPACE {
namespace {

template <class T>
T* offset(void* base, int64_t begin) {
  return base == nullptr ? nullptr : static_cast<T*>(base) + begin;
}

template <class Op> ElementPipeline<Op> pipeline_of(const Update& u) {
  return ElementPipeline<Op>::make(u.decay, u.l1, u.l2, u.step.learning_rate, u.proximal_l1);
}

// f(std::true_type{}) or f(std::false_type{}): a runtime flag as a template flag.
template <class F> void with_flag(bool flag, F&& f) {
  if (flag)
    f(std::true_type{});
  else
    f(std::false_type{});
}

// One pass over memory: the pipeline (fusedopt/pipeline.h) with only the
// stages in use compiled in.
template <class Rule, class T, bool kDecay, bool kCoupled, bool kProximal>
void elementwise_range(const typename Rule::template Scalars<opmath_t<T>>& c,
                       const ElementPipeline<opmath_t<T>> pipe, const TensorRef& t, int64_t begin,
                       int64_t end) {
  using Op = opmath_t<T>;
  constexpr int N = Rule::kNumStates;
  T* __restrict p = static_cast<T*>(t.param) + begin;
  const T* __restrict g = static_cast<const T*>(t.grad) + begin;
  T* __restrict s0 = offset<T>(t.state[0], begin);
  T* __restrict s1 = offset<T>(t.state[1], begin);
  T* __restrict s2 = offset<T>(t.state[2], begin);
  T* __restrict s3 = offset<T>(t.state[3], begin);
  const int64_t n = end - begin;
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    Op pv = Op(p[i]);
    Op st[kMaxStates];
    if constexpr (N > 0) st[0] = Op(s0[i]);
    if constexpr (N > 1) st[1] = Op(s1[i]);
    if constexpr (N > 2) st[2] = Op(s2[i]);
    if constexpr (N > 3) st[3] = Op(s3[i]);
    pipe.template step<Rule, kDecay, kCoupled, kProximal>(c, pv, Op(g[i]), st);
    p[i] = T(pv);
    if constexpr (N > 0) s0[i] = T(st[0]);
    if constexpr (N > 1) s1[i] = T(st[1]);
    if constexpr (N > 2) s2[i] = T(st[2]);
    if constexpr (N > 3) s3[i] = T(st[3]);
  }
}

template <class Rule, class T>
void run_elementwise(const Batch& batch, const Update& u) {
  using Op = opmath_t<T>;
  const auto c = Rule::template prepare<Op>(u.hyper, u.step);
  const auto pipe = pipeline_of<Op>(u);
  const auto chunks = make_chunks(batch);
  with_flag(pipe.decays, [&](auto kDecay) {
    with_flag(pipe.coupled, [&](auto kCoupled) {
      with_flag(pipe.proximal, [&](auto kProximal) {
        for_each_chunk(chunks, [&](size_t i) {
          const Chunk& ch = chunks[i];
          elementwise_range<Rule, T, kDecay, kCoupled, kProximal>(
              c, pipe, batch.tensors[size_t(ch.tensor)], ch.begin, ch.end);
        });
      });
    });
  });
}

// Sum of squares in double over 8 interleaved lanes (fixed order, so the
// result depends on the data only).
struct SquareSums {
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  void add(int64_t i, double x) { lanes[i & 7] += x * x; }
  double total() const {
    double s = 0.0;
    for (double l : lanes) s += l;
    return s;
  }
};

template <class T>
void run_lamb(const Batch& batch, const Update& u) {
  using Rule = rules::Lamb;
  using Op = opmath_t<T>;
  const auto c = Rule::prepare<Op>(u.hyper, u.step);
  const auto pipe = pipeline_of<Op>(u);
  const auto chunks = make_chunks(batch);
  std::vector<double> param_sq(chunks.size()), dir_sq(chunks.size());

  // Pass 1: the pipeline's gradient and decay stages, moments, and per-chunk sums of p^2 and u^2.
  for_each_chunk(chunks, [&](size_t i) {
    const Chunk& ch = chunks[i];
    const TensorRef& t = batch.tensors[size_t(ch.tensor)];
    T* p = static_cast<T*>(t.param) + ch.begin;
    const T* g = static_cast<const T*>(t.grad) + ch.begin;
    T* m = static_cast<T*>(t.state[0]) + ch.begin;
    T* v = static_cast<T*>(t.state[1]) + ch.begin;
    SquareSums ps, ds;
    for (int64_t k = 0; k < ch.end - ch.begin; ++k) {
      Op pv = Op(p[k]);
      const Op gv = pipe.gradient(pv, Op(g[k]));
      if (pipe.decays) {
        pv = pipe.decayed(pv);
        p[k] = T(pv);
      }
      Op st[2] = {Op(m[k]), Op(v[k])};
      const Op dir = Rule::advance(c, gv, st);
      m[k] = T(st[0]);
      v[k] = T(st[1]);
      ps.add(k, double(pv));
      ds.add(k, double(dir));
    }
    param_sq[i] = ps.total();
    dir_sq[i] = ds.total();
  });

  // Per-tensor norms, combining chunk partials in chunk order.
  std::vector<double> p_norm(batch.tensors.size(), 0.0), d_norm(batch.tensors.size(), 0.0);
  for (size_t i = 0; i < chunks.size(); ++i) {
    p_norm[size_t(chunks[i].tensor)] += param_sq[i];
    d_norm[size_t(chunks[i].tensor)] += dir_sq[i];
  }
  std::vector<Op> ratio_lr(batch.tensors.size());
  for (size_t t = 0; t < batch.tensors.size(); ++t)
    ratio_lr[t] = Op(Rule::trust_ratio(std::sqrt(p_norm[t]), std::sqrt(d_norm[t]))) * c.lr;

  // Pass 2: apply, then the pipeline's proximal stage.
  for_each_chunk(chunks, [&](size_t i) {
    const Chunk& ch = chunks[i];
    const TensorRef& t = batch.tensors[size_t(ch.tensor)];
    T* __restrict p = static_cast<T*>(t.param) + ch.begin;
    const T* __restrict m = static_cast<const T*>(t.state[0]) + ch.begin;
    const T* __restrict v = static_cast<const T*>(t.state[1]) + ch.begin;
    const Op r = ratio_lr[size_t(ch.tensor)];
    for (int64_t k = 0; k < ch.end - ch.begin; ++k) {
      Op pv = Op(p[k]);
      Rule::apply(r, pv, Rule::direction(c, Op(m[k]), Op(v[k])));
      p[k] = T(pipe.finished(pv));
    }
  });
}

template <class T>
void run_adafactor(const Batch& batch, const Update& u) {
  using Op = opmath_t<T>;
  const auto c = rules::Adafactor::prepare<Op>(u.hyper, u.step);
  const auto pipe = pipeline_of<Op>(u);
  for_each_index(batch.tensors.size(), [&](size_t i) {
    const TensorRef& t = batch.tensors[i];
    adafactor_update_tensor<T, Op>(c, pipe, static_cast<T*>(t.param), static_cast<const T*>(t.grad),
                                   static_cast<T*>(t.state[0]), static_cast<T*>(t.state[1]),
                                   static_cast<T*>(t.state[2]), t.size, t.factored, t.batch, t.rows,
                                   t.cols);
  });
}

template <class Rule, class T>
void run_rule(const Batch& batch, const Update& u) {
  if constexpr (std::is_same_v<Rule, rules::Lamb>)
    run_lamb<T>(batch, u);
  else if constexpr (std::is_same_v<Rule, rules::Adafactor>)
    run_adafactor<T>(batch, u);
  else
    run_elementwise<Rule, T>(batch, u);
}

template <class Rule>
void run_rule_any_dtype(const Batch& batch, const Update& u) {
  if (batch.dtype == DType::kFloat64)
    run_rule<Rule, double>(batch, u);
  else
    run_rule<Rule, float>(batch, u);
}

using RuleFn = void (*)(const Batch&, const Update&);
constexpr RuleFn kRuleFns[] = {
#define FUSEDOPT_RULE_FN(R) &run_rule_any_dtype<rules::R>,
    FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_RULE_FN)
#undef FUSEDOPT_RULE_FN
};

template <class T>
void run_roofline(const std::vector<std::vector<void*>>& outputs,
                  const std::vector<const void*>& inputs, const Batch& sizes_only) {
  const auto chunks = make_chunks(sizes_only);
  for_each_chunk(chunks, [&](size_t i) {
    const Chunk& ch = chunks[i];
    const T* __restrict in = static_cast<const T*>(inputs[size_t(ch.tensor)]) + ch.begin;
    for (void* out_v : outputs[size_t(ch.tensor)]) {
      T* __restrict out = static_cast<T*>(out_v) + ch.begin;
      for (int64_t k = 0; k < ch.end - ch.begin; ++k) out[k] = out[k] + in[k];
    }
  });
}

}  // namespace

void stream_roofline(DType dtype, const std::vector<std::vector<void*>>& outputs,
                     const std::vector<const void*>& inputs, const Batch& sizes_only) {
  if (dtype == DType::kFloat64)
    run_roofline<double>(outputs, inputs, sizes_only);
  else
    run_roofline<float>(outputs, inputs, sizes_only);
}

void apply(int rule_id, const Batch& batch, const Update& update) {
  kRuleFns[rule_id](batch, update);
}

}  // namespace FUSEDOPT_ISA_NAMESPACE
}  // namespace fusedopt
