// Causal GQA attention, FlashAttention-style on the CPU: per task one KV head and a tile of
// query positions; keys stream in blocks of 64 (four V16 of scores), each block used by
// every query vector of the tile while it is in L1, with an online softmax per query.
//
// K is read transposed ([d][64] per block and head, see TransposeKeys) so that one vector
// op computes a partial score for 16 keys. The arithmetic of each query vector depends only
// on its position (see ops.h): which tile it sits in, which other queries share its loads
// and which thread runs it change nothing.
#include <algorithm>
#include <limits>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/internal/simd.h"
#include "kernels/ops.h"

namespace tierkv::kernels {
namespace {

using internal::Exp;
using internal::Iota;
using internal::Load;
using internal::Max;
using internal::ReduceMax;
using internal::ReduceSum;
using internal::Splat;
using internal::Store;
using internal::V16;

constexpr int kBlock = kAttentionKeyBlock;
constexpr int kVecs = kBlock / 16;  // Score vectors per block.
constexpr int kQueryTile = 32;      // Query positions per task: only affects speed.
constexpr int kMaxHeadDim = 256;

// Running state of one query vector: max, sum and the output accumulator.
struct QueryState {
  const float* q;
  float m;
  float l;
  float* acc;  // head_dim floats.
};

// acc[c0 .. c0 + 16 * NC) of R query vectors: rescaled by alpha, then p_j * v_j added for
// the block's keys in increasing j.
template <int R, int NC, bool kFull>
TIERKV_INLINE void AccumulateValues(QueryState* const* qs, const float (*pj)[kBlock], V16 alpha,
                                    const float* vb, int64_t ldkv, int c0, int lo, int hi) {
  V16 a[R][NC];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) a[r][c] = Load(qs[r]->acc + c0 + c * 16) * alpha[r];
  }
  const int j0 = kFull ? 0 : lo;
  const int j1 = kFull ? kBlock : hi;
  for (int j = j0; j < j1; ++j) {
    const float* vr = vb + j * ldkv + c0;
    V16 vv[NC];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) vv[c] = Load(vr + c * 16);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const float pr = pj[r][j];
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) a[r][c] = a[r][c] + pr * vv[c];
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) Store(qs[r]->acc + c0 + c * 16, a[r][c]);
  }
}

// Updates R query vectors with keys lo..hi-1 of one block (kFull: lo = 0, hi = 64, no
// masking). Each query's arithmetic is the same for every R and either kFull when the
// block is full for it.
template <int R, bool kFull>
TIERKV_INLINE void UpdateBlock(QueryState* const* qs, const float* kt, const float* vb,
                               int64_t ldkv, int head_dim, float scale, int lo, int hi) {
  // Scores: one dot product per (query, key), in increasing d.
  V16 s[R][kVecs];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) s[r][v] = V16{};
  }
  const float* q[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) q[r] = qs[r]->q;
  for (int d = 0; d < head_dim; ++d) {
    V16 kv[kVecs];
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) kv[v] = Load(kt + d * kBlock + v * 16);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const float qd = q[r][d];
#pragma GCC unroll 4
      for (int v = 0; v < kVecs; ++v) s[r][v] = s[r][v] + qd * kv[v];
    }
  }
  V16 arg = {};  // Lane r: m_old - m_new of query r.
  float m_new[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) {
      s[r][v] = s[r][v] * scale;
      if (!kFull) {
        const auto lane = Iota() + v * 16;
        s[r][v] = (lane >= lo) & (lane < hi) ? s[r][v]
                                             : Splat(-std::numeric_limits<float>::infinity());
      }
    }
    const float bm = ReduceMax(Max(Max(s[r][0], s[r][1]), Max(s[r][2], s[r][3])));
    m_new[r] = qs[r]->m > bm ? qs[r]->m : bm;
    arg[r] = qs[r]->m - m_new[r];
  }
  const V16 alpha = Exp(arg);
  alignas(64) float pj[R][kBlock];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    V16 p[kVecs];
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) {
      p[v] = Exp(s[r][v] - m_new[r]);
      Store(pj[r] + v * 16, p[v]);
    }
    qs[r]->l = qs[r]->l * alpha[r] + ReduceSum((p[0] + p[1]) + (p[2] + p[3]));
    qs[r]->m = m_new[r];
  }
  // Output: chunks of 16 dims, as many at once as registers allow.
  constexpr int kChunks = R >= 4 ? 4 : 8;
  int c0 = 0;
  for (; c0 + kChunks * 16 <= head_dim; c0 += kChunks * 16) {
    AccumulateValues<R, kChunks, kFull>(qs, pj, alpha, vb, ldkv, c0, lo, hi);
  }
  switch ((head_dim - c0) / 16) {
    case 0: break;
#define TIERKV_CHUNKS_CASE(n) \
  case n:                     \
    if constexpr (n < kChunks) AccumulateValues<R, n, kFull>(qs, pj, alpha, vb, ldkv, c0, lo, hi); \
    break;
    TIERKV_CHUNKS_CASE(1)
    TIERKV_CHUNKS_CASE(2)
    TIERKV_CHUNKS_CASE(3)
    TIERKV_CHUNKS_CASE(4)
    TIERKV_CHUNKS_CASE(5)
    TIERKV_CHUNKS_CASE(6)
    TIERKV_CHUNKS_CASE(7)
#undef TIERKV_CHUNKS_CASE
  }
}

