// The safetensors reader and writer, the Hugging Face weight loader's error cases (each
// with its own status code and a message naming what to fix), seeded weights, and the
// weights digest.
#include "model/weights.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "kernels/random.h"
#include "model/safetensors.h"

namespace tierkv {
namespace {

namespace fs = std::filesystem;

std::string NewDir(const std::string& name) {
  const std::string dir = testing::TempDir() + "/tierkv_weights_test_" +
                          std::to_string(::getpid()) + "_" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// A two-layer config small enough to write quickly.
ModelConfig SmallConfig() {
  ModelConfig c;
  c.vocab_size = 50;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 256;
  return c;
}

// Writes config.json and all tensors of SeededWeights(config) into one file.
void WriteModelDir(const std::string& dir, const ModelConfig& c,
                   const std::vector<std::string>& skip = {},
                   kernels::DType dtype = kernels::DType::kF32) {
  std::ofstream(dir + "/config.json") << ToHfConfigJson(c);
  ModelWeights w = SeededWeights(c, 7, nullptr);
  std::vector<SafetensorsEntry> entries;
  for (const WeightSlot& s : WeightSlots(c, &w)) {
    if (std::find(skip.begin(), skip.end(), s.name) != skip.end()) continue;
    entries.push_back({s.name, dtype, s.shape, s.tensor->data});
  }
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", entries).ok());
}

TEST(Safetensors, WritesAndReadsEveryFloatDtype) {
  const std::string dir = NewDir("roundtrip");
  std::vector<float> a = {1.0f, -2.5f, 3.14159f, 1e-3f, 65504.0f, -0.0f};
  std::vector<SafetensorsEntry> entries = {{"a32", kernels::DType::kF32, {2, 3}, a},
                                           {"a16", kernels::DType::kF16, {6}, a},
                                           {"abf", kernels::DType::kBF16, {3, 2}, a}};
  ASSERT_TRUE(WriteSafetensors(dir + "/x.safetensors", entries).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(dir + "/x.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ((*f)->tensors().size(), 3u);
  for (const SafetensorsEntry& e : entries) {
    const SafetensorsTensor* t = (*f)->Find(e.name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->shape, e.shape);
    std::vector<float> back(6);
    ASSERT_TRUE((*f)->ReadFloat(*t, back).ok());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(back[i], kernels::RoundToDType(a[i], e.dtype));
  }
  EXPECT_EQ((*f)->Find("missing"), nullptr);
}

TEST(Safetensors, TruncatedFileIsDataLossNamingFileOffsetAndSize) {
  const std::string dir = NewDir("truncated");
  std::vector<float> a(100, 1.0f);
  std::vector<SafetensorsEntry> entries = {{"t", kernels::DType::kF32, {100}, a}};
  const std::string path = dir + "/m.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, entries).ok());
  const auto full = fs::file_size(path);
  fs::resize_file(path, full - 10);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  ASSERT_EQ(f.status().code(), absl::StatusCode::kDataLoss) << f.status();
  const std::string msg(f.status().message());
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::to_string(full)), std::string::npos) << msg;      // Where t ends.
  EXPECT_NE(msg.find(std::to_string(full - 10)), std::string::npos) << msg;  // File size.

  fs::resize_file(path, 20);  // Now even the header is cut.
  f = SafetensorsFile::Open(path);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss) << f.status();
  fs::resize_file(path, 3);
  EXPECT_EQ(SafetensorsFile::Open(path).status().code(), absl::StatusCode::kDataLoss);
}

void WriteRaw(const std::string& path, const std::string& header, size_t data_bytes) {
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << std::string(data_bytes, '\0');
}

TEST(Safetensors, MalformedHeadersAreInvalidArgument) {
  const std::string dir = NewDir("malformed");
  const std::string path = dir + "/m.safetensors";
  for (const std::string& header : {
           std::string("{\"t\": {\"dtype\": \"F32\", \"shape\": [2], "),  // Cut JSON.
           std::string("[1, 2]"),
           std::string(R"({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})"),
           std::string(R"({"t": {"dtype": "F32", "shape": [2]}})"),
           std::string(R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})"),
           std::string(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})"),
       }) {
    WriteRaw(path, header, 16);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << header;
    EXPECT_NE(std::string(f.status().message()).find(path), std::string::npos);
  }
  EXPECT_EQ(SafetensorsFile::Open(dir + "/nope.safetensors").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(LoadHfWeights, LoadsWhatWasWritten) {
  const std::string dir = NewDir("ok");
  const ModelConfig c = SmallConfig();
  WriteModelDir(dir, c);
  absl::StatusOr<ModelWeights> w = LoadHfWeights(dir, c, nullptr);
  ASSERT_TRUE(w.ok()) << w.status();
  ModelWeights want = SeededWeights(c, 7, nullptr);
  EXPECT_TRUE(ValidateWeights(c, *w).ok());
  EXPECT_EQ(w->layers[1].k_proj.data, want.layers[1].k_proj.data);
  EXPECT_EQ(w->lm_head.data, want.lm_head.data);
}

TEST(LoadHfWeights, MissingTensorIsNotFoundNamingItAndTheFiles) {
  const std::string dir = NewDir("missing");
  const ModelConfig c = SmallConfig();
  WriteModelDir(dir, c, {"model.layers.1.mlp.up_proj.weight"});
  absl::StatusOr<ModelWeights> w = LoadHfWeights(dir, c, nullptr);
  ASSERT_EQ(w.status().code(), absl::StatusCode::kNotFound) << w.status();
  const std::string msg(w.status().message());
  EXPECT_NE(msg.find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
}

TEST(LoadHfWeights, ShapeMismatchIsInvalidArgumentWithBothShapes) {
  const std::string dir = NewDir("shape");
  const ModelConfig c = SmallConfig();
  WriteModelDir(dir, c);
  ModelConfig wider = c;
  wider.intermediate_size = 64;
  absl::StatusOr<ModelWeights> w = LoadHfWeights(dir, wider, nullptr);
  ASSERT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument) << w.status();
  const std::string msg(w.status().message());
  EXPECT_NE(msg.find("mlp.gate_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[48, 32]"), std::string::npos) << msg;  // Actual.
  EXPECT_NE(msg.find("[64, 32]"), std::string::npos) << msg;  // Expected.
}

TEST(LoadHfWeights, TruncatedShardIsDataLoss) {
  const std::string dir = NewDir("trunc");
  const ModelConfig c = SmallConfig();
  WriteModelDir(dir, c);
  const std::string path = dir + "/model.safetensors";
  fs::resize_file(path, fs::file_size(path) - 1);
  absl::StatusOr<ModelWeights> w = LoadHfWeights(dir, c, nullptr);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kDataLoss) << w.status();
  EXPECT_NE(std::string(w.status().message()).find(path), std::string::npos);
}

TEST(LoadHfWeights, BadHeaderIsInvalidArgument) {
  const std::string dir = NewDir("badheader");
  const ModelConfig c = SmallConfig();
  WriteModelDir(dir, c);
  WriteRaw(dir + "/model.safetensors", "{\"oops\": ", 0);
  EXPECT_EQ(LoadHfWeights(dir, c, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(LoadHfWeights, UnsupportedDtypeIsUnimplemented) {
  const std::string dir = NewDir("dtype");
  const ModelConfig c = SmallConfig();
  WriteModelDir(dir, c);
  // Rewrite the file with norm.weight declared as I32 (same byte size as F32).
  const std::string path = dir + "/model.safetensors";
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string from = R"("model.norm.weight":{"data_offsets")";
  size_t at = bytes.find(from);
  ASSERT_NE(at, std::string::npos);
  const size_t dtype_at = bytes.find("\"F32\"", at);
  bytes.replace(dtype_at, 5, "\"I32\"");
  std::ofstream(path, std::ios::binary) << bytes;
  absl::StatusOr<ModelWeights> w = LoadHfWeights(dir, c, nullptr);
  ASSERT_EQ(w.status().code(), absl::StatusCode::kUnimplemented) << w.status();
  EXPECT_NE(std::string(w.status().message()).find("model.norm.weight"), std::string::npos);
  EXPECT_NE(std::string(w.status().message()).find("I32"), std::string::npos);
}

TEST(LoadHfWeights, NoFilesOrMissingShardIsNotFound) {
  const std::string dir = NewDir("nofiles");
  const ModelConfig c = SmallConfig();
  std::ofstream(dir + "/config.json") << ToHfConfigJson(c);
  EXPECT_EQ(LoadHfWeights(dir, c, nullptr).status().code(), absl::StatusCode::kNotFound);
  std::ofstream(dir + "/model.safetensors.index.json")
      << R"({"metadata": {}, "weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}})";
  absl::StatusOr<ModelWeights> w = LoadHfWeights(dir, c, nullptr);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(w.status().message()).find("model-00001-of-00002"), std::string::npos);
  EXPECT_EQ(LoadHfWeights(dir + "/absent", c, nullptr).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ValidateWeights, NamesTensorAndShapes) {
  const ModelConfig c = SmallConfig();
  ModelWeights w = SeededWeights(c, 1, nullptr);
  EXPECT_TRUE(ValidateWeights(c, w).ok());
  w.layers[0].v_proj.shape = {16, 32};
  absl::Status s = ValidateWeights(c, w);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("model.layers.0.self_attn.v_proj.weight"),
            std::string::npos);
  EXPECT_NE(std::string(s.message()).find("[32, 32]"), std::string::npos) << s;
}

