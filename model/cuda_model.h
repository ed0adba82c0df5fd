// The Llama-family transformer of model/model.h on a CUDA GPU, in bf16 (weights, activations
// between kernels, KV) with fp32 arithmetic, an fp32 residual stream and fp32 logits.
//
// It loads the same models as the CPU runtime (the built-in tiny model, Hugging Face
// directories, weights in memory) and can also generate a large seeded model directly on the
// device (SeededWeights' values rounded to bf16) for benchmarks. Its KV is bf16 and
// converts to and from the same block objects (docs/block-object.md, kv_dtype "bf16") as the
// CPU KvCache, so blocks move between the two runtimes and the cache.
//
// Results agree with the CPU model run on the same bf16-rounded weights within bf16
// tolerance, not bit for bit (model/cuda_model_gpu_test.cc checks logits and KV).
#ifndef TIERKV_MODEL_CUDA_MODEL_H_
#define TIERKV_MODEL_CUDA_MODEL_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "core/block_key.h"
#include "kernels/cuda/memory.h"
#include "kernels/cuda/ops.h"
#include "model/config.h"
#include "model/sparse_plan.h"
#include "model/weights.h"

namespace tierkv {

struct CudaModelOptions {
  // model_id of the spec; empty: "builtin:tiny", the directory's name, or "seeded:<seed>".
  std::string model_id;
  uint32_t block_tokens = kDefaultBlockTokens;
  WeightsDigestMode digest_mode = WeightsDigestMode::kFull;
  // Tokens per forward chunk inside Prefill: bounds activation memory (about
  // chunk * (qkv + 2 * intermediate) * 2 bytes); results depend on it only by rounding.
  int64_t prefill_chunk_tokens = 8192;
  // Sparse attention for long prefills (model/sparse_plan.h; null: dense): any pattern and
  // budgets per head (no sliding window). A forward chunk of at least 64 queries whose
  // attention spans at least min_tokens keys builds, on the GPU, the index of each distinct
  // pattern of the layer (over every head; vertical-slash heads in one build each with its
  // own budgets, A-shape / block-sparse one build per distinct window / block count) and
  // runs the sparse kernel for that pattern's heads; heads whose index covers more than
  // max_coverage of the chunk's causal tiles, and dense heads, run the dense kernel.
  std::shared_ptr<const SparsePlan> sparse_plan;
};

// The KV of one sequence in device memory: per layer K and V, bf16
// [capacity][num_kv_heads][head_dim]. Move-only; used by one thread at a time.
class CudaKvCache {
 public:
  CudaKvCache() = default;
  CudaKvCache(CudaKvCache&&) noexcept = default;
  CudaKvCache& operator=(CudaKvCache&&) noexcept = default;

  int num_layers() const { return num_layers_; }
  int num_kv_heads() const { return num_kv_heads_; }
  int head_dim() const { return head_dim_; }
  int64_t row_elems() const { return static_cast<int64_t>(num_kv_heads_) * head_dim_; }
  int64_t tokens() const { return tokens_; }
  int64_t capacity() const { return capacity_; }
  // Device pointers to K / V of `layer` (capacity() rows).
  kernels::cuda::Bf16* k(int layer) const;
  kernels::cuda::Bf16* v(int layer) const;

  // Gives up the device memory (for another cache to reuse); the cache is empty after.
  kernels::cuda::DeviceBuffer TakeStorage() && {
    tokens_ = capacity_ = 0;
    return std::move(storage_);
  }

  // Keeps the first `tokens` tokens (no-op when there are fewer).
  void Truncate(int64_t tokens) {
    if (tokens < tokens_) tokens_ = tokens;
  }

