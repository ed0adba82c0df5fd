// A Llama-family transformer (Llama 2/3, Mistral, Qwen2 shapes) running in fp32 on the CPU:
// the reference that GPU kernels will be checked against, and the compute of the CPU
// prefill and decode workers.
//
// Determinism: the KV and logits computed for a token are bitwise identical however the
// computation is split: one cold Prefill, a Prefill continued from KV of any earlier
// prefix (computed here or read back with AppendBlock), or Decode steps, and whatever the
// thread count. Every kernel reduces each output element in an order fixed by the element
// alone (kernels/ops.h), and KV is rounded to the spec's kv_dtype as it is computed. So
// greedy generation from a warm cache yields exactly the tokens of a cold run.
#ifndef TIERKV_MODEL_MODEL_H_
#define TIERKV_MODEL_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/block_key.h"
#include "kernels/device.h"
#include "kernels/dtype.h"
#include "kernels/ops.h"
#include "kernels/sampling.h"
#include "kernels/thread_pool.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/sparse_plan.h"
#include "model/weights.h"

namespace tierkv {

inline constexpr std::string_view kBuiltinTinyModelId = "builtin:tiny";
inline constexpr uint64_t kBuiltinTinySeed = 1234;
// Llama3_8BShapeConfig() with SeededWeights(seed 1234) rounded to bf16, generated on the GPU:
// the model of the GPU benchmarks (the CPU runtime refuses it: 32 GB of fp32 weights).
inline constexpr std::string_view kBuiltinLlama3_8BRandomId = "builtin:llama-3-8b-random";

struct ModelOptions {
  // Kernel threads; 0 shares kernels::ThreadPool::Default() (one per hardware thread).
  int num_threads = 0;
  // kv_dtype of the model's spec: "fp32", "bf16" or "fp16". KV is rounded to it as it is
  // computed, so KV read back from block objects equals locally computed KV bit for bit.
  std::string kv_dtype = "fp32";
  // model_id of the spec; empty: "builtin:tiny", or the model directory's name.
  std::string model_id;
  uint32_t block_tokens = kDefaultBlockTokens;
  // How a Hugging Face directory's weights_digest is computed (model/weights.h).
  WeightsDigestMode digest_mode = WeightsDigestMode::kFull;
  // Tokens per forward chunk inside Prefill: bounds activation memory; results do not
  // depend on it.
  int64_t prefill_chunk_tokens = 2048;
  // Only kCpu exists today; kCuda gives UNIMPLEMENTED.
  kernels::Device device = kernels::Device::kCpu;
  // Sparse attention for long prefills (null: dense everywhere). A forward chunk of at least
  // 64 queries whose attention spans at least plan->min_tokens keys runs each head over the
  // index its pattern builds (kernels/sparse_attention.h), or over the full index (dense
  // attention, through the same reference kernel) where that index would cover more than
  // plan->max_coverage of the query-key pairs; decode steps, short chunks and models with a
  // sliding window stay on the dense kernel.
  std::shared_ptr<const SparsePlan> sparse_plan;
};

// Immutable after creation: Prefill and Decode may run concurrently from several threads
// on different KvCaches (they share the kernel thread pool).
class Model {
 public:
  // "builtin:tiny" (no files) or the path of a Hugging Face model directory (config.json
  // and safetensors files). Errors of LoadHfConfig / LoadHfWeights / HfWeightsDigest, and
  // INVALID_ARGUMENT for bad options (unknown kv_dtype, block_tokens not a power of two,
  // non-positive prefill_chunk_tokens).
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& name_or_dir,
                                                     const ModelOptions& options = {});
  // The built-in model: BuiltinTinyConfig() with SeededWeights(seed 1234), spec
  // weights_digest "seed:1234". Its default spec equals core's BuiltinTinyModelSpec().
  static absl::StatusOr<std::unique_ptr<Model>> BuiltinTiny(const ModelOptions& options = {});
  // A Hugging Face model directory.
  static absl::StatusOr<std::unique_ptr<Model>> LoadHf(const std::string& dir,
                                                       const ModelOptions& options = {});
  // Weights built in memory; INVALID_ARGUMENT when they do not fit the config
  // (ValidateWeights). `model_id` and `weights_digest` go into the spec.
  static absl::StatusOr<std::unique_ptr<Model>> Create(const ModelConfig& config,
                                                       ModelWeights weights,
                                                       std::string model_id,
                                                       std::string weights_digest,
                                                       const ModelOptions& options = {});
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return config_; }
  // num_layers, num_kv_heads and head_dim from the config; tp 0 of 1.
  const ModelSpec& spec() const { return spec_; }
  int64_t vocab_size() const { return config_.vocab_size; }
  int64_t max_positions() const { return config_.max_position_embeddings; }

  // An empty KV cache shaped for this model.
  KvCache NewKvCache() const;

  // Runs `tokens` at positions kv->tokens(), kv->tokens() + 1, ..., appends their K and V
  // to `kv` and returns the logits ([vocab_size] fp32) of the last token.
  // INVALID_ARGUMENT (kv unchanged) for no tokens, a token id >= vocab_size (naming its
  // index), a kv of another shape, or kv->tokens() + tokens.size() beyond
  // max_position_embeddings.
  absl::StatusOr<std::vector<float>> Prefill(std::span<const uint32_t> tokens,
                                             KvCache* kv) const;
  // Prefill that hands `observe` (when set) each layer's attention inputs of every forward
  // chunk, just before that attention runs: the chunk's queries after RoPE and the layer's
  // keys and values so far (kernels::AttentionParams; the memory is valid only during the
  // call). For tools that study the model's attention (tierkv-pattern-search).
  using AttentionObserver = std::function<void(int layer, const kernels::AttentionParams&)>;
  absl::StatusOr<std::vector<float>> PrefillObserved(std::span<const uint32_t> tokens,
                                                     KvCache* kv,
                                                     const AttentionObserver& observe) const;
  // One decode step: Prefill of a single token.
  absl::StatusOr<std::vector<float>> Decode(uint32_t token, KvCache* kv) const;

  kernels::ThreadPool* pool() const { return pool_; }

 private:
  struct Layer;
  Model(const ModelConfig& config, ModelSpec spec, const ModelOptions& options);
  absl::Status Pack(ModelWeights weights);
  // One chunk of Prefill; writes logits when `logits` is not null.
  absl::Status Forward(std::span<const uint32_t> tokens, KvCache* kv, float* logits,
                       const AttentionObserver& observe) const;
  // Attention of one layer's chunk under sparse_plan_ (see ModelOptions::sparse_plan).
  absl::Status SparseLayerAttention(kernels::AttentionParams ap, int layer,
                                    kernels::ThreadPool* pool) const;

  // Constant after construction.
  ModelConfig config_;
  ModelSpec spec_;
  kernels::DType kv_dtype_;
  int64_t chunk_tokens_;
  std::vector<float> rope_inv_freq_;
  std::vector<Layer> layers_;
  std::vector<float> embed_;    // [vocab][hidden]
  std::vector<float> norm_;     // [hidden]
  std::vector<float> lm_head_;  // [vocab][hidden]; empty when tied to embed_.
  std::unique_ptr<kernels::ThreadPool> own_pool_;
  kernels::ThreadPool* pool_;  // own_pool_ or the process-wide default pool.
  std::shared_ptr<const SparsePlan> sparse_plan_;
};

