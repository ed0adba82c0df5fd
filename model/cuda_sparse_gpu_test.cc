// The GPU model with a sparse attention plan (CudaModelOptions::sparse_plan): dense below
// min_tokens (bit for bit), close to dense when every index covers everything or every head
// falls back, different under a restrictive plan (the sparse path runs), and plans the GPU
// cannot run refused at load naming the head. Needs an sm_90 GPU; skips without one.
#include <cmath>
#include <memory>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cuda/gpu_test_support.h"
#include "model/runtime.h"

namespace tierkv {
namespace {

using ::testing::HasSubstr;

std::vector<uint32_t> Prompt(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> t(n);
  for (auto& x : t) x = rng() % 32000;
  return t;
}

absl::StatusOr<std::unique_ptr<Runtime>> Gpu(std::shared_ptr<const SparsePlan> plan) {
  RuntimeOptions o;
  o.device = "cuda";
  o.sparse_plan = std::move(plan);
  return Runtime::Load("builtin:tiny", o);
}

std::vector<float> Logits(const Runtime& rt, const std::vector<uint32_t>& prompt) {
  auto seq = rt.NewSequence(static_cast<int64_t>(prompt.size()));
  EXPECT_TRUE(seq.ok()) << seq.status();
  auto l = rt.Prefill(prompt, seq->get());
  EXPECT_TRUE(l.ok()) << l.status();
  return l.ok() ? *l : std::vector<float>();
}

double RelativeDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (a[i] - b[i]) * static_cast<double>(a[i] - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

std::shared_ptr<SparsePlan> VsPlan(int64_t vertical, int64_t slash, int64_t min_tokens,
                                   double max_coverage = 1.0) {
  auto plan = std::make_shared<SparsePlan>();
  plan->min_tokens = min_tokens;
  plan->max_coverage = max_coverage;
  plan->default_pattern.pattern = kernels::SparsePattern::kVerticalSlash;
  plan->default_pattern.vertical_slash.vertical = vertical;
  plan->default_pattern.vertical_slash.slash = slash;
  plan->default_pattern.vertical_slash.keep_first = std::min<int64_t>(30, vertical);
  plan->default_pattern.vertical_slash.keep_near = std::min<int64_t>(100, slash);
  return plan;
}

TEST(CudaSparseModel, PlansRunAndMatchDenseWhereTheyShould) {
  TIERKV_REQUIRE_GPU();
  auto dense = Gpu(nullptr);
  auto everything = Gpu(VsPlan(1 << 20, 1 << 20, 256));
  auto narrow = Gpu(VsPlan(8, 8, 256));
  auto fallback = Gpu(VsPlan(8, 8, 256, /*max_coverage=*/1e-6));
  ASSERT_TRUE(dense.ok() && everything.ok() && narrow.ok() && fallback.ok());
  const auto prompt = Prompt(1000, 1);
  const auto want = Logits(**dense, prompt);
  const double full = RelativeDiff(Logits(**everything, prompt), want);
  const double narrowed = RelativeDiff(Logits(**narrow, prompt), want);
  const double fell_back = RelativeDiff(Logits(**fallback, prompt), want);
  std::printf("1000-token prompt, logits against dense: full indices %.2e, vertical 8 / slash 8 "
              "%.2e, every head falling back to dense %.2e\n",
              full, narrowed, fell_back);
  EXPECT_LT(full, 2e-2);
  EXPECT_GT(narrowed, 5e-2);
  EXPECT_LT(fell_back, 2e-2);
  // Below min_tokens the dense kernel runs: the same bits.
  const auto short_prompt = Prompt(200, 2);
  EXPECT_EQ(Logits(**narrow, short_prompt), Logits(**dense, short_prompt));
}

TEST(CudaSparseModel, PlansTheGpuCannotRunAreRefusedAtLoad) {
  TIERKV_REQUIRE_GPU();
  auto a_shape = VsPlan(100, 100, 256);
  a_shape->layers.assign(4, std::vector<kernels::HeadPattern>(8, a_shape->default_pattern));
  a_shape->layers[2][5].pattern = kernels::SparsePattern::kAShape;
  auto refused = Gpu(a_shape);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnimplemented) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("layer 2 head 5"));
  auto mixed = VsPlan(100, 100, 256);
  mixed->layers.assign(4, std::vector<kernels::HeadPattern>(8, mixed->default_pattern));
  mixed->layers[1][0].vertical_slash.slash = 50;
  EXPECT_THAT(Gpu(mixed).status().message(), HasSubstr("one set of vertical_slash budgets"));
}

}  // namespace
}  // namespace tierkv
