// Matmul: register tiles of up to 16 output elements, each element's dot product in 16
// lanes over k (see the contract in ops.h), threads over blocks of the output.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/internal/simd.h"
#include "kernels/ops.h"

namespace tierkv::kernels {
namespace {

using internal::Load;
using internal::LoadPartial;
using internal::ReduceSum16;
using internal::V16;

// Rows and columns of the output block one task computes when m >= 4. A block of w
// (kBlockN rows of k floats) is reused from L2 by every row tile of the block; a 4-row tile
// of x stays in L1 across the block's columns.
constexpr int64_t kBlockM = 64;
constexpr int64_t kBlockN = 64;

// Computes the MR x NR outputs at (i0, j0). Every element gets exactly the arithmetic of
// the contract whatever MR and NR, so tiles of any shape agree bit for bit.
template <int MR, int NR>
TIERKV_INLINE void Tile(const MatmulParams& p, int64_t i0, int64_t j0) {
  static_assert(MR * NR <= 16);
  V16 acc[MR * NR];
#pragma GCC unroll 16
  for (int t = 0; t < MR * NR; ++t) acc[t] = V16{};
  const float* xr[MR];
  const float* wr[NR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) xr[r] = p.x + (i0 + r) * p.ldx;
#pragma GCC unroll 16
  for (int c = 0; c < NR; ++c) wr[c] = p.w + (j0 + c) * p.ldw;

  const int64_t k_full = p.k & ~int64_t{15};
  for (int64_t kk = 0; kk < k_full; kk += 16) {
    V16 xv[MR];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) xv[r] = Load(xr[r] + kk);
#pragma GCC unroll 16
    for (int c = 0; c < NR; ++c) {
      const V16 wv = Load(wr[c] + kk);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) acc[r * NR + c] = acc[r * NR + c] + xv[r] * wv;
    }
  }
  if (k_full < p.k) {
    const int rest = static_cast<int>(p.k - k_full);
    V16 xv[MR];
    for (int r = 0; r < MR; ++r) xv[r] = LoadPartial(xr[r] + k_full, rest);
    for (int c = 0; c < NR; ++c) {
      const V16 wv = LoadPartial(wr[c] + k_full, rest);
      for (int r = 0; r < MR; ++r) acc[r * NR + c] = acc[r * NR + c] + xv[r] * wv;
    }
  }

  V16 all[16];
#pragma GCC unroll 16
  for (int t = 0; t < 16; ++t) all[t] = t < MR * NR ? acc[t] : V16{};
  const V16 sums = ReduceSum16(all);
  for (int r = 0; r < MR; ++r) {
    float* y = p.y + (i0 + r) * p.ldy + j0;
    for (int c = 0; c < NR; ++c) {
      float v = sums[r * NR + c];
      if (p.bias != nullptr) v = v + p.bias[j0 + c];
      if (p.accumulate) v = y[c] + v;
      y[c] = v;
    }
  }
}

// Outputs [i_begin, i_end) x [j_begin, j_end).
TIERKV_ISA_CLONES void RunBlock(const MatmulParams& p, int64_t i_begin, int64_t i_end,
                                int64_t j_begin, int64_t j_end) {
  if (i_end - i_begin < 4) {
    // Few rows (decode steps, logits of one position): one row against 16 columns at once,
    // so each x chunk loaded feeds 16 dot products.
    for (int64_t i = i_begin; i < i_end; ++i) {
      int64_t j = j_begin;
      for (; j + 16 <= j_end; j += 16) Tile<1, 16>(p, i, j);
      for (; j + 4 <= j_end; j += 4) Tile<1, 4>(p, i, j);
      for (; j < j_end; ++j) Tile<1, 1>(p, i, j);
    }
    return;
  }
  int64_t j = j_begin;
  for (; j + 4 <= j_end; j += 4) {
    int64_t i = i_begin;
    for (; i + 4 <= i_end; i += 4) Tile<4, 4>(p, i, j);
    for (; i < i_end; ++i) Tile<1, 4>(p, i, j);
  }
  for (; j < j_end; ++j) {
    int64_t i = i_begin;
    for (; i + 4 <= i_end; i += 4) Tile<4, 1>(p, i, j);
    for (; i < i_end; ++i) Tile<1, 1>(p, i, j);
  }
}

absl::Status Validate(const MatmulParams& p) {
  if (p.m < 0 || p.n < 0 || p.k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Matmul: negative size m=", p.m, " n=", p.n, " k=", p.k));
  }
  if (p.m == 0 || p.n == 0) return absl::OkStatus();
  if (p.y == nullptr || (p.k > 0 && (p.x == nullptr || p.w == nullptr))) {
    return absl::InvalidArgumentError("Matmul: null x, w or y");
  }
  if (p.ldx < p.k || p.ldw < p.k || p.ldy < p.n) {
    return absl::InvalidArgumentError(absl::StrCat("Matmul: strides ldx=", p.ldx, " ldw=", p.ldw,
                                                   " ldy=", p.ldy, " below k=", p.k,
                                                   " / n=", p.n));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Matmul(const MatmulParams& p, ThreadPool* pool) {
  if (absl::Status s = Validate(p); !s.ok()) return s;
  if (p.m == 0 || p.n == 0) return absl::OkStatus();
  if (p.m < 4) {
    // Split the columns only; enough tasks for every thread without tiny ones.
    const int threads = pool != nullptr ? pool->num_threads() : 1;
    int64_t cols = (p.n + 4 * threads - 1) / (4 * threads);
    cols = std::max<int64_t>(64, (cols + 15) & ~int64_t{15});
    const int64_t tasks = (p.n + cols - 1) / cols;
    ParallelFor(pool, tasks, [&](int64_t t) {
      RunBlock(p, 0, p.m, t * cols, std::min(p.n, (t + 1) * cols));
    });
    return absl::OkStatus();
  }
  const int64_t blocks_m = (p.m + kBlockM - 1) / kBlockM;
  const int64_t blocks_n = (p.n + kBlockN - 1) / kBlockN;
  ParallelFor(pool, blocks_m * blocks_n, [&](int64_t t) {
    const int64_t bi = t % blocks_m;
    const int64_t bj = t / blocks_m;
    RunBlock(p, bi * kBlockM, std::min(p.m, (bi + 1) * kBlockM), bj * kBlockN,
             std::min(p.n, (bj + 1) * kBlockN));
  });
  return absl::OkStatus();
}

}  // namespace tierkv::kernels