  // Appends `num_blocks` consecutive block objects of spec (kv_dtype "bf16", shape of this
  // cache) from host memory `blocks` (num_blocks * spec.RawBlockBytes() bytes; pinned memory
  // makes the copy asynchronous on `stream`, which the caller synchronizes before reusing
  // `blocks`). INVALID_ARGUMENT for a spec of another shape or dtype; FAILED_PRECONDITION
  // when tokens() is not a multiple of block_tokens; RESOURCE_EXHAUSTED when the blocks do
  // not fit in capacity(). Nothing changes on error.
  absl::Status AppendBlocks(const void* blocks, int64_t num_blocks, const ModelSpec& spec,
                            kernels::cuda::Stream stream);
  // Appends block objects that lie in host memory in pieces (block i is the concatenation of
  // blocks[i]): each piece crosses PCIe in one copy into `staging` (device memory holding at
  // least one block), and each staged batch is spread into K and V on the device
  // (kernels::cuda::ScatterKvBlocks). Asynchronous on `stream`: the host memory must stay
  // valid and unchanged until the stream is synchronized; pinned or registered memory
  // (kernels::cuda::HostRegistration) makes the copies DMA. Errors as AppendBlocks, plus
  // INVALID_ARGUMENT when a block's pieces do not add up to spec.RawBlockBytes().
  // With `device_checksums` (device memory, one uint64 per block), also the XXH3 checksum
  // of each block as it landed in `staging`, which is what the KV is made from. The pieces
  // may lie in device memory too (the cache's GPU tier): the copies are then on the device.
  absl::Status AppendBlocksFromHost(std::span<const std::span<const PayloadPiece>> blocks,
                                    const ModelSpec& spec, void* staging, size_t staging_bytes,
                                    kernels::cuda::Stream stream,
                                    uint64_t* device_checksums = nullptr);
  // Appends `n` blocks lying whole in device memory (the cache's GPU tier): block i starts
  // at device_starts[i], a device array of 16-byte-aligned pointers. One scatter kernel
  // reads them where they lie, no staging. Asynchronous on `stream`; errors as
  // AppendBlocksFromHost.
  absl::Status AppendBlocksAt(const void* const* device_starts, int64_t n, const ModelSpec& spec,
                              kernels::cuda::Stream stream);
  // Writes blocks [first_block, first_block + blocks.size()) as block objects into host
  // memory in pieces (block i into the concatenation of blocks[i]): gathered on the device
  // into `staging`, then one copy per piece. Asynchronous on `stream` like
  // AppendBlocksFromHost; OUT_OF_RANGE when the cache does not hold the blocks,
  // INVALID_ARGUMENT when pieces do not add up to a block. With `device_checksums` (device
  // memory, one uint64 per block), also the XXH3 checksum of each block as gathered, before
  // it leaves the device: the checksum of what was meant to be written, not of what landed.
  absl::Status ExtractBlocksToHost(int64_t first_block,
                                   std::span<const std::span<const PayloadTarget>> blocks,
                                   const ModelSpec& spec, void* staging, size_t staging_bytes,
                                   kernels::cuda::Stream stream,
                                   uint64_t* device_checksums = nullptr) const;
  // Copies blocks [first_block, first_block + num_blocks) to host memory `out` as block
  // objects (the layout AppendBlocks reads). OUT_OF_RANGE when tokens() does not cover them.
  absl::Status ExtractBlocks(int64_t first_block, int64_t num_blocks, const ModelSpec& spec,
                             void* out, kernels::cuda::Stream stream) const;

 private:
  friend class CudaModel;
  absl::Status CheckSpec(const ModelSpec& spec) const;
  // The spec matches, the cache ends at a block boundary and n more blocks fit.
  absl::Status CheckAppend(int64_t n, const ModelSpec& spec) const;