// The config of what Model::Load / CudaModel::Load would load (builtin:tiny,
// builtin:llama-3-8b-random or a Hugging Face directory), without loading weights; errors
// as they give for the name.
absl::StatusOr<ModelConfig> ModelConfigOf(const std::string& name_or_dir);

// What every runtime's Prefill checks first: INVALID_ARGUMENT for no tokens, a KV cache of
// another shape than the config's, or a token id >= vocab_size (naming its index).
absl::Status CheckPrefillInput(const ModelConfig& config, const ModelSpec& spec,
                               std::span<const uint32_t> tokens, int kv_layers,
                               int kv_heads, int kv_head_dim);

// The spec of a model with this config (tp 0 of 1).
ModelSpec ModelSpecFor(const ModelConfig& config, std::string model_id,
                       std::string weights_digest, std::string kv_dtype, uint32_t block_tokens);

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  kernels::SamplingParams sampling;  // Greedy by default.
  std::vector<uint32_t> stop_tokens;  // Generation ends after producing one of these.
};

// Prefills `prompt` after what `kv` holds, then samples up to max_new_tokens tokens,
// feeding each back with Decode (the last one is not fed back). Returns the generated
// tokens; kv ends holding the prompt and every generated token but the last. Errors of
// Prefill / Decode; INVALID_ARGUMENT for bad sampling params.
absl::StatusOr<std::vector<uint32_t>> Generate(const Model& model,
                                               std::span<const uint32_t> prompt, KvCache* kv,
                                               const GenerateOptions& options);

}  // namespace tierkv

#endif  // TIERKV_MODEL_MODEL_H_