// Scratch of one thread: query states and their accumulators, reused across tasks. Plain
// floats, never V16 objects in memory: GCC gives V16 a 16-byte alignment in code built
// for the baseline ISA but assumes 64 bytes in the AVX-512 clones.
struct TileScratch {
  std::vector<QueryState> states;
  std::vector<float> acc;
};

TileScratch& ThreadScratch() {
  thread_local TileScratch scratch;
  return scratch;
}

// kt_of(b) gives block b of this KV head in the TransposeKeys layout.
template <typename KtOf>
TIERKV_INLINE void RunTileImpl(const AttentionParams& p, KtOf kt_of, int64_t kv_head,
                               int64_t r0, int64_t r1, TileScratch& scratch) {
  const int group = p.num_q_heads / p.num_kv_heads;
  const int64_t rows = r1 - r0;
  const int64_t nq = rows * group;
  scratch.states.resize(nq);
  scratch.acc.assign(nq * p.head_dim, 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int g = 0; g < group; ++g) {
      QueryState& st = scratch.states[r * group + g];
      st.q = p.q + (r0 + r) * p.ldq + (kv_head * group + g) * p.head_dim;
      st.m = -std::numeric_limits<float>::infinity();
      st.l = 0.0f;
      st.acc = scratch.acc.data() + (r * group + g) * p.head_dim;
    }
  }
  auto first_key = [&](int64_t pos) {
    return p.sliding_window > 0 ? std::max<int64_t>(0, pos - p.sliding_window + 1) : 0;
  };
  const int64_t pos0 = p.query_position + r0;
  const int64_t pos1 = p.query_position + r1 - 1;
  const int64_t b_begin = first_key(pos0) / kBlock;
  const int64_t b_end = pos1 / kBlock + 1;
  const float* v_head = p.v + kv_head * p.head_dim;
  QueryState* pending[4];
  for (int64_t b = b_begin; b < b_end; ++b) {
    const float* kt = kt_of(b);
    const float* vb = v_head + b * kBlock * p.ldkv;
    const int64_t key0 = b * kBlock;
    int npending = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t pos = pos0 + r;
      const int64_t first = first_key(pos);
      if (first <= key0 && pos >= key0 + kBlock - 1) {
        for (int g = 0; g < group; ++g) {
          pending[npending++] = &scratch.states[r * group + g];
          if (npending == 4) {
            UpdateBlock<4, true>(pending, kt, vb, p.ldkv, p.head_dim, p.scale, 0, kBlock);
            npending = 0;
          }
        }
        continue;
      }
      const int lo = static_cast<int>(std::max<int64_t>(first - key0, 0));
      const int hi = static_cast<int>(std::min<int64_t>(pos - key0 + 1, kBlock));
      if (lo >= hi) continue;  // No key of this block is visible to this row.
      int g = 0;
      for (; g + 2 <= group; g += 2) {
        QueryState* two[2] = {&scratch.states[r * group + g], &scratch.states[r * group + g + 1]};
        UpdateBlock<2, false>(two, kt, vb, p.ldkv, p.head_dim, p.scale, lo, hi);
      }
      if (g < group) {
        QueryState* one = &scratch.states[r * group + g];
        UpdateBlock<1, false>(&one, kt, vb, p.ldkv, p.head_dim, p.scale, lo, hi);
      }
    }
    int i = 0;
    for (; i + 2 <= npending; i += 2) {
      UpdateBlock<2, true>(pending + i, kt, vb, p.ldkv, p.head_dim, p.scale, 0, kBlock);
    }
    if (i < npending) {
      UpdateBlock<1, true>(pending + i, kt, vb, p.ldkv, p.head_dim, p.scale, 0, kBlock);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int g = 0; g < group; ++g) {
      const QueryState& st = scratch.states[r * group + g];
      float* out = p.out + (r0 + r) * p.ldo + (kv_head * group + g) * p.head_dim;
      for (int c = 0; c < p.head_dim; c += 16) Store(out + c, Load(st.acc + c) / st.l);
    }
  }
}

