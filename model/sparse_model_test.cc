// The CPU model with a sparse attention plan: dense below min_tokens (bit for bit), the
// same logits as dense when every head's index covers everything (also over chunked and
// continued prefills), different logits under a restrictive plan (the sparse path runs),
// and a head whose index covers more than max_coverage falling back to dense.
#include <cmath>
#include <memory>
#include <random>

#include "gtest/gtest.h"
#include "model/model.h"

namespace tierkv {
namespace {

std::vector<uint32_t> Prompt(size_t n, uint32_t seed, int64_t vocab) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> t(n);
  for (auto& x : t) x = rng() % vocab;
  return t;
}

std::unique_ptr<Model> Tiny(std::shared_ptr<const SparsePlan> plan, int64_t chunk = 2048) {
  ModelOptions o;
  o.num_threads = 2;
  o.prefill_chunk_tokens = chunk;
  o.sparse_plan = std::move(plan);
  absl::StatusOr<std::unique_ptr<Model>> m = Model::BuiltinTiny(o);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *std::move(m) : nullptr;
}

// Logits of `prompt` prefilled in pieces of `split` tokens (0: at once).
std::vector<float> Logits(const Model& m, const std::vector<uint32_t>& prompt, size_t split = 0) {
  KvCache kv = m.NewKvCache();
  std::vector<float> logits;
  const size_t step = split == 0 ? prompt.size() : split;
  for (size_t at = 0; at < prompt.size(); at += step) {
    const size_t n = std::min(step, prompt.size() - at);
    auto l = m.Prefill(std::span(prompt).subspan(at, n), &kv);
    EXPECT_TRUE(l.ok()) << l.status();
    if (l.ok()) logits = *std::move(l);
  }
  return logits;
}

double RelativeDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * static_cast<double>(a[i] - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

std::shared_ptr<SparsePlan> Plan(kernels::HeadPattern pattern, int64_t min_tokens,
                                 double max_coverage = 1.0) {
  auto plan = std::make_shared<SparsePlan>();
  plan->min_tokens = min_tokens;
  plan->max_coverage = max_coverage;
  plan->default_pattern = pattern;
  return plan;
}

kernels::HeadPattern Everything() {
  kernels::HeadPattern p;
  p.pattern = kernels::SparsePattern::kVerticalSlash;
  p.vertical_slash.vertical = 1 << 20;  // Every key and every distance.
  p.vertical_slash.slash = 1 << 20;
  return p;
}

kernels::HeadPattern Narrow() {
  kernels::HeadPattern p;
  p.pattern = kernels::SparsePattern::kAShape;
  p.a_shape = {16, 64};
  return p;
}

TEST(SparseModel, CoveringEverythingEqualsDenseAlsoChunkedAndContinued) {
  auto dense = Tiny(nullptr, 128);
  auto sparse = Tiny(Plan(Everything(), 64), 128);
  ASSERT_TRUE(dense && sparse);
  const auto prompt = Prompt(400, 1, dense->vocab_size());
  const auto want = Logits(*dense, prompt);
  EXPECT_LT(RelativeDiff(Logits(*sparse, prompt), want), 1e-4);
  // From a cached prefix: the new tokens' queries over all keys.
  EXPECT_LT(RelativeDiff(Logits(*sparse, prompt, 150), want), 1e-4);
}

TEST(SparseModel, RestrictivePlanChangesLongPrefillsOnly) {
  auto dense = Tiny(nullptr);
  auto sparse = Tiny(Plan(Narrow(), 256));
  ASSERT_TRUE(dense && sparse);
  // Below min_tokens: the dense kernel, bit for bit.
  const auto short_prompt = Prompt(200, 2, dense->vocab_size());
  EXPECT_EQ(Logits(*sparse, short_prompt), Logits(*dense, short_prompt));
  // Above: attention restricted to 16 + 64 keys per query changes the result.
  const auto long_prompt = Prompt(500, 3, dense->vocab_size());
  EXPECT_GT(RelativeDiff(Logits(*sparse, long_prompt), Logits(*dense, long_prompt)), 1e-3);
}

TEST(SparseModel, AllDensePlanIsTheDenseKernel) {
  kernels::HeadPattern dense_pattern;
  dense_pattern.pattern = kernels::SparsePattern::kDense;
  auto dense = Tiny(nullptr);
  auto planned = Tiny(Plan(dense_pattern, 64));
  ASSERT_TRUE(dense && planned);
  const auto prompt = Prompt(500, 5, dense->vocab_size());
  EXPECT_EQ(Logits(*planned, prompt), Logits(*dense, prompt));
}

TEST(SparseModel, IndicesAboveMaxCoverageRunDense) {
  auto dense = Tiny(nullptr);
  auto sparse = Tiny(Plan(Narrow(), 256, /*max_coverage=*/1e-6));
  ASSERT_TRUE(dense && sparse);
  const auto prompt = Prompt(500, 3, dense->vocab_size());
  EXPECT_LT(RelativeDiff(Logits(*sparse, prompt), Logits(*dense, prompt)), 1e-4);
}

}  // namespace
}  // namespace tierkv
