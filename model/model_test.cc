// The model forward: against a straightforward double-precision reference, and the
// determinism the whole cache relies on: KV and logits bitwise identical however a
// sequence's computation is split (block boundaries, arbitrary points, decode steps,
// chunk sizes, thread counts, KV read back from block objects).
#include "model/model.h"

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "gtest/gtest.h"
#include "kernels/dtype.h"

namespace tierkv {
namespace {

// ---------------------------------------------------------------------------------------
// A naive reference forward in double precision, written from the Hugging Face modeling
// code (LlamaForCausalLM / Qwen2 / Mistral) without any of the runtime's machinery.

using Mat = std::vector<double>;

Mat Linear(const Mat& x, int64_t rows, const HostTensor& w, const HostTensor* bias) {
  const int64_t out = w.shape[0], in = w.shape[1];
  Mat y(rows * out);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double s = bias != nullptr && !bias->empty() ? bias->data[o] : 0.0;
      for (int64_t i = 0; i < in; ++i) s += x[r * in + i] * w.data[o * in + i];
      y[r * out + o] = s;
    }
  }
  return y;
}

Mat Norm(const Mat& x, int64_t rows, const HostTensor& w, double eps) {
  const int64_t n = w.shape[0];
  Mat y(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += x[r * n + i] * x[r * n + i];
    const double inv = 1.0 / std::sqrt(ss / n + eps);
    for (int64_t i = 0; i < n; ++i) y[r * n + i] = x[r * n + i] * inv * w.data[i];
  }
  return y;
}

void Rope(Mat& x, int64_t rows, int64_t heads, int64_t d, const std::vector<float>& inv_freq) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      double* v = x.data() + (r * heads + h) * d;
      for (int64_t i = 0; i < d / 2; ++i) {
        const double angle = static_cast<double>(r) * inv_freq[i];
        const double c = std::cos(angle), s = std::sin(angle);
        const double a = v[i], b = v[i + d / 2];
        v[i] = a * c - b * s;
        v[i + d / 2] = b * c + a * s;
      }
    }
  }
}

std::vector<double> ReferenceLogits(const ModelConfig& c, const ModelWeights& w,
                                    const std::vector<uint32_t>& tokens) {
  const int64_t n = tokens.size(), hid = c.hidden_size, d = c.head_dim;
  const int64_t hq = c.num_heads, hkv = c.num_kv_heads;
  const std::vector<float> inv_freq = c.RopeInvFreq();
  Mat h(n * hid);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t i = 0; i < hid; ++i) h[t * hid + i] = w.embed_tokens.data[tokens[t] * hid + i];
  }
  for (const LayerWeights& l : w.layers) {
    Mat x = Norm(h, n, l.input_layernorm, c.rms_norm_eps);
    Mat q = Linear(x, n, l.q_proj, &l.q_bias);
    Mat k = Linear(x, n, l.k_proj, &l.k_bias);
    Mat v = Linear(x, n, l.v_proj, &l.v_bias);
    Rope(q, n, hq, d, inv_freq);
    Rope(k, n, hkv, d, inv_freq);
    Mat attn(n * hq * d, 0.0);
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t head = 0; head < hq; ++head) {
        const int64_t kvh = head / (hq / hkv);
        const int64_t first = c.sliding_window > 0 ? std::max<int64_t>(0, t - c.sliding_window + 1) : 0;
        std::vector<double> p;
        double mx = -1e300;
        for (int64_t j = first; j <= t; ++j) {
          double s = 0;
          for (int64_t i = 0; i < d; ++i) s += q[(t * hq + head) * d + i] * k[(j * hkv + kvh) * d + i];
          p.push_back(s / std::sqrt(static_cast<double>(d)));
          mx = std::max(mx, p.back());
        }
        double total = 0;
        for (double& e : p) total += (e = std::exp(e - mx));
        for (int64_t j = first; j <= t; ++j) {
          for (int64_t i = 0; i < d; ++i) {
            attn[(t * hq + head) * d + i] += p[j - first] / total * v[(j * hkv + kvh) * d + i];
          }
        }
      }
    }
    Mat o = Linear(attn, n, l.o_proj, &l.o_bias);
    for (size_t i = 0; i < h.size(); ++i) h[i] += o[i];
    x = Norm(h, n, l.post_attention_layernorm, c.rms_norm_eps);
    Mat g = Linear(x, n, l.gate_proj, nullptr);
    Mat u = Linear(x, n, l.up_proj, nullptr);
    for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
    Mat down = Linear(g, n, l.down_proj, nullptr);
    for (size_t i = 0; i < h.size(); ++i) h[i] += down[i];
  }
  Mat last(h.end() - hid, h.end());
  last = Norm(last, 1, w.norm, c.rms_norm_eps);
  return Linear(last, 1, c.tie_word_embeddings ? w.embed_tokens : w.lm_head, nullptr);
}

