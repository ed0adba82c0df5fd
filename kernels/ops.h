// Numeric primitives of the transformer forward pass, CPU implementations.
//
// Each kernel takes a plain Params struct (pointers, strides in elements, sizes) and a
// ThreadPool (null runs on the calling thread), validates the params and returns
// INVALID_ARGUMENT naming the first bad field, or OK once the outputs are written. Buffers
// are fp32, row-major, owned by the caller, and must not overlap unless a field says so.
// Every function is thread-safe (no shared state) and may be called concurrently on
// disjoint outputs. kernels/reference.h holds naive double-precision versions to check
// against.
//
// Determinism contract. For every kernel, the value of an output element is a function of
// the inputs it depends on only: the same bits whatever the number of rows or queries in
// the call, the row at which the call starts, the pool size and the task order. This is
// what makes a prefill split at any block boundary, or continued by one-token decode steps,
// produce bitwise the KV and logits of one cold prefill. It holds because
// - a reduction is never split across threads or calls: each output element is reduced by
//   one thread, in an order fixed by the element's own coordinates (Matmul: 16 lanes over
//   k mod 16, each lane in increasing k, then a fixed tree over the lanes; Attention: keys
//   in increasing blocks of 64 at absolute positions, online softmax per block);
// - threads only partition independent outputs (rows, columns, heads, query tiles);
// - there is no FMA contraction and no libm call on the hot path (exp is our own
//   polynomial), so the AVX-512, AVX2 and SSE2 code paths also agree bit for bit.
#ifndef TIERKV_KERNELS_OPS_H_
#define TIERKV_KERNELS_OPS_H_

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "kernels/thread_pool.h"

