// Row-wise kernels: RMSNorm, RoPE, SwiGLU. Threads take whole rows.
#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/internal/simd.h"
#include "kernels/ops.h"

namespace tierkv::kernels {
namespace {

using internal::Load;
using internal::LoadPartial;
using internal::ReduceSum;
using internal::Splat;
using internal::Store;
using internal::StorePartial;
using internal::V16;

// Tasks of about `work` elements each, whole rows, for row-wise kernels.
int64_t RowsPerTask(int64_t rows, int64_t row_elems) {
  constexpr int64_t kWork = 1 << 15;
  return std::clamp<int64_t>(kWork / std::max<int64_t>(row_elems, 1), 1, std::max<int64_t>(rows, 1));
}

template <typename Fn>
void ForRows(ThreadPool* pool, int64_t rows, int64_t row_elems, Fn&& fn) {
  const int64_t per = RowsPerTask(rows, row_elems);
  const int64_t tasks = (rows + per - 1) / per;
  ParallelFor(pool, tasks, [&](int64_t t) {
    fn(t * per, std::min(rows, (t + 1) * per));
  });
}

TIERKV_ISA_CLONES void RmsNormRows(const RmsNormParams& p, int64_t r0, int64_t r1) {
  const int64_t full = p.dim & ~int64_t{15};
  const int rest = static_cast<int>(p.dim - full);
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = p.x + r * p.ldx;
    float* y = p.y + r * p.ldy;
    V16 acc = {};
    for (int64_t i = 0; i < full; i += 16) {
      const V16 v = Load(x + i);
      acc = acc + v * v;
    }
    if (rest > 0) {
      const V16 v = LoadPartial(x + full, rest);
      acc = acc + v * v;
    }
    const float mean = ReduceSum(acc) / static_cast<float>(p.dim);
    const float inv = 1.0f / std::sqrt(mean + p.eps);
    for (int64_t i = 0; i < full; i += 16) Store(y + i, (Load(x + i) * inv) * Load(p.weight + i));
    if (rest > 0) {
      StorePartial(y + full,
                   (LoadPartial(x + full, rest) * inv) * LoadPartial(p.weight + full, rest), rest);
    }
  }
}

TIERKV_ISA_CLONES void RopeRows(const RopeParams& p, int64_t r0, int64_t r1) {
  const int half = p.head_dim / 2;
  for (int64_t r = r0; r < r1; ++r) {
    const float* c = p.cos + r * half;
    const float* s = p.sin + r * half;
    for (int h = 0; h < p.num_heads; ++h) {
      float* x = p.x + r * p.ldx + static_cast<int64_t>(h) * p.head_dim;
      for (int i = 0; i < half; ++i) {
        const float a = x[i];
        const float b = x[i + half];
        x[i] = a * c[i] - b * s[i];
        x[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}

TIERKV_ISA_CLONES void SwiGluRows(const SwiGluParams& p, int64_t r0, int64_t r1) {
  const int64_t full = p.inter & ~int64_t{15};
  const int rest = static_cast<int>(p.inter - full);
  for (int64_t r = r0; r < r1; ++r) {
    const float* g = p.gate_up + r * p.ld_gate_up;
    const float* u = g + p.inter;
    float* o = p.out + r * p.ld_out;
    for (int64_t i = 0; i < full; i += 16) Store(o + i, internal::Silu(Load(g + i)) * Load(u + i));
    if (rest > 0) {
      StorePartial(o + full,
                   internal::Silu(LoadPartial(g + full, rest)) * LoadPartial(u + full, rest), rest);
    }
  }
}

}  // namespace

absl::Status RmsNorm(const RmsNormParams& p, ThreadPool* pool) {
  if (p.rows < 0 || p.dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("RmsNorm: rows=", p.rows, " dim=", p.dim, " (dim must be positive)"));
  }
  if (p.rows == 0) return absl::OkStatus();
  if (p.x == nullptr || p.y == nullptr || p.weight == nullptr || p.ldx < p.dim ||
      p.ldy < p.dim) {
    return absl::InvalidArgumentError("RmsNorm: null pointer or row stride below dim");
  }
  if (!(p.eps >= 0)) return absl::InvalidArgumentError("RmsNorm: eps must be >= 0");
  ForRows(pool, p.rows, p.dim, [&](int64_t r0, int64_t r1) { RmsNormRows(p, r0, r1); });
  return absl::OkStatus();
}

absl::Status ApplyRope(const RopeParams& p, ThreadPool* pool) {
  if (p.rows < 0 || p.num_heads <= 0 || p.head_dim <= 0 || p.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("ApplyRope: rows=", p.rows, " num_heads=",
                                                   p.num_heads, " head_dim=", p.head_dim,
                                                   " (head_dim must be positive and even)"));
  }
  if (p.rows == 0) return absl::OkStatus();
  if (p.x == nullptr || p.cos == nullptr || p.sin == nullptr ||
      p.ldx < static_cast<int64_t>(p.num_heads) * p.head_dim) {
    return absl::InvalidArgumentError("ApplyRope: null pointer or row stride below heads*dim");
  }
  ForRows(pool, p.rows, static_cast<int64_t>(p.num_heads) * p.head_dim,
          [&](int64_t r0, int64_t r1) { RopeRows(p, r0, r1); });
  return absl::OkStatus();
}

void RopeCosSin(std::span<const float> inv_freq, int64_t start, int64_t rows, float* cos,
                float* sin) {
  const size_t half = inv_freq.size();
  for (int64_t r = 0; r < rows; ++r) {
    const float position = static_cast<float>(start + r);
    for (size_t i = 0; i < half; ++i) {
      const float angle = position * inv_freq[i];
      cos[r * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin[r * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
}

absl::Status SwiGlu(const SwiGluParams& p, ThreadPool* pool) {
  if (p.rows < 0 || p.inter <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("SwiGlu: rows=", p.rows, " inter=", p.inter, " (inter must be positive)"));
  }
  if (p.rows == 0) return absl::OkStatus();
  if (p.gate_up == nullptr || p.out == nullptr || p.ld_gate_up < 2 * p.inter ||
      p.ld_out < p.inter) {
    return absl::InvalidArgumentError("SwiGlu: null pointer or row stride too small");
  }
  ForRows(pool, p.rows, 2 * p.inter, [&](int64_t r0, int64_t r1) { SwiGluRows(p, r0, r1); });
  return absl::OkStatus();
}

}  // namespace tierkv::kernels