ModelConfig SmallConfig(const std::string& type) {
  ModelConfig c;
  c.model_type = type;
  c.vocab_size = 97;
  c.hidden_size = 64;
  c.intermediate_size = 80;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  c.max_position_embeddings = 512;
  if (type == "qwen2") {
    c.qkv_bias = true;
    c.tie_word_embeddings = true;
  }
  if (type == "mistral") c.sliding_window = 9;
  return c;
}

std::vector<uint32_t> Tokens(int64_t n, uint32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> t(n);
  for (uint32_t& x : t) x = rng() % vocab;
  return t;
}

TEST(Model, MatchesDoublePrecisionReference) {
  for (const std::string type : {"llama", "qwen2", "mistral", "llama-linear-mha"}) {
    ModelConfig c = SmallConfig(type == "llama-linear-mha" ? "llama" : type);
    if (type == "llama-linear-mha") {
      c.num_kv_heads = 4;
      c.rope_scaling.type = RopeScaling::Type::kLinear;
      c.rope_scaling.factor = 2.0;
      c.qkv_bias = c.o_bias = true;
    }
    ModelWeights w = SeededWeights(c, 99, nullptr);
    const std::vector<uint32_t> tokens = Tokens(40, c.vocab_size, 3);
    const std::vector<double> want = ReferenceLogits(c, w, tokens);
    absl::StatusOr<std::unique_ptr<Model>> m = Model::Create(c, w, "small", "seed:99");
    ASSERT_TRUE(m.ok()) << m.status();
    KvCache kv = (*m)->NewKvCache();
    absl::StatusOr<std::vector<float>> got = (*m)->Prefill(tokens, &kv);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), want.size());
    double max_abs = 0;
    for (double x : want) max_abs = std::max(max_abs, std::abs(x));
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_NEAR((*got)[i], want[i], 1e-4 * max_abs + 1e-5) << type << " logit " << i;
    }
    EXPECT_GT(max_abs, 0.1) << type;  // Not a degenerate comparison.
  }
}

// ---------------------------------------------------------------------------------------
// Determinism on the built-in model.

bool SameBits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

// Rows [0, tokens) of every layer bitwise equal.
bool SameKv(const KvCache& a, const KvCache& b, int64_t tokens) {
  if (a.tokens() < tokens || b.tokens() < tokens) return false;
  for (int l = 0; l < a.num_layers(); ++l) {
    const size_t n = tokens * a.row_floats();
    if (!SameBits({a.k(l), n}, {b.k(l), n}) || !SameBits({a.v(l), n}, {b.v(l), n})) return false;
  }
  return true;
}

class BuiltinTiny : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<Model>> m = Model::BuiltinTiny({.num_threads = 2});
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = m->release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }

  static std::vector<float> Cold(std::span<const uint32_t> tokens, KvCache* kv_out = nullptr) {
    KvCache kv = model_->NewKvCache();
    absl::StatusOr<std::vector<float>> logits = model_->Prefill(tokens, &kv);
    EXPECT_TRUE(logits.ok()) << logits.status();
    if (kv_out != nullptr) *kv_out = std::move(kv);
    return *logits;
  }

  static Model* model_;
};
Model* BuiltinTiny::model_ = nullptr;

TEST_F(BuiltinTiny, SpecIsCoreBuiltinSpec) {
  EXPECT_EQ(model_->spec(), BuiltinTinyModelSpec());
  EXPECT_EQ(model_->config(), BuiltinTinyConfig());
}