namespace tierkv::kernels {

// y[i][j] = sum_k x[i][k] * w[j][k]  (+ bias[j])  (+ y[i][j] when accumulate)
//
// w is a PyTorch nn.Linear weight ([out][in]). The sum is computed as 16 partial sums
// (lane l sums the k = l (mod 16) terms in increasing k; a short last chunk is padded
// with zeros), combined by the fixed tree of ReduceSum in kernels/internal/simd.h; then
// the bias is added, then the old y. y must not overlap x, w or bias.
struct MatmulParams {
  const float* x = nullptr;  // [m][k], row stride ldx >= k.
  int64_t ldx = 0;
  const float* w = nullptr;  // [n][k], row stride ldw >= k.
  int64_t ldw = 0;
  const float* bias = nullptr;  // [n], or null for none.
  float* y = nullptr;           // [m][n], row stride ldy >= n.
  int64_t ldy = 0;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;  // May be 0 (then y is bias, or zero).
  bool accumulate = false;  // Add the product to y instead of overwriting it.
};
absl::Status Matmul(const MatmulParams& p, ThreadPool* pool);

// y[i][j] = (x[i][j] * r_i) * weight[j],  r_i = 1 / sqrt(sum_j x[i][j]^2 / dim + eps)
// with the sum of squares reduced like a Matmul row. y may equal x (in place).
struct RmsNormParams {
  const float* x = nullptr;  // [rows][dim], row stride ldx.
  int64_t ldx = 0;
  const float* weight = nullptr;  // [dim].
  float* y = nullptr;             // [rows][dim], row stride ldy.
  int64_t ldy = 0;
  int64_t rows = 0;
  int64_t dim = 0;
  float eps = 1e-5f;
};
absl::Status RmsNorm(const RmsNormParams& p, ThreadPool* pool);

// Rotary position embedding in place, in the Hugging Face "rotate_half" convention: for
// each head, element i < head_dim/2 pairs with i + head_dim/2:
//   x'[i]        = x[i] * cos[i] - x[i + h] * sin[i]
//   x'[i + h]    = x[i + h] * cos[i] + x[i] * sin[i]        (h = head_dim / 2)
// with cos/sin taken from row r of the tables for row r of x.
struct RopeParams {
  float* x = nullptr;  // [rows][num_heads][head_dim] (heads contiguous), row stride ldx.
  int64_t ldx = 0;
  int64_t rows = 0;
  int num_heads = 0;
  int head_dim = 0;        // Even.
  const float* cos = nullptr;  // [rows][head_dim / 2].
  const float* sin = nullptr;  // [rows][head_dim / 2].
};
absl::Status ApplyRope(const RopeParams& p, ThreadPool* pool);

// Fills cos/sin tables ([rows][inv_freq.size()]) for positions start .. start+rows-1:
// angle = float(position) * inv_freq[i] rounded to fp32 (as Hugging Face computes it), then
// cos and sin of that angle evaluated in double and rounded to fp32. Deterministic per
// position, so any split of a sequence gets the same rows.
void RopeCosSin(std::span<const float> inv_freq, int64_t start, int64_t rows, float* cos,
                float* sin);

// out[i][j] = silu(gate_up[i][j]) * gate_up[i][inter + j],  silu(g) = g / (1 + e^-g)
// (the SwiGLU MLP activation over a fused [gate | up] projection).
struct SwiGluParams {
  const float* gate_up = nullptr;  // [rows][2 * inter], row stride ld_gate_up.
  int64_t ld_gate_up = 0;
  float* out = nullptr;  // [rows][inter], row stride ld_out.
  int64_t ld_out = 0;
  int64_t rows = 0;
  int64_t inter = 0;
};
absl::Status SwiGlu(const SwiGluParams& p, ThreadPool* pool);

// Keys per step of the attention kernel's online softmax. Part of its arithmetic (see
// below) and the block size of the transposed key layout.
inline constexpr int kAttentionKeyBlock = 64;

// Causal grouped-query attention of a run of consecutive query positions against a KV
// cache that already holds their own keys:
//   query row r sits at position pos = query_position + r and attends to keys
//   j in [first, pos], first = max(0, pos - sliding_window + 1) (0 when sliding_window is 0);
//   query head hq reads KV head hq / (num_q_heads / num_kv_heads);
//   out = softmax_j(scale * q.k_j) . v_j
// Arithmetic per (row, head), fixed by its position alone: keys go in blocks of
// kAttentionKeyBlock at absolute positions 64b .. 64b+63, in increasing b; a score is the
// dot product over d in increasing d, times scale; each block updates the running max m,
// the running sum l (the block's probabilities summed as four 16-lane vectors
// ((p0 + p1) + (p2 + p3)) reduced by the fixed tree of ReduceSum) and the output
// accumulator (rescaled by exp(m_old - m_new), then the block's keys added in increasing j).
// At the end out = acc / l.
//
// The kernel reads K transposed, in the layout of TransposeKeys below. It transposes what it
// needs itself, except the first kt_blocks blocks when the caller passes them in kt (a KV
// cache can keep them, so that a decode step does not transpose the whole context again).
struct AttentionParams {
  const float* q = nullptr;  // [num_queries][num_q_heads][head_dim], row stride ldq.
  int64_t ldq = 0;
  const float* k = nullptr;  // [num_keys][num_kv_heads][head_dim], row stride ldkv.
  const float* v = nullptr;  // Same layout as k.
  int64_t ldkv = 0;
  float* out = nullptr;  // [num_queries][num_q_heads][head_dim], row stride ldo.
  int64_t ldo = 0;
  int64_t num_queries = 0;
  int64_t query_position = 0;  // Position of query row 0.
  int64_t num_keys = 0;        // At least query_position + num_queries.
  int num_q_heads = 0;         // A multiple of num_kv_heads.
  int num_kv_heads = 0;
  int head_dim = 0;  // A multiple of 16, at most 256.
  float scale = 0;   // Usually 1 / sqrt(head_dim).
  int64_t sliding_window = 0;  // 0: no window.
  // Optional: blocks 0 .. kt_blocks-1 of k already transposed (TransposeKeys layout with
  // block_begin 0). They must be full blocks (64 * kt_blocks <= num_keys) and equal to what
  // TransposeKeys makes of k.
  const float* kt = nullptr;
  int64_t kt_blocks = 0;
};
absl::Status Attention(const AttentionParams& p, ThreadPool* pool);
// The checks Attention makes of its params (INVALID_ARGUMENT naming what is wrong).
absl::Status ValidateAttentionParams(const AttentionParams& p);

// Transposes key blocks [block_begin, block_end) for attention: block b of KV head h becomes
// a [head_dim][64] array (element [d][t] = key 64b+t, dim d) at offset
// (((b - block_begin) * num_kv_heads + h) * head_dim) * 64 floats of kt, so whole blocks
// lie one after another. Lanes of keys at or past num_keys are zero. kt must hold
// (block_end - block_begin) * num_kv_heads * head_dim * 64 floats.
struct TransposeKeysParams {
  const float* k = nullptr;  // [num_keys][num_kv_heads][head_dim], row stride ldk.
  int64_t ldk = 0;
  int64_t num_keys = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int64_t block_begin = 0;
  int64_t block_end = 0;
  float* kt = nullptr;  // Block block_begin of head 0.
};
absl::Status TransposeKeys(const TransposeKeysParams& p, ThreadPool* pool);

}  // namespace tierkv::kernels

#endif  // TIERKV_KERNELS_OPS_H_
