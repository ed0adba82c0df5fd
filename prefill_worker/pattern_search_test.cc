// The pattern search: on heads built to have one structure each, the matching pattern wins
// at equal cost; every candidate stays within the cost; min_recovery sends weak heads to
// dense; bad options are refused; and the whole-model search writes a pattern file the
// worker reads back.
#include "prefill_worker/pattern_search.h"

#include <cmath>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prefill_worker/sparse_patterns.h"

namespace tierkv {
namespace {

using ::testing::HasSubstr;

struct Head {
  int64_t n = 0;
  int d = 64;
  std::vector<float> q, k, v, out;
  kernels::AttentionParams Params() {
    kernels::AttentionParams p;
    p.q = q.data();
    p.ldq = d;
    p.k = k.data();
    p.v = v.data();
    p.ldkv = d;
    p.out = out.data();
    p.ldo = d;
    p.num_queries = n;
    p.num_keys = n;
    p.num_q_heads = 1;
    p.num_kv_heads = 1;
    p.head_dim = d;
    p.scale = 1.0f / std::sqrt(static_cast<float>(d));
    return p;
  }
};

// A single head of n tokens with small random queries and keys.
Head Noise(int64_t n, uint64_t seed) {
  Head h;
  h.n = n;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g(0.0f, 0.3f);
  h.q.resize(n * h.d);
  h.k.resize(n * h.d);
  h.v.resize(n * h.d);
  h.out.resize(n * h.d);
  for (auto* v : {&h.q, &h.k, &h.v}) {
    for (float& x : *v) x = g(rng);
  }
  return h;
}

// Sinks and a local band (rotary dimensions 2..33): what A-shape catches.
void AddSinksAndBand(Head& h) {
  for (int64_t i = 0; i < h.n; ++i) {
    h.q[i * h.d] = 8.0f;
    h.k[i * h.d] = i < 4 ? 10.0f : 0.0f;
    for (int m = 0; m < 16; ++m) {
      const double theta = std::pow(0.05, m / 15.0);
      for (float* row : {&h.q[i * h.d], &h.k[i * h.d]}) {
        row[2 + 2 * m] = static_cast<float>(2.236 * std::cos(theta * i));
        row[3 + 2 * m] = static_cast<float>(2.236 * std::sin(theta * i));
      }
    }
  }
}

TEST(PatternSearch, FarColumnsChooseVerticalSlash) {
  Head h = Noise(2048, 1);
  AddSinksAndBand(h);
  for (int64_t c : {517, 1200, 1777}) h.k[c * h.d] = 10.0f;  // Columns A-shape cannot reach.
  auto choice = SearchHeadPattern(h.Params(), 0, {.cost = 0.2, .sample_rows = 128});
  ASSERT_TRUE(choice.ok()) << choice.status();
  EXPECT_EQ(choice->pattern.pattern, kernels::SparsePattern::kVerticalSlash);
  ASSERT_EQ(choice->candidates.size(), 3u);
  for (const PatternCandidate& c : choice->candidates) {
    EXPECT_LE(c.coverage, 0.2) << kernels::SparsePatternName(c.pattern.pattern);
    EXPECT_GT(c.coverage, 0.0);
  }
  EXPECT_GT(choice->recovered, choice->candidates[0].recovered);  // Beats A-shape.
  EXPECT_GT(choice->recovered, 0.9);
}

TEST(PatternSearch, BlockStructureChoosesBlockSparse) {
  // Each of the four row blocks before the last attends to its own far key block, along its
  // own direction: mean pooling finds them; the last 64 queries' lines (vertical-slash's
  // estimate) see none of them. The sample is those four row blocks.
  Head h = Noise(2048, 2);
  const int64_t rows[] = {27, 28, 29, 30}, targets[] = {3, 9, 15, 21};
  for (int i = 0; i < 4; ++i) {
    for (int64_t r = rows[i] * 64; r < rows[i] * 64 + 64; ++r) h.q[r * h.d + 10 + i] = 12.0f;
    for (int64_t j = targets[i] * 64; j < targets[i] * 64 + 64; ++j) h.k[j * h.d + 10 + i] = 12.0f;
  }
  auto choice = SearchHeadPattern(h.Params(), 0, {.cost = 0.15, .sample_rows = 256});
  ASSERT_TRUE(choice.ok()) << choice.status();
  EXPECT_EQ(choice->pattern.pattern, kernels::SparsePattern::kBlockSparse);
  EXPECT_GT(choice->recovered, 0.9);
}

TEST(PatternSearch, WeakHeadsRunDenseAndBadOptionsAreRefused) {
  Head h = Noise(512, 3);  // Unstructured: no pattern recovers nearly everything at 10%.
  auto choice = SearchHeadPattern(h.Params(), 0, {.cost = 0.1, .min_recovery = 0.99});
  ASSERT_TRUE(choice.ok());
  EXPECT_EQ(choice->pattern.pattern, kernels::SparsePattern::kDense);
  EXPECT_EQ(SearchHeadPattern(h.Params(), 0, {.cost = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(SearchHeadPattern(h.Params(), 0, {.min_recovery = 2}).status().message(),
              HasSubstr("min_recovery"));
  EXPECT_EQ(SearchHeadPattern(h.Params(), 1, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PatternSearch, WholeModelSearchWritesAFileTheWorkerReads) {
  auto model = Model::BuiltinTiny({.num_threads = 2});
  ASSERT_TRUE(model.ok());
  std::mt19937 rng(4);
  std::vector<uint32_t> prompt(600);
  for (auto& t : prompt) t = rng() % (*model)->vocab_size();
  ModelSearchOptions options;
  options.head.cost = 0.3;
  options.head.sample_rows = 64;
  options.min_tokens = 4096;
  std::vector<std::vector<HeadChoice>> choices;
  int layers_done = 0;
  auto plan = SearchModelPatterns(**model, prompt, options, &choices,
                                  [&](int) { ++layers_done; });
  ASSERT_TRUE(plan.ok()) << plan.status();
  const int layers = static_cast<int>((*model)->config().num_layers);
  const int heads = static_cast<int>((*model)->config().num_heads);
  EXPECT_EQ(layers_done, layers);
  ASSERT_EQ(choices.size(), static_cast<size_t>(layers));
  for (const auto& layer : choices) {
    ASSERT_EQ(layer.size(), static_cast<size_t>(heads));
    for (const HeadChoice& c : layer) {
      EXPECT_EQ(c.candidates.size(), 3u);
      EXPECT_GE(c.recovered, 0.0);
      EXPECT_LE(c.recovered, 1.0 + 1e-9);
    }
  }
  const std::string json = SparsePatternsToJson(*plan, layers, heads);
  auto back = ParseSparsePatterns(json, layers, heads);
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << json;
  EXPECT_EQ(back->min_tokens, 4096);
  for (int l = 0; l < layers; ++l) {
    for (int h = 0; h < heads; ++h) {
      EXPECT_EQ(back->For(l, h).pattern, plan->For(l, h).pattern) << l << "/" << h;
    }
  }
}

}  // namespace
}  // namespace tierkv