// Blocks below kt_blocks come from the caller's kt, the others from the scratch copy
// `tail`, which holds blocks kt_blocks .. in the same layout.
TIERKV_ISA_CLONES void RunTile(const AttentionParams& p, const float* tail, int64_t kv_head,
                               int64_t r0, int64_t r1, TileScratch& scratch) {
  const int64_t block_floats = static_cast<int64_t>(p.head_dim) * kBlock;
  auto kt_of = [&](int64_t b) {
    return b < p.kt_blocks
               ? p.kt + (b * p.num_kv_heads + kv_head) * block_floats
               : tail + ((b - p.kt_blocks) * p.num_kv_heads + kv_head) * block_floats;
  };
  RunTileImpl(p, kt_of, kv_head, r0, r1, scratch);
}

void TransposeBlock(const TransposeKeysParams& p, int64_t b, int64_t h, float* dst) {
  const int64_t n = std::clamp<int64_t>(p.num_keys - b * kBlock, 0, kBlock);
  for (int64_t t = 0; t < n; ++t) {
    const float* src = p.k + (b * kBlock + t) * p.ldk + h * p.head_dim;
    for (int d = 0; d < p.head_dim; ++d) dst[d * kBlock + t] = src[d];
  }
  for (int d = 0; d < p.head_dim; ++d) {
    for (int64_t t = n; t < kBlock; ++t) dst[d * kBlock + t] = 0.0f;
  }
}

