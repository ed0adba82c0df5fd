// Loading Hugging Face model directories written by our own safetensors writer: a Llama
// with GQA split over two shards with an index, tensors in bf16, fp16 and fp32; and a
// Qwen2-style model with q/k/v biases and tied embeddings in one file. The loaded model
// must compute exactly what the same weights built in memory compute.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"

namespace tierkv {
namespace {

namespace fs = std::filesystem;

std::string NewDir(const std::string& name) {
  const std::string dir =
      testing::TempDir() + "/tierkv_hf_" + std::to_string(::getpid()) + "/" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

ModelConfig TinyConfig(const std::string& type) {
  ModelConfig c;
  c.model_type = type;
  c.vocab_size = 101;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_layers = 3;
  c.num_heads = 4;
  c.num_kv_heads = type == "qwen2" ? 1 : 2;
  c.head_dim = 16;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = type == "qwen2" ? 1000000.0 : 500000.0;
  if (type == "llama") {
    c.rope_scaling.type = RopeScaling::Type::kLlama3;
    c.rope_scaling.factor = 8;
    c.rope_scaling.low_freq_factor = 1;
    c.rope_scaling.high_freq_factor = 4;
    c.rope_scaling.original_max_position_embeddings = 64;
  }
  c.max_position_embeddings = 1024;
  if (type == "qwen2") {
    c.qkv_bias = true;
    c.tie_word_embeddings = true;
  }
  return c;
}

// Random weights (not the seeded formula: a normal distribution, like a real checkpoint).
ModelWeights RandomWeights(const ModelConfig& c, uint32_t seed) {
  ModelWeights w;
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0, 0.3f);
  for (const WeightSlot& s : WeightSlots(c, &w)) {
    s.tensor->shape = s.shape;
    s.tensor->data.resize(s.tensor->numel());
    for (float& x : s.tensor->data) x = dist(rng) + (s.name.ends_with("norm.weight") ? 1.0f : 0.0f);
  }
  return w;
}

// Writes `config` and `weights` as a model directory: tensor i goes to shard
// i % shards.size() in dtype dtype_of(name); the in-memory weights are rounded to what was
// stored. With several shards, also writes model.safetensors.index.json.
template <typename DtypeOf>
void WriteHfDir(const std::string& dir, const ModelConfig& config, ModelWeights* weights,
                const std::vector<std::string>& shards, DtypeOf dtype_of,
                const std::vector<SafetensorsEntry>& extra = {}) {
  std::ofstream(dir + "/config.json") << ToHfConfigJson(config);
  std::vector<std::vector<SafetensorsEntry>> per_shard(shards.size());
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  size_t i = 0;
  for (const WeightSlot& s : WeightSlots(config, weights)) {
    const kernels::DType dtype = dtype_of(s.name);
    for (float& x : s.tensor->data) x = kernels::RoundToDType(x, dtype);
    per_shard[i % shards.size()].push_back({s.name, dtype, s.shape, s.tensor->data});
    index["weight_map"][s.name] = shards[i % shards.size()];
    ++i;
  }
  for (const SafetensorsEntry& e : extra) per_shard[0].push_back(e);
  for (size_t f = 0; f < shards.size(); ++f) {
    ASSERT_TRUE(WriteSafetensors(dir + "/" + shards[f], per_shard[f]).ok());
  }
  if (shards.size() > 1) std::ofstream(dir + "/model.safetensors.index.json") << index.dump(2);
}

void ExpectSameOutputs(const Model& loaded, const Model& built, uint32_t vocab) {
  std::mt19937 rng(11);
  std::vector<uint32_t> tokens(90);
  for (uint32_t& t : tokens) t = rng() % vocab;
  KvCache a = loaded.NewKvCache(), b = built.NewKvCache();
  absl::StatusOr<std::vector<float>> la = loaded.Prefill(tokens, &a);
  absl::StatusOr<std::vector<float>> lb = built.Prefill(tokens, &b);
  ASSERT_TRUE(la.ok() && lb.ok()) << la.status() << lb.status();
  ASSERT_EQ(la->size(), vocab);
  EXPECT_EQ(std::memcmp(la->data(), lb->data(), la->size() * 4), 0);
  for (int l = 0; l < a.num_layers(); ++l) {
    EXPECT_EQ(std::memcmp(a.k(l), b.k(l), a.tokens() * a.row_floats() * 4), 0);
    EXPECT_EQ(std::memcmp(a.v(l), b.v(l), a.tokens() * a.row_floats() * 4), 0);
  }
  // Sanity: the logits are not all equal.
  EXPECT_NE(*std::max_element(la->begin(), la->end()), *std::min_element(la->begin(), la->end()));
}

TEST(LoadHf, ShardedLlamaWithMixedDtypesComputesLikeInMemoryWeights) {
  const std::string dir = NewDir("llama-gqa");
  const ModelConfig config = TinyConfig("llama");
  ModelWeights weights = RandomWeights(config, 1);
  WriteHfDir(dir, config, &weights,
             {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"},
             [](const std::string& name) {
               if (name.ends_with("norm.weight")) return kernels::DType::kF32;
               if (name.find("v_proj") != std::string::npos) return kernels::DType::kF16;
               return kernels::DType::kBF16;
             });
  absl::StatusOr<std::unique_ptr<Model>> loaded = Model::Load(dir, {.num_threads = 2});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->config(), config);
  const ModelSpec& spec = (*loaded)->spec();
  EXPECT_EQ(spec.model_id, "llama-gqa");
  EXPECT_EQ(spec.weights_digest.rfind("sha256:", 0), 0u) << spec.weights_digest;
  EXPECT_EQ(spec.num_layers, 3u);
  EXPECT_EQ(spec.num_kv_heads, 2u);
  EXPECT_EQ(spec.head_dim, 16u);
  EXPECT_EQ(spec.kv_dtype, "fp32");
  EXPECT_EQ(spec.block_tokens, 16u);

  absl::StatusOr<std::unique_ptr<Model>> built =
      Model::Create(config, weights, "llama-gqa", spec.weights_digest, {.num_threads = 2});
  ASSERT_TRUE(built.ok()) << built.status();
  ExpectSameOutputs(**loaded, **built, config.vocab_size);

  // Options reach the spec; a trailing slash does not change the name.
  absl::StatusOr<std::unique_ptr<Model>> renamed =
      Model::Load(dir + "/", {.num_threads = 1, .kv_dtype = "bf16", .model_id = "my-llama",
                              .digest_mode = WeightsDigestMode::kHeaders});
  ASSERT_TRUE(renamed.ok()) << renamed.status();
  EXPECT_EQ((*renamed)->spec().model_id, "my-llama");
  EXPECT_EQ((*renamed)->spec().kv_dtype, "bf16");
  EXPECT_EQ((*renamed)->spec().weights_digest.rfind("sha256-headers:", 0), 0u);
  EXPECT_EQ((*Model::Load(dir + "/", {.num_threads = 1}))->spec().model_id, "llama-gqa");
}

TEST(LoadHf, Qwen2WithBiasesAndTiedEmbeddings) {
  const std::string dir = NewDir("qwen2-tied");
  const ModelConfig config = TinyConfig("qwen2");
  ModelWeights weights = RandomWeights(config, 2);
  ASSERT_FALSE(weights.layers[0].q_bias.empty());
  ASSERT_TRUE(weights.lm_head.empty());
  // Some tied checkpoints still carry an lm_head; it is ignored.
  std::vector<float> stray(config.vocab_size * config.hidden_size, 5.0f);
  WriteHfDir(dir, config, &weights, {"model.safetensors"},
             [](const std::string&) { return kernels::DType::kF16; },
             {{"lm_head.weight", kernels::DType::kF32, {config.vocab_size, config.hidden_size}, stray}});
  absl::StatusOr<std::unique_ptr<Model>> loaded = Model::Load(dir, {.num_threads = 2});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  absl::StatusOr<std::unique_ptr<Model>> built =
      Model::Create(config, weights, "qwen2-tied", "x", {.num_threads = 2});
  ASSERT_TRUE(built.ok()) << built.status();
  ExpectSameOutputs(**loaded, **built, config.vocab_size);
}

TEST(LoadHf, MissingConfigIsNotFound) {
  const std::string dir = NewDir("empty");
  absl::StatusOr<std::unique_ptr<Model>> m = Model::Load(dir);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(m.status().message()).find("config.json"), std::string::npos);
}

}  // namespace
}  // namespace tierkv