  int num_layers_ = 0;
  int num_kv_heads_ = 0;
  int head_dim_ = 0;
  int64_t tokens_ = 0;
  int64_t capacity_ = 0;
  kernels::cuda::DeviceBuffer storage_;  // Layer l: K at 2l, V at 2l + 1, capacity rows each.
};

// Prefill and Decode may be called from several threads; they are serialized on the model's
// stream (one GPU), each call returning after its logits are on the host.
class CudaModel {
 public:
  // "builtin:tiny" or a Hugging Face model directory, like Model::Load. UNAVAILABLE when
  // there is no usable GPU; RESOURCE_EXHAUSTED when the weights do not fit in its memory.
  static absl::StatusOr<std::unique_ptr<CudaModel>> Load(const std::string& name_or_dir,
                                                         const CudaModelOptions& options = {});
  // Weights from host memory (fp32, rounded to bf16 on upload).
  static absl::StatusOr<std::unique_ptr<CudaModel>> Create(const ModelConfig& config,
                                                           const ModelWeights& weights,
                                                           std::string model_id,
                                                           std::string weights_digest,
                                                           const CudaModelOptions& options = {});
  // SeededWeights(config, seed) rounded to bf16, generated on the device (no host copy):
  // a Llama-3-8B-shaped model is ready in about a second. Spec weights_digest "seed:<seed>".
  static absl::StatusOr<std::unique_ptr<CudaModel>> Seeded(const ModelConfig& config,
                                                           uint64_t seed,
                                                           const CudaModelOptions& options = {});
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  const ModelConfig& config() const { return config_; }
  // kv_dtype "bf16".
  const ModelSpec& spec() const { return spec_; }
  kernels::cuda::Stream stream() const { return stream_.get(); }

  // An empty KV cache with room for `capacity_tokens` tokens (at most max_position_embeddings).
  // `reuse`, when it is large enough, becomes the cache's storage instead of a new
  // allocation (cudaMalloc of gigabytes costs milliseconds); see CudaKvCache::TakeStorage.
  absl::StatusOr<CudaKvCache> NewKvCache(int64_t capacity_tokens,
                                         kernels::cuda::DeviceBuffer* reuse = nullptr) const;
  // Bytes of device memory a KV cache of `capacity_tokens` tokens holds.
  size_t KvCacheBytes(int64_t capacity_tokens) const;

  // Runs `tokens` at positions kv->tokens(), ... , appends their K and V to `kv` and returns
  // the fp32 logits of the last token. INVALID_ARGUMENT (kv unchanged) for no tokens, a token
  // id >= vocab_size, a kv of another shape; RESOURCE_EXHAUSTED when kv lacks capacity.
  absl::StatusOr<std::vector<float>> Prefill(std::span<const uint32_t> tokens,
                                             CudaKvCache* kv) const;
  absl::StatusOr<std::vector<float>> Decode(uint32_t token, CudaKvCache* kv) const;

 private:
  struct Layer;
  struct Scratch;
  CudaModel(const ModelConfig& config, ModelSpec spec, const CudaModelOptions& options);
  absl::Status Init();
  absl::Status Forward(std::span<const uint32_t> tokens, CudaKvCache* kv, bool logits) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // One layer's attention of a chunk under sparse_plan_ (see CudaModelOptions::sparse_plan).
  absl::Status SparseLayerAttention(const kernels::cuda::AttentionParams& ap, int layer) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The index of `pattern` for every q head of the chunk into the scratch's index buffers
  // (grown to the lists' totals when they do not fit); the totals come back. members[h] is
  // head h's own pattern when it is in this build (vertical-slash heads of one build may
  // differ in budgets: each gets its own), else null.
  absl::Status BuildSparseIndex(const kernels::cuda::AttentionParams& ap,
                                const kernels::HeadPattern& pattern,
                                std::span<const kernels::HeadPattern* const> members,
                                int64_t* total_blocks, int64_t* total_columns) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  ModelConfig config_;
  ModelSpec spec_;
  int64_t chunk_tokens_;
  kernels::cuda::StreamOwner stream_;
  std::vector<Layer> layers_;
  kernels::cuda::DeviceBuffer embed_, norm_, lm_head_;  // lm_head_ empty when tied.
  kernels::cuda::DeviceBuffer rope_cos_, rope_sin_;     // [max_positions][head_dim / 2]
  int64_t rope_rows_ = 0;
  std::shared_ptr<const SparsePlan> sparse_plan_;

  mutable absl::Mutex mu_;
  std::unique_ptr<Scratch> scratch_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tierkv

#endif  // TIERKV_MODEL_CUDA_MODEL_H_
