#include "model/config.h"

#include <cmath>
#include <numbers>

#include "core/block_key.h"
#include "gtest/gtest.h"

namespace tierkv {
namespace {

constexpr char kLlama31Config[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 131072,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "tie_word_embeddings": false, "hidden_act": "silu", "attention_bias": false,
  "mlp_bias": false, "torch_dtype": "bfloat16", "bos_token_id": 128000
})";

TEST(ParseHfConfig, ReadsLlama31) {
  absl::StatusOr<ModelConfig> c = ParseHfConfig(kLlama31Config);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_FALSE(c->qkv_bias);
  EXPECT_FALSE(c->tie_word_embeddings);
}

TEST(ParseHfConfig, AppliesDefaultsAndModelTypes) {
  absl::StatusOr<ModelConfig> qwen = ParseHfConfig(R"({
    "architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936, "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "rope_theta": 1000000.0, "tie_word_embeddings": true,
    "use_sliding_window": false, "sliding_window": 32768, "rope_scaling": null})");
  ASSERT_TRUE(qwen.ok()) << qwen.status();
  EXPECT_EQ(qwen->model_type, "qwen2");
  EXPECT_TRUE(qwen->qkv_bias);
  EXPECT_FALSE(qwen->o_bias);
  EXPECT_TRUE(qwen->tie_word_embeddings);
  EXPECT_EQ(qwen->head_dim, 64);
  EXPECT_EQ(qwen->sliding_window, 0);
  EXPECT_EQ(qwen->rope_scaling.type, RopeScaling::Type::kNone);

  absl::StatusOr<ModelConfig> mistral = ParseHfConfig(R"({
    "model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "sliding_window": 4096})");
  ASSERT_TRUE(mistral.ok()) << mistral.status();
  EXPECT_EQ(mistral->sliding_window, 4096);
  EXPECT_EQ(mistral->rope_theta, 10000.0);
  EXPECT_EQ(mistral->rms_norm_eps, 1e-6);

  absl::StatusOr<ModelConfig> mha = ParseHfConfig(R"({
    "model_type": "llama", "vocab_size": 32000, "hidden_size": 512,
    "intermediate_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 8,
    "rope_scaling": {"type": "linear", "factor": 2.0}, "attention_bias": true})");
  ASSERT_TRUE(mha.ok()) << mha.status();
  EXPECT_EQ(mha->num_kv_heads, 8);
  EXPECT_TRUE(mha->qkv_bias);
  EXPECT_TRUE(mha->o_bias);
  EXPECT_EQ(mha->rope_scaling.type, RopeScaling::Type::kLinear);
}

TEST(ParseHfConfig, ErrorsNameTheProblem) {
  auto code_and_message = [](std::string_view json) {
    absl::StatusOr<ModelConfig> c = ParseHfConfig(json);
    EXPECT_FALSE(c.ok());
    return std::make_pair(c.status().code(), std::string(c.status().message()));
  };
  auto [c1, m1] = code_and_message("{not json");
  EXPECT_EQ(c1, absl::StatusCode::kInvalidArgument);
  auto [c2, m2] = code_and_message(R"({"model_type": "llama", "vocab_size": 10})");
  EXPECT_EQ(c2, absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m2.find("hidden_size"), std::string::npos) << m2;
  auto [c3, m3] = code_and_message(R"({"model_type": "gpt2"})");
  EXPECT_EQ(c3, absl::StatusCode::kUnimplemented);
  EXPECT_NE(m3.find("gpt2"), std::string::npos);
  auto [c4, m4] = code_and_message(R"({"model_type": "llama", "vocab_size": 10,
      "hidden_size": "512", "intermediate_size": 1, "num_hidden_layers": 1,
      "num_attention_heads": 1})");
  EXPECT_EQ(c4, absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m4.find("hidden_size"), std::string::npos);
  auto [c5, m5] = code_and_message(R"({"model_type": "llama", "vocab_size": 10,
      "hidden_size": 512, "intermediate_size": 1, "num_hidden_layers": 1,
      "num_attention_heads": 8, "num_key_value_heads": 3})");
  EXPECT_EQ(c5, absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m5.find("num_key_value_heads"), std::string::npos);
  auto [c6, m6] = code_and_message(R"({"model_type": "llama", "vocab_size": 10,
      "hidden_size": 512, "intermediate_size": 1, "num_hidden_layers": 1,
      "num_attention_heads": 8, "rope_scaling": {"rope_type": "yarn", "factor": 4}})");
  EXPECT_EQ(c6, absl::StatusCode::kUnimplemented);
  EXPECT_NE(m6.find("yarn"), std::string::npos);
}

TEST(ToHfConfigJson, RoundTrips) {
  for (ModelConfig c : {BuiltinTinyConfig(), *ParseHfConfig(kLlama31Config)}) {
    absl::StatusOr<ModelConfig> back = ParseHfConfig(ToHfConfigJson(c));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, c);
  }
  ModelConfig q = BuiltinTinyConfig();
  q.model_type = "qwen2";
  q.qkv_bias = true;
  q.tie_word_embeddings = true;
  EXPECT_EQ(*ParseHfConfig(ToHfConfigJson(q)), q);
}

TEST(BuiltinTinyConfig, MatchesCoreSpecShape) {
  const ModelConfig c = BuiltinTinyConfig();
  const ModelSpec spec = BuiltinTinyModelSpec();
  EXPECT_TRUE(c.Validate().ok());
  EXPECT_EQ(c.num_layers, spec.num_layers);
  EXPECT_EQ(c.num_kv_heads, spec.num_kv_heads);
  EXPECT_EQ(c.head_dim, spec.head_dim);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.hidden_size, 512);
  EXPECT_EQ(c.intermediate_size, 1408);
  EXPECT_EQ(c.vocab_size, 32768);
}

// Llama 3 scaling: wavelengths above 8192 (low band) are divided by the factor, below
// 2048 (high band) untouched, in between interpolated.
TEST(RopeInvFreq, Llama3ScalingBands) {
  const ModelConfig c = BuiltinTinyConfig();
  ModelConfig plain = c;
  plain.rope_scaling = RopeScaling();
  const std::vector<float> scaled = c.RopeInvFreq();
  const std::vector<float> base = plain.RopeInvFreq();
  ASSERT_EQ(scaled.size(), 32u);
  EXPECT_EQ(base[0], 1.0f);
  int low = 0, high = 0, mid = 0;
  for (size_t i = 0; i < base.size(); ++i) {
    EXPECT_NEAR(base[i], 1.0 / std::pow(500000.0, 2.0 * i / 64), 1e-6 * base[i] + 1e-12);
    const double wavelen = 2 * std::numbers::pi / base[i];
    if (wavelen < 2048) {
      EXPECT_EQ(scaled[i], base[i]) << i;
      ++high;
    } else if (wavelen > 8192) {
      EXPECT_NEAR(scaled[i], base[i] / 8.0, 1e-7 * base[i]) << i;
      ++low;
    } else {
      EXPECT_LT(scaled[i], base[i]);
      EXPECT_GT(scaled[i], base[i] / 8.0);
      ++mid;
    }
  }
  EXPECT_GT(low, 0);
  EXPECT_GT(high, 0);
  EXPECT_GT(mid, 0);
}

}  // namespace
}  // namespace tierkv