TEST_F(BuiltinTiny, PrefillSplitAnywhereIsBitwiseIdentical) {
  const std::vector<uint32_t> tokens = Tokens(150, 32768, 1);
  KvCache cold_kv(1, 1, 16);
  const std::vector<float> cold = Cold(tokens, &cold_kv);
  ASSERT_EQ(cold_kv.tokens(), 150);
  // Block boundaries (16), attention key-block boundaries (64), and arbitrary points.
  for (int64_t split : {16, 48, 64, 80, 128, 144, 1, 37, 65, 149}) {
    KvCache kv = model_->NewKvCache();
    std::span<const uint32_t> all(tokens);
    ASSERT_TRUE(model_->Prefill(all.first(split), &kv).ok());
    absl::StatusOr<std::vector<float>> logits = model_->Prefill(all.subspan(split), &kv);
    ASSERT_TRUE(logits.ok()) << logits.status();
    EXPECT_TRUE(SameBits(*logits, cold)) << "split at " << split;
    EXPECT_TRUE(SameKv(kv, cold_kv, 150)) << "split at " << split;
  }
  // Three pieces.
  KvCache kv = model_->NewKvCache();
  std::span<const uint32_t> all(tokens);
  ASSERT_TRUE(model_->Prefill(all.first(32), &kv).ok());
  ASSERT_TRUE(model_->Prefill(all.subspan(32, 64), &kv).ok());
  EXPECT_TRUE(SameBits(*model_->Prefill(all.subspan(96), &kv), cold));
}

TEST_F(BuiltinTiny, DecodeStepsEqualPrefill) {
  const std::vector<uint32_t> tokens = Tokens(140, 32768, 2);
  KvCache cold_kv(1, 1, 16);
  Cold(tokens, &cold_kv);
  KvCache kv = model_->NewKvCache();
  std::span<const uint32_t> all(tokens);
  ASSERT_TRUE(model_->Prefill(all.first(100), &kv).ok());
  for (int64_t t = 100; t < 140; ++t) {
    absl::StatusOr<std::vector<float>> logits = model_->Decode(tokens[t], &kv);
    ASSERT_TRUE(logits.ok()) << logits.status();
    // The decode step's KV for token t is what a prefill computes for token t...
    ASSERT_TRUE(SameKv(kv, cold_kv, t + 1)) << "token " << t;
    // ...and its logits are those of a cold prefill of t + 1 tokens.
    if (t == 100 || t == 127 || t == 128 || t == 139) {
      EXPECT_TRUE(SameBits(*logits, Cold(all.first(t + 1)))) << "token " << t;
    }
  }
}

TEST_F(BuiltinTiny, ThreadCountsAndChunkSizesDoNotChangeResults) {
  const std::vector<uint32_t> tokens = Tokens(130, 32768, 4);
  KvCache cold_kv(1, 1, 16);
  const std::vector<float> cold = Cold(tokens, &cold_kv);
  const ModelWeights weights = SeededWeights(BuiltinTinyConfig(), kBuiltinTinySeed, nullptr);
  for (ModelOptions options : {ModelOptions{.num_threads = 1}, ModelOptions{.num_threads = 3},
                               ModelOptions{.num_threads = 4, .prefill_chunk_tokens = 7},
                               ModelOptions{.num_threads = 2, .prefill_chunk_tokens = 64}}) {
    absl::StatusOr<std::unique_ptr<Model>> m =
        Model::Create(BuiltinTinyConfig(), weights, "builtin:tiny", "seed:1234", options);
    ASSERT_TRUE(m.ok()) << m.status();
    KvCache kv = (*m)->NewKvCache();
    absl::StatusOr<std::vector<float>> logits = (*m)->Prefill(tokens, &kv);
    ASSERT_TRUE(logits.ok());
    EXPECT_TRUE(SameBits(*logits, cold)) << options.num_threads << " threads, chunk "
                                         << options.prefill_chunk_tokens;
    EXPECT_TRUE(SameKv(kv, cold_kv, 130));
  }
}

TEST_F(BuiltinTiny, WarmFromBlockObjectsGeneratesTheColdTokens) {
  const std::vector<uint32_t> prompt = Tokens(150, 32768, 5);
  GenerateOptions greedy{.max_new_tokens = 12};
  KvCache cold_kv = model_->NewKvCache();
  absl::StatusOr<std::vector<uint32_t>> cold = Generate(*model_, prompt, &cold_kv, greedy);
  ASSERT_TRUE(cold.ok()) << cold.status();
  ASSERT_EQ(cold->size(), 12u);

  // Blocks of the prompt as a prefill worker would store them...
  KvCache prompt_kv(1, 1, 16);
  Cold(prompt, &prompt_kv);
  const ModelSpec& spec = model_->spec();
  const int64_t full_blocks = 150 / spec.block_tokens;
  std::vector<std::string> blocks;
  for (int64_t b = 0; b < full_blocks; ++b) blocks.push_back(*ExtractBlock(prompt_kv, b, spec));

  // ...fetched by a decode worker that has some or all of them.
  for (int64_t have : {full_blocks, int64_t{4}, int64_t{1}}) {
    KvCache warm = model_->NewKvCache();
    for (int64_t b = 0; b < have; ++b) ASSERT_TRUE(AppendBlock(&warm, blocks[b], spec).ok());
    std::span<const uint32_t> rest = std::span<const uint32_t>(prompt).subspan(have * 16);
    absl::StatusOr<std::vector<uint32_t>> tokens = Generate(*model_, rest, &warm, greedy);
    ASSERT_TRUE(tokens.ok()) << tokens.status();
    EXPECT_EQ(*tokens, *cold) << "with " << have << " cached blocks";
    EXPECT_TRUE(SameKv(warm, cold_kv, cold_kv.tokens()));
  }

  // Sampled generation with a seed is just as reproducible.
  GenerateOptions sampled{.max_new_tokens = 12, .sampling = {.temperature = 0.8f, .top_p = 0.9f,
                                                             .seed = 42}};
  KvCache a = model_->NewKvCache();
  KvCache b = model_->NewKvCache();
  for (int64_t i = 0; i < 4; ++i) ASSERT_TRUE(AppendBlock(&b, blocks[i], spec).ok());
  EXPECT_EQ(*Generate(*model_, prompt, &a, sampled),
            *Generate(*model_, std::span<const uint32_t>(prompt).subspan(64), &b, sampled));
}

