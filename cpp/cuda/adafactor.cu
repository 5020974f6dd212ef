// Adafactor on the GPU, one tensor at a time, as the CPU engine's
// run_adafactor with the pieces of fusedopt/rules/adafactor.h:
//   1. coupled L1/L2 gradient into scratch (from p before the decay), decay,
//      and per-block sums of p^2;
//   2. factored: row sums of s = g^2 + eps1 (a warp per row) -> r; column
//      sums in fixed row segments, combined in segment order -> c; per batch
//      the sum of r -> mean(r);  unfactored: v <- average(v, s);
//   3. v (factored: (r / mean(r)) c), u = g / sqrt(v), per-block sums of u^2;
//   4. p <- p - alpha * u / max(1, rms(u) / clip), then the proximal step.
// Every sum is in double with a fixed order (fixed blocks, segments and
// trees), so results do not depend on the device or on timing.
#include "elementwise.cuh"
#include "launchers.h"

namespace fusedopt::cuda {
namespace {

using Rule = rules::Adafactor;
constexpr int64_t kSegmentRows = 64;  // rows per partial column sum

inline int blocks_for(int64_t n) { return int(ceil_div(n, kChunk)); }

// Block b covers [b * kChunk, min(n, (b + 1) * kChunk)).
#define FUSEDOPT_FOR_BLOCK_ELEMENTS(i, n)                                               \
  for (int64_t i = int64_t(blockIdx.x) * kChunk + threadIdx.x,                          \
               i##_end = min((n), int64_t(blockIdx.x + 1) * kChunk);                    \
       i < i##_end; i += blockDim.x)

template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    prepare_kernel(T* p, const T* g, T* coupled_g, int64_t n,
                   const ElementPipeline<opmath_t<T>> x, double* partials) {
  using Op = opmath_t<T>;
  double sum = 0.0;
  FUSEDOPT_FOR_BLOCK_ELEMENTS(i, n) {
    Op pv = Op(p[i]);
    if (coupled_g) coupled_g[i] = T(x.gradient(pv, Op(g[i])));
    pv = x.decayed(pv);
    p[i] = T(pv);
    sum += double(pv) * double(pv);
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// out = partials[0] + ... + partials[count - 1], lane-strided then a fixed tree.
__global__ void ordered_sum_kernel(const double* partials, int64_t count, double* out) {
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += 32) sum += partials[i];
  sum = warp_sum(sum);
  if (threadIdx.x == 0) *out = sum;
}

template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    row_kernel(const T* g, T* r, int64_t total_rows, int64_t cols,
               const Rule::Scalars<opmath_t<T>> k) {
  using Op = opmath_t<T>;
  const int64_t row = int64_t(blockIdx.x) * (kBlockThreads / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= total_rows) return;  // whole warps leave together
  double sum = 0.0;
  for (int64_t j = lane; j < cols; j += 32) sum += double(Rule::squared_grad(k, Op(g[row * cols + j])));
  sum = warp_sum(sum);
  if (lane == 0) r[row] = T(Rule::average(k, Op(r[row]), Op(sum / double(cols))));
}

// grid (column blocks, segments, batch): the column sums of one row segment.
template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    column_partial_kernel(const T* g, double* partials, int64_t rows, int64_t cols,
                          const Rule::Scalars<opmath_t<T>> k) {
  using Op = opmath_t<T>;
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  const int64_t seg = blockIdx.y, b = blockIdx.z, segments = gridDim.y;
  const int64_t row_end = min(rows, (seg + 1) * kSegmentRows);
  const T* gb = g + b * rows * cols;
  double sum = 0.0;
  for (int64_t i = seg * kSegmentRows; i < row_end; ++i)
    sum += double(Rule::squared_grad(k, Op(gb[i * cols + j])));
  partials[(b * segments + seg) * cols + j] = sum;
}

template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    column_kernel(const double* partials, T* c, int64_t batch, int64_t rows, int64_t cols,
                  int64_t segments, const Rule::Scalars<opmath_t<T>> k) {
  using Op = opmath_t<T>;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= batch * cols) return;
  const int64_t b = idx / cols, j = idx % cols;
  double sum = 0.0;
  for (int64_t s = 0; s < segments; ++s) sum += partials[(b * segments + s) * cols + j];
  c[idx] = T(Rule::average(k, Op(c[idx]), Op(sum / double(rows))));
}

// One block per batch entry: sum of r over rows.
template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    row_total_kernel(const T* r, int64_t rows, double* totals) {
  using Op = opmath_t<T>;
  const T* rb = r + int64_t(blockIdx.x) * rows;
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) sum += double(Op(rb[i]));
  sum = block_sum(sum);
  if (threadIdx.x == 0) totals[blockIdx.x] = sum;
}

// v (factored from r, c and the row totals, else its running average), and
// per-block sums of u^2.
template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    velocity_kernel(const T* g, const T* r, const T* c, T* v, int64_t n, bool factored,
                    int64_t rows, int64_t cols, const double* row_totals,
                    const Rule::Scalars<opmath_t<T>> k, double* partials) {
  using Op = opmath_t<T>;
  double sum = 0.0;
  FUSEDOPT_FOR_BLOCK_ELEMENTS(i, n) {
    T vt;
    if (factored) {
      const int64_t row = i / cols, b = row / rows;
      const Op r_mean = Op(row_totals[b] / double(rows));
      const Op row_factor = Op(r[row]) / r_mean;
      vt = T(row_factor * Op(c[b * cols + i % cols]));
    } else {
      vt = T(Rule::average(k, Op(v[i]), Rule::squared_grad(k, Op(g[i]))));
    }
    v[i] = vt;
    const Op u = Rule::direction(Op(g[i]), Op(vt));
    sum += double(u) * double(u);
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    apply_kernel(T* p, const T* g, const T* v, int64_t n, const double* sums,
                 const Rule::Scalars<opmath_t<T>> k, const ElementPipeline<opmath_t<T>> x) {
  using Op = opmath_t<T>;
  const Op alpha = Rule::alpha(k, sums[0], n);
  const Op clip = Rule::clip_denominator(k, sums[1], n);
  FUSEDOPT_FOR_BLOCK_ELEMENTS(i, n) {
    T pt = T(Rule::apply(Op(p[i]), alpha, Rule::direction(Op(g[i]), Op(v[i])), clip));
    pt = T(x.finished(Op(pt)));
    p[i] = pt;
  }
}

#undef FUSEDOPT_FOR_BLOCK_ELEMENTS

// Scratch layout, sized for the largest tensor of the call.
struct Layout {
  size_t partials = 0, sums = 0, columns = 0, row_totals = 0, coupled = 0, bytes = 0;
};

size_t round_up(size_t x) { return (x + 255) / 256 * 256; }

template <class T>
void run_adafactor_typed(const std::vector<Tensor>& tensors, const Update& u, cudaStream_t stream) {
  using Op = opmath_t<T>;
  const auto k = Rule::prepare<Op>(u.hyper, u.step);
  const auto x = pipeline_of<Op>(u);
  size_t max_blocks = 0, max_columns = 0, max_batch = 0, max_n = 0;
  for (const Tensor& t : tensors) {
    max_blocks = std::max(max_blocks, size_t(blocks_for(t.size)));
    max_n = std::max(max_n, size_t(t.size));
    if (t.factored && t.size > 0) {
      max_columns = std::max(max_columns, size_t(t.batch * ceil_div(t.rows, kSegmentRows) * t.cols));
      max_batch = std::max(max_batch, size_t(t.batch));
    }
  }
  if (max_n == 0) return;
  Layout l;
  l.partials = 0;
  l.sums = round_up(max_blocks * sizeof(double));
  l.columns = l.sums + 256;
  l.row_totals = l.columns + round_up(max_columns * sizeof(double));
  l.coupled = l.row_totals + round_up(max_batch * sizeof(double));
  l.bytes = l.coupled + (x.coupled ? max_n * sizeof(T) : 0);
  Scratch scratch(l.bytes, stream);
  double* partials = scratch.as<double>(l.partials);
  double* sums = scratch.as<double>(l.sums);  // [0]: sum p^2, [1]: sum u^2
  double* columns = scratch.as<double>(l.columns);
  double* row_totals = scratch.as<double>(l.row_totals);
  T* coupled = x.coupled ? scratch.as<T>(l.coupled) : nullptr;

  for (const Tensor& t : tensors) {
    const int64_t n = t.size;
    if (n == 0) continue;
    T* p = static_cast<T*>(t.param);
    const T* g = static_cast<const T*>(t.grad);
    T* r = static_cast<T*>(t.state[0]);
    T* c = static_cast<T*>(t.state[1]);
    T* v = static_cast<T*>(t.state[2]);
    const int blocks = blocks_for(n);

    prepare_kernel<T><<<blocks, kBlockThreads, 0, stream>>>(p, g, coupled, n, x, partials);
    check_launch("adafactor prepare_kernel");
    if (coupled) g = coupled;
    ordered_sum_kernel<<<1, 32, 0, stream>>>(partials, blocks, sums);
    check_launch("adafactor ordered_sum_kernel");

    if (t.factored) {
      const int64_t total_rows = t.batch * t.rows;
      const int64_t segments = ceil_div(t.rows, kSegmentRows);
      row_kernel<T><<<int(ceil_div(total_rows, kBlockThreads / 32)), kBlockThreads, 0, stream>>>(
          g, r, total_rows, t.cols, k);
      check_launch("adafactor row_kernel");
      const dim3 grid(unsigned(ceil_div(t.cols, kBlockThreads)), unsigned(segments),
                      unsigned(t.batch));
      if (t.batch > 65535 || segments > 65535)
        throw std::invalid_argument("Adafactor: batch and rows / 64 must be <= 65535 on CUDA");
      column_partial_kernel<T><<<grid, kBlockThreads, 0, stream>>>(g, columns, t.rows, t.cols, k);
      check_launch("adafactor column_partial_kernel");
      column_kernel<T><<<int(ceil_div(t.batch * t.cols, kBlockThreads)), kBlockThreads, 0,
                         stream>>>(columns, c, t.batch, t.rows, t.cols, segments, k);
      check_launch("adafactor column_kernel");
      row_total_kernel<T><<<int(t.batch), kBlockThreads, 0, stream>>>(r, t.rows, row_totals);
      check_launch("adafactor row_total_kernel");
    }
    velocity_kernel<T><<<blocks, kBlockThreads, 0, stream>>>(g, r, c, v, n, t.factored, t.rows,
                                                             t.cols, row_totals, k, partials);
    check_launch("adafactor velocity_kernel");
    ordered_sum_kernel<<<1, 32, 0, stream>>>(partials, blocks, sums + 1);
    check_launch("adafactor ordered_sum_kernel");
    apply_kernel<T><<<blocks, kBlockThreads, 0, stream>>>(p, g, v, n, sums, k, x);
    check_launch("adafactor apply_kernel");
  }
}

}  // namespace

void run_adafactor(DType dtype, const std::vector<Tensor>& tensors, const Update& u,
                   cudaStream_t stream) {
  with_dtype(dtype, [&](auto tag) { run_adafactor_typed<decltype(tag)>(tensors, u, stream); });
}

}  // namespace fusedopt::cuda
