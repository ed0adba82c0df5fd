// The architecture hyperparameters of a Llama-family model, read from a Hugging Face
// config.json or built in.
#ifndef TIERKV_MODEL_CONFIG_H_
#define TIERKV_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tierkv {

// rope_scaling of config.json.
struct RopeScaling {
  enum class Type {
    kNone,    // Plain RoPE with rope_theta (also rope_type "default").
    kLinear,  // Positions divided by factor (inv_freq / factor).
    kLlama3,  // Llama 3.1 frequency-dependent scaling.
  };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;                    // kLlama3 only.
  double high_freq_factor = 4.0;                   // kLlama3 only.
  int64_t original_max_position_embeddings = 8192;  // kLlama3 only.

  bool operator==(const RopeScaling&) const = default;
};

struct ModelConfig {
  // "llama", "mistral" or "qwen2" (config.json model_type). Mistral and Llama share one
  // architecture; Qwen2 adds q/k/v biases.
  std::string model_type = "llama";
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;          // num_hidden_layers.
  int64_t num_heads = 0;           // num_attention_heads.
  int64_t num_kv_heads = 0;        // num_key_value_heads (defaults to num_heads).
  int64_t head_dim = 0;            // head_dim (defaults to hidden_size / num_heads).
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;  // lm_head shares embed_tokens.
  bool qkv_bias = false;             // q/k/v projections have biases (Qwen2, attention_bias).
  bool o_bias = false;               // o_proj has a bias (Llama attention_bias).
  int64_t sliding_window = 0;        // 0: full causal attention.

  // OK, or INVALID_ARGUMENT naming the first inconsistent field: non-positive sizes,
  // num_heads not a multiple of num_kv_heads, head_dim odd or not a multiple of 16 (what
  // the attention kernel needs), bad RoPE parameters.
  absl::Status Validate() const;

  // The RoPE inverse frequencies, head_dim / 2 of them, in fp32 as Hugging Face computes
  // them: 1 / rope_theta^(2i / head_dim), then the rope_scaling adjustment.
  std::vector<float> RopeInvFreq() const;

  bool operator==(const ModelConfig&) const = default;
};

// Parses the text of a Hugging Face config.json. Accepts model_type llama, mistral and
// qwen2 (or architectures LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM).
// INVALID_ARGUMENT for malformed JSON, a missing required field or a wrong type (naming
// it); UNIMPLEMENTED for another model_type, an unsupported rope_scaling type, mlp_bias, or
// a non-SiLU hidden_act. The result is validated.
absl::StatusOr<ModelConfig> ParseHfConfig(std::string_view json);

// Reads and parses `dir`/config.json; NOT_FOUND when it is missing.
absl::StatusOr<ModelConfig> LoadHfConfig(const std::string& dir);

// The config as Hugging Face config.json text (what ParseHfConfig reads back to an equal
// config). Tests use it to write model directories.
std::string ToHfConfigJson(const ModelConfig& config);

// The built-in model `builtin:tiny`: 4 layers, hidden 512, 8 query heads and 4 KV heads of
// 64 dims, intermediate 1408, vocab 32768, RMSNorm eps 1e-5, rope_theta 500000 with Llama 3
// scaling (factor 8, low 1, high 4, original 8192), 131072 positions, untied lm_head. Its
// KV shape matches BuiltinTinyModelSpec() in core/block_key.h.
ModelConfig BuiltinTinyConfig();

// The shape of Llama 3.1 8B (32 layers, 32 query and 8 KV heads of 128, 14336 intermediate,
// 128256 tokens, 128K context with Llama 3 RoPE scaling), for benchmarks with random weights.
ModelConfig Llama3_8BShapeConfig();

}  // namespace tierkv

#endif  // TIERKV_MODEL_CONFIG_H_