TEST_F(BuiltinTiny, Bf16KvIsRoundedAsComputedSoBlocksReadBackExactly) {
  absl::StatusOr<std::unique_ptr<Model>> m =
      Model::Create(BuiltinTinyConfig(), SeededWeights(BuiltinTinyConfig(), 1234, nullptr),
                    "builtin:tiny", "seed:1234", {.num_threads = 2, .kv_dtype = "bf16"});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->spec().kv_dtype, "bf16");
  const std::vector<uint32_t> prompt = Tokens(70, 32768, 6);
  KvCache cold = (*m)->NewKvCache();
  const std::vector<float> cold_logits = *(*m)->Prefill(prompt, &cold);
  for (int l = 0; l < cold.num_layers(); ++l) {
    for (int64_t i = 0; i < cold.tokens() * cold.row_floats(); ++i) {
      ASSERT_EQ(cold.k(l)[i], kernels::RoundToDType(cold.k(l)[i], kernels::DType::kBF16));
    }
  }
  KvCache warm = (*m)->NewKvCache();
  for (int b = 0; b < 4; ++b) {
    ASSERT_TRUE(AppendBlock(&warm, *ExtractBlock(cold, b, (*m)->spec()), (*m)->spec()).ok());
  }
  EXPECT_TRUE(SameBits(*(*m)->Prefill(std::span<const uint32_t>(prompt).subspan(64), &warm),
                       cold_logits));
}

TEST_F(BuiltinTiny, BadRequestsAreInvalidArgumentAndLeaveKvUnchanged) {
  KvCache kv = model_->NewKvCache();
  ASSERT_TRUE(model_->Prefill(Tokens(5, 32768, 7), &kv).ok());
  EXPECT_EQ(model_->Prefill({}, &kv).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<uint32_t> bad = {1, 2, 32768};
  absl::Status s = model_->Prefill(bad, &kv).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("32768"), std::string::npos) << s;
  KvCache wrong(2, 4, 64);
  EXPECT_EQ(model_->Prefill(bad, &wrong).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(kv.tokens(), 5);

  ModelConfig c = SmallConfig("llama");
  c.max_position_embeddings = 20;
  std::unique_ptr<Model> small = *Model::Create(c, SeededWeights(c, 1, nullptr), "small", "x");
  KvCache skv = small->NewKvCache();
  ASSERT_TRUE(small->Prefill(Tokens(15, 97, 1), &skv).ok());
  s = small->Prefill(Tokens(6, 97, 1), &skv).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("20"), std::string::npos) << s;
  EXPECT_EQ(skv.tokens(), 15);
  EXPECT_TRUE(small->Prefill(Tokens(5, 97, 1), &skv).ok());
}

TEST(ModelLoad, BuiltinNamesAndOptions) {
  EXPECT_EQ(Model::Load("builtin:huge").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Model::Load("builtin:tiny", {.kv_dtype = "int4"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Model::Load("builtin:tiny", {.device = kernels::Device::kCuda}).status().code(),
            absl::StatusCode::kUnimplemented);
  absl::StatusOr<std::unique_ptr<Model>> m =
      Model::Load("builtin:tiny", {.num_threads = 1, .model_id = "tiny-renamed"});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->spec().model_id, "tiny-renamed");
  EXPECT_EQ((*m)->spec().weights_digest, "seed:1234");
}

}  // namespace
}  // namespace tierkv
