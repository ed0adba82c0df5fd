// The weights of a Llama-family model in fp32, under their Hugging Face names and shapes:
// loaded from a model directory, generated from a seed (the built-in model), or built in
// memory by a test.
#ifndef TIERKV_MODEL_WEIGHTS_H_
#define TIERKV_MODEL_WEIGHTS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/thread_pool.h"
#include "model/config.h"

namespace tierkv {

// A dense row-major fp32 tensor in host memory.
struct HostTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;

  int64_t numel() const;
  bool empty() const { return data.empty(); }
};

// Projection weights are PyTorch nn.Linear weights, [out_features][in_features].
struct LayerWeights {
  HostTensor input_layernorm;           // [hidden]
  HostTensor q_proj;                    // [num_heads * head_dim][hidden]
  HostTensor k_proj;                    // [num_kv_heads * head_dim][hidden]
  HostTensor v_proj;                    // [num_kv_heads * head_dim][hidden]
  HostTensor q_bias, k_bias, v_bias;    // [out] when config.qkv_bias, else empty.
  HostTensor o_proj;                    // [hidden][num_heads * head_dim]
  HostTensor o_bias;                    // [hidden] when config.o_bias, else empty.
  HostTensor post_attention_layernorm;  // [hidden]
  HostTensor gate_proj;                 // [intermediate][hidden]
  HostTensor up_proj;                   // [intermediate][hidden]
  HostTensor down_proj;                 // [hidden][intermediate]
};

struct ModelWeights {
  HostTensor embed_tokens;  // [vocab][hidden]
  std::vector<LayerWeights> layers;
  HostTensor norm;     // [hidden]
  HostTensor lm_head;  // [vocab][hidden]; empty when config.tie_word_embeddings.
};

// One tensor a config needs: its Hugging Face name (e.g.
// "model.layers.3.self_attn.k_proj.weight"), its shape, and where it lives in `weights`.
struct WeightSlot {
  std::string name;
  std::vector<int64_t> shape;
  HostTensor* tensor;
};

// Every tensor `config` needs, in a fixed order: embed_tokens, then per layer the norms,
// projections and biases, then norm and lm_head (absent when tied). Resizes
// weights->layers to config.num_layers; does not touch the tensors.
std::vector<WeightSlot> WeightSlots(const ModelConfig& config, ModelWeights* weights);

// OK when every tensor `config` needs is present with its shape and data size, and no
// tensor it does not need (a bias, a tied lm_head) is set; else INVALID_ARGUMENT naming
// the tensor with the expected and actual shapes.
absl::Status ValidateWeights(const ModelConfig& config, const ModelWeights& weights);

// Deterministic weights from a seed, reproducible on any platform (and later on the GPU).
// Element i (row-major) of the tensor called `name` is
//   u = UniformPm1(RandomBits(StreamKey(seed, Fnv1a64(name)), i))     (kernels/random.h)
// scaled, in fp32, by the tensor's kind:
//   projections and lm_head:  u * (1 / sqrt(float(in_features)))
//   embed_tokens:             u
//   biases:                   u * 0.0625
//   RMSNorm weights:          1 + u * 0.125
// Each step is a single correctly rounded fp32 operation, so the values are exact to
// reproduce. The pool only speeds the generation up.
ModelWeights SeededWeights(const ModelConfig& config, uint64_t seed, kernels::ThreadPool* pool);

// The fp32 affine map SeededWeights applies to u for the tensor `name` of `shape`:
// value = u * scale + shift (shift is 0 except for norms; each step exact as above, and
// u * scale + 0 == u * scale), so other devices can generate the same values.
struct SeededAffine {
  float scale = 1.0f;
  float shift = 0.0f;
};
SeededAffine SeededAffineOf(const std::string& name, const std::vector<int64_t>& shape);

// Loads the tensors `config` needs from the safetensors files of a Hugging Face model
// directory: those named by model.safetensors.index.json when it exists, else every
// *.safetensors file of the directory. Tensors may be F32, F16 or BF16; they are converted
// to fp32. Errors:
//   NOT_FOUND: no safetensors files, a file the index names is missing, or a tensor is in
//     none of the files (naming the tensor and the files searched);
//   INVALID_ARGUMENT: a tensor's shape differs from config.json's (naming the tensor, file,
//     expected and actual shape), a malformed index or safetensors header, a tensor in two
//     files;
//   DATA_LOSS: a truncated file (naming it, the offset and the size);
//   UNIMPLEMENTED: a tensor of another dtype.
absl::StatusOr<ModelWeights> LoadHfWeights(const std::string& dir, const ModelConfig& config,
                                           kernels::ThreadPool* pool);

// How HfWeightsDigest identifies a model directory's weights.
enum class WeightsDigestMode {
  // SHA-256 over config.json and every byte of the safetensors files: "sha256:<hex>".
  // Reads everything (about 1-2 s per GB).
  kFull,
  // SHA-256 over config.json and each safetensors file's size and JSON header only:
  // "sha256-headers:<hex>". Instant, and still changes with any renamed, reshaped, retyped
  // or resized tensor, but not with edited values of the same size.
  kHeaders,
};

// The weights_digest of a Hugging Face model directory for ModelSpec. The hash covers, in
// order: the string "tierkv.hf-weights.v1", config.json, then per safetensors file (the
// files LoadHfWeights reads, sorted by name) its size as u64 little-endian and its bytes
// (kFull) or its header length and header (kHeaders). Errors as LoadHfWeights for missing
// or malformed files.
absl::StatusOr<std::string> HfWeightsDigest(const std::string& dir, WeightsDigestMode mode);

}  // namespace tierkv

#endif  // TIERKV_MODEL_WEIGHTS_H_
