// The KV cache of one sequence, and its conversion to and from block objects
// (docs/block-object.md).
#ifndef TIERKV_MODEL_KV_CACHE_H_
#define TIERKV_MODEL_KV_CACHE_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/block_key.h"
#include "kernels/thread_pool.h"

namespace tierkv {

// Per layer, K and V of every token so far as fp32 arrays [tokens][num_kv_heads][head_dim]
// (row-major, no padding), plus a transposed copy of K's full 64-token blocks that the
// attention kernel reads (kernels::TransposeKeys layout), kept in step with K.
//
// A value type: copying gives an independent sequence with the same KV. Not thread-safe;
// one sequence is extended by one thread at a time.
class KvCache {
 public:
  KvCache(int num_layers, int num_kv_heads, int head_dim);

  int num_layers() const { return num_layers_; }
  int num_kv_heads() const { return num_kv_heads_; }
  int head_dim() const { return head_dim_; }
  // Floats per token per layer in K (and in V): num_kv_heads * head_dim.
  int64_t row_floats() const { return static_cast<int64_t>(num_kv_heads_) * head_dim_; }
  int64_t tokens() const { return tokens_; }

  // K or V of `layer`: tokens() rows of row_floats(). Valid until the next non-const call.
  const float* k(int layer) const { return layers_[layer].k.data(); }
  const float* v(int layer) const { return layers_[layer].v.data(); }

  // Sets the number of tokens: new rows are zero until written, rows past `tokens` are
  // dropped. tokens >= 0.
  void Resize(int64_t tokens);
  // Keeps the first `tokens` tokens (no-op when there are fewer).
  void Truncate(int64_t tokens) {
    if (tokens < tokens_) Resize(tokens);
  }
  // Makes room for `tokens` tokens without reallocating later.
  void Reserve(int64_t tokens);

  // Copies rows [row, row + count) of one layer: K row i from k + i * ldk, V row i from
  // v + i * ldv (row_floats() each). Requires 0 <= row and row + count <= tokens().
  void WriteRows(int layer, int64_t row, int64_t count, const float* k, int64_t ldk,
                 const float* v, int64_t ldv);

  // Transposed K of the first num_key_blocks(layer) full blocks of
  // kernels::kAttentionKeyBlock tokens, for kernels::AttentionParams::kt.
  const float* key_blocks(int layer) const { return layers_[layer].kt.data(); }
  int64_t num_key_blocks(int layer) const { return layers_[layer].kt_blocks; }
  // Transposes the full blocks of `layer` not yet in key_blocks.
  absl::Status UpdateKeyBlocks(int layer, kernels::ThreadPool* pool);

 private:
  struct Layer {
    std::vector<float> k, v;
    std::vector<float> kt;  // kt_blocks transposed blocks.
    int64_t kt_blocks = 0;
  };

  int num_layers_;
  int num_kv_heads_;
  int head_dim_;
  int64_t tokens_ = 0;
  std::vector<Layer> layers_;
};

// Block `block_index` of `kv` (tokens [i * T, (i + 1) * T) with T = spec.block_tokens) as a
// raw block object: for each layer K then V, each [T][num_kv_heads][head_dim] in
// spec.kv_dtype, little-endian (docs/block-object.md), spec.RawBlockBytes() bytes.
// fp32 values are converted to bf16/fp16 by rounding to nearest even.
// INVALID_ARGUMENT when the spec is invalid or its num_layers / num_kv_heads / head_dim
// differ from the cache's; OUT_OF_RANGE when the cache does not hold the whole block.
absl::StatusOr<std::string> ExtractBlock(const KvCache& kv, uint64_t block_index,
                                         const ModelSpec& spec);
// The same, written into `out`, which must be exactly spec.RawBlockBytes() long (for
// example a registered transfer buffer).
absl::Status ExtractBlockInto(const KvCache& kv, uint64_t block_index, const ModelSpec& spec,
                              std::span<uint8_t> out);

// Appends one raw block object (the next spec.block_tokens tokens of the sequence) to
// `kv`, converting its elements to fp32. INVALID_ARGUMENT when the spec is invalid or does
// not match the cache's shape, or when `bytes` is not exactly spec.RawBlockBytes() long;
// FAILED_PRECONDITION when kv->tokens() is not a multiple of spec.block_tokens (blocks
// start at block boundaries). On error kv is unchanged.
absl::Status AppendBlock(KvCache* kv, std::span<const uint8_t> bytes, const ModelSpec& spec);
inline absl::Status AppendBlock(KvCache* kv, std::string_view bytes, const ModelSpec& spec) {
  return AppendBlock(
      kv, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()),
      spec);
}

}  // namespace tierkv

#endif  // TIERKV_MODEL_KV_CACHE_H_