TEST(SeededWeights, FollowTheDocumentedFormulaWhateverThePool) {
  const ModelConfig c = SmallConfig();
  kernels::ThreadPool pool(3);
  ModelWeights a = SeededWeights(c, 1234, nullptr);
  ModelWeights b = SeededWeights(c, 1234, &pool);
  EXPECT_EQ(a.embed_tokens.data, b.embed_tokens.data);
  EXPECT_EQ(a.layers[1].down_proj.data, b.layers[1].down_proj.data);
  const uint64_t key =
      kernels::StreamKey(1234, kernels::Fnv1a64("model.layers.1.mlp.down_proj.weight"));
  EXPECT_EQ(a.layers[1].down_proj.data[77],
            kernels::UniformPm1(kernels::RandomBits(key, 77)) * (1.0f / std::sqrt(48.0f)));
  const uint64_t nkey = kernels::StreamKey(1234, kernels::Fnv1a64("model.norm.weight"));
  EXPECT_EQ(a.norm.data[5], 1.0f + kernels::UniformPm1(kernels::RandomBits(nkey, 5)) * 0.125f);
  EXPECT_NE(SeededWeights(c, 1235, nullptr).embed_tokens.data, a.embed_tokens.data);
}

TEST(HfWeightsDigest, FullHashesValuesHeadersOnlyShapes) {
  const std::string dir = NewDir("digest");
  const ModelConfig c = SmallConfig();
  WriteModelDir(dir, c);
  absl::StatusOr<std::string> full = HfWeightsDigest(dir, WeightsDigestMode::kFull);
  absl::StatusOr<std::string> headers = HfWeightsDigest(dir, WeightsDigestMode::kHeaders);
  ASSERT_TRUE(full.ok() && headers.ok()) << full.status() << headers.status();
  EXPECT_EQ(full->rfind("sha256:", 0), 0u);
  EXPECT_EQ(full->size(), 7u + 64u);
  EXPECT_EQ(headers->rfind("sha256-headers:", 0), 0u);
  EXPECT_EQ(*HfWeightsDigest(dir, WeightsDigestMode::kFull), *full);
  // Flip the last byte of the data: the full digest changes, the header digest does not.
  const std::string path = dir + "/model.safetensors";
  {
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekg(-1, std::ios::end);
    char ch;
    f.get(ch);
    f.seekp(-1, std::ios::end);
    f.put(static_cast<char>(ch ^ 1));
  }
  EXPECT_NE(*HfWeightsDigest(dir, WeightsDigestMode::kFull), *full);
  EXPECT_EQ(*HfWeightsDigest(dir, WeightsDigestMode::kHeaders), *headers);
}

}  // namespace
}  // namespace tierkv