absl::Status Validate(const AttentionParams& p) {
  if (p.num_queries < 0 || p.query_position < 0) {
    return absl::InvalidArgumentError(absl::StrCat("Attention: num_queries=", p.num_queries,
                                                   " query_position=", p.query_position));
  }
  if (p.num_kv_heads <= 0 || p.num_q_heads <= 0 || p.num_q_heads % p.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Attention: num_q_heads=", p.num_q_heads, " must be a positive multiple of "
                     "num_kv_heads=", p.num_kv_heads));
  }
  if (p.head_dim <= 0 || p.head_dim % 16 != 0 || p.head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Attention: head_dim=", p.head_dim, " must be a multiple of 16 and at most 256"));
  }
  if (p.query_position + p.num_queries > p.num_keys) {
    return absl::InvalidArgumentError(
        absl::StrCat("Attention: queries end at position ", p.query_position + p.num_queries,
                     " but only ", p.num_keys, " keys are given"));
  }
  if (p.sliding_window < 0) {
    return absl::InvalidArgumentError("Attention: negative sliding_window");
  }
  if (p.kt_blocks < 0 || p.kt_blocks * kBlock > p.num_keys ||
      (p.kt_blocks > 0 && p.kt == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Attention: kt_blocks=", p.kt_blocks, " must cover only full blocks of the ",
                     p.num_keys, " keys, with kt set"));
  }
  if (p.num_queries == 0) return absl::OkStatus();
  const int64_t q_row = static_cast<int64_t>(p.num_q_heads) * p.head_dim;
  const int64_t kv_row = static_cast<int64_t>(p.num_kv_heads) * p.head_dim;
  if (p.q == nullptr || p.k == nullptr || p.v == nullptr || p.out == nullptr) {
    return absl::InvalidArgumentError("Attention: null q, k, v or out");
  }
  if (p.ldq < q_row || p.ldo < q_row || p.ldkv < kv_row) {
    return absl::InvalidArgumentError(
        absl::StrCat("Attention: row strides ldq=", p.ldq, " ldo=", p.ldo, " ldkv=", p.ldkv,
                     " below heads*head_dim (", q_row, ", ", kv_row, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status TransposeKeys(const TransposeKeysParams& p, ThreadPool* pool) {
  if (p.num_kv_heads <= 0 || p.head_dim <= 0 || p.num_keys < 0 || p.block_begin < 0 ||
      p.block_end < p.block_begin) {
    return absl::InvalidArgumentError(
        absl::StrCat("TransposeKeys: num_kv_heads=", p.num_kv_heads, " head_dim=", p.head_dim,
                     " num_keys=", p.num_keys, " blocks [", p.block_begin, ", ", p.block_end, ")"));
  }
  if (p.block_end == p.block_begin) return absl::OkStatus();
  if (p.kt == nullptr || (p.num_keys > 0 && p.k == nullptr) ||
      p.ldk < static_cast<int64_t>(p.num_kv_heads) * p.head_dim) {
    return absl::InvalidArgumentError("TransposeKeys: null pointer or row stride too small");
  }
  const int64_t block_floats = static_cast<int64_t>(p.head_dim) * kBlock;
  const int64_t units = (p.block_end - p.block_begin) * p.num_kv_heads;
  ParallelFor(pool, (units + 7) / 8, [&](int64_t t) {
    for (int64_t u = t * 8; u < std::min(units, (t + 1) * 8); ++u) {
      const int64_t b = p.block_begin + u / p.num_kv_heads;
      const int64_t h = u % p.num_kv_heads;
      TransposeBlock(p, b, h, p.kt + u * block_floats);
    }
  });
  return absl::OkStatus();
}

absl::Status ValidateAttentionParams(const AttentionParams& p) { return Validate(p); }

absl::Status Attention(const AttentionParams& p, ThreadPool* pool) {
  if (absl::Status s = Validate(p); !s.ok()) return s;
  if (p.num_queries == 0) return absl::OkStatus();

  // Transpose the blocks some query can see that the caller did not provide.
  const int64_t blocks = (p.query_position + p.num_queries + kBlock - 1) / kBlock;
  const int64_t tail_blocks = std::max<int64_t>(0, blocks - p.kt_blocks);
  const int64_t block_floats = static_cast<int64_t>(p.head_dim) * kBlock;
  std::unique_ptr<float[]> tail(new float[std::max<int64_t>(1, tail_blocks) *
                                          p.num_kv_heads * block_floats]);
  if (tail_blocks > 0) {
    TransposeKeysParams t{p.k,        p.ldkv,      p.num_keys, p.num_kv_heads,
                          p.head_dim, p.kt_blocks, blocks,     tail.get()};
    if (absl::Status s = TransposeKeys(t, pool); !s.ok()) return s;
  }

  // Later tiles see more keys: hand them out first so that threads finish together.
  const int64_t tiles = (p.num_queries + kQueryTile - 1) / kQueryTile;
  ParallelFor(pool, tiles * p.num_kv_heads, [&](int64_t t) {
    const int64_t tile = tiles - 1 - t / p.num_kv_heads;
    const int64_t h = t % p.num_kv_heads;
    RunTile(p, tail.get(), h, tile * kQueryTile,
            std::min(p.num_queries, (tile + 1) * kQueryTile), ThreadScratch());
  });
  return absl::OkStatus();
}

}  // namespace tierkv::kernels
