// The GPU model with a sparse attention plan (CudaModelOptions::sparse_plan): dense below
// min_tokens (bit for bit), close to dense when every index covers everything or every head
// falls back, different under a restrictive plan (the sparse path runs), plans mixing every
// pattern and budget, and an A-shape plan agreeing with the CPU model's. Needs an sm_90 GPU;
// skips without one.
#include <cmath>
#include <memory>
#include <random>

#include "gtest/gtest.h"
#include "kernels/cuda/gpu_test_support.h"
#include "model/runtime.h"

namespace tierkv {
namespace {

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

// A plan mixing every pattern, two vertical-slash budgets and dense heads across the layers
// (one index build per distinct pattern, each build's heads in one launch).
std::shared_ptr<SparsePlan> MixedPlan(bool covering) {
  auto plan = VsPlan(covering ? 1 << 20 : 8, covering ? 1 << 20 : 8, 256);
  const int64_t huge = 1 << 20;
  plan->layers.assign(4, std::vector<kernels::HeadPattern>(8, plan->default_pattern));
  for (int l = 0; l < 4; ++l) {
    for (int h = 0; h < 8; ++h) {
      kernels::HeadPattern& p = plan->layers[l][h];
      switch ((h + l) % 5) {
        case 0:
          p.pattern = kernels::SparsePattern::kAShape;
          p.a_shape = covering ? kernels::AShapeParams{64, huge} : kernels::AShapeParams{64, 128};
          break;
        case 1:
          p.pattern = kernels::SparsePattern::kBlockSparse;
          p.block_sparse.top_blocks = covering ? huge : 2;
          break;
        case 2:
          p.vertical_slash.slash = covering ? huge - 1 : 16;  // A second set of budgets.
          break;
        case 3:
          p.pattern = kernels::SparsePattern::kDense;
          break;
        default:
          break;
      }
    }
  }
  return plan;
}

TEST(CudaSparseModel, EveryPatternRunsAndCoveringPlansMatchDense) {
  TIERKV_REQUIRE_GPU();
  auto dense = Gpu(nullptr);
  auto covering = Gpu(MixedPlan(true));
  auto narrow = Gpu(MixedPlan(false));
  ASSERT_TRUE(dense.ok()) << dense.status();
  ASSERT_TRUE(covering.ok()) << covering.status();
  ASSERT_TRUE(narrow.ok()) << narrow.status();
  const auto prompt = Prompt(1000, 3);
  const auto want = Logits(**dense, prompt);
  const double full = RelativeDiff(Logits(**covering, prompt), want);
  const double narrowed = RelativeDiff(Logits(**narrow, prompt), want);
  std::printf("1000-token prompt, mixed plans (A-shape, block-sparse, two vertical-slash "
              "budgets, dense) against dense: covering %.2e, narrow %.2e\n",
              full, narrowed);
  EXPECT_LT(full, 2e-2);
  EXPECT_GT(narrowed, 5e-2);
}

TEST(CudaSparseModel, PerHeadBudgetsGiveEachHeadItsOwnIndex) {
  TIERKV_REQUIRE_GPU();
  // keep_first 30 of 8 verticals is clamped to 8: odd heads whose plan lists other raw
  // budgets but the same effective ones must give the bits of the uniform plan (one build
  // with per-head budgets); odd heads with really different budgets must not.
  auto one_group = VsPlan(8, 8, 256);
  auto two_groups = VsPlan(8, 8, 256);
  two_groups->layers.assign(4, std::vector<kernels::HeadPattern>(8, two_groups->default_pattern));
  for (auto& layer : two_groups->layers) {
    for (size_t h = 1; h < layer.size(); h += 2) layer[h].vertical_slash.keep_first = 30;
  }
  auto different = VsPlan(8, 8, 256);
  different->layers = two_groups->layers;
  for (auto& layer : different->layers) {
    for (size_t h = 1; h < layer.size(); h += 2) layer[h].vertical_slash.slash = 64;
  }
  // Every head with the odd heads' larger budget: a build that gave all heads the largest
  // budget of the build would match this one instead.
  auto all_large = VsPlan(8, 64, 256);
  all_large->default_pattern.vertical_slash.keep_near = 8;
  auto a = Gpu(one_group), b = Gpu(two_groups), c = Gpu(different), d = Gpu(all_large);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok() && d.ok());
  const auto prompt = Prompt(1000, 6);
  const auto uniform = Logits(**a, prompt);
  const auto mixed = Logits(**c, prompt);
  EXPECT_EQ(Logits(**b, prompt), uniform);
  EXPECT_GT(RelativeDiff(mixed, uniform), 1e-3);
  EXPECT_GT(RelativeDiff(mixed, Logits(**d, prompt)), 1e-3);
}

// Logits after prefilling `first` tokens of `prompt`, then the rest in a second call: the
// second call's queries start at position `first`, past a cached prefix.
std::vector<float> ContinuedLogits(const Runtime& rt, const std::vector<uint32_t>& prompt,
                                   size_t first) {
  auto seq = rt.NewSequence(static_cast<int64_t>(prompt.size()));
  EXPECT_TRUE(seq.ok()) << seq.status();
  if (!seq.ok()) return {};
  const std::span<const uint32_t> all(prompt);
  EXPECT_TRUE(rt.Prefill(all.first(first), seq->get()).ok());
  auto l = rt.Prefill(all.subspan(first), seq->get());
  EXPECT_TRUE(l.ok()) << l.status();
  return l.ok() ? *l : std::vector<float>();
}

TEST(CudaSparseModel, ContinuingFromACachedPrefixRunsThePlan) {
  TIERKV_REQUIRE_GPU();
  // 1000 tokens as 601 + 399: the second call starts off the 64 grid and attends over all
  // 1000 keys (min_tokens 256 counts them), with every pattern of the mixed plans.
  auto dense = Gpu(nullptr);
  auto covering = Gpu(MixedPlan(true));
  auto narrow = Gpu(MixedPlan(false));
  ASSERT_TRUE(dense.ok() && covering.ok() && narrow.ok());
  const auto prompt = Prompt(1000, 5);
  const auto want = ContinuedLogits(**dense, prompt, 601);
  ASSERT_FALSE(want.empty());
  EXPECT_LT(RelativeDiff(want, Logits(**dense, prompt)), 1e-2);  // Continuing is prefilling.
  const double full = RelativeDiff(ContinuedLogits(**covering, prompt, 601), want);
  const double narrowed = RelativeDiff(ContinuedLogits(**narrow, prompt, 601), want);
  std::printf("1000-token prompt prefilled as 601 + 399, mixed plans against dense: covering "
              "%.2e, narrow %.2e\n",
              full, narrowed);
  EXPECT_LT(full, 2e-2);
  EXPECT_GT(narrowed, 5e-2);
}

TEST(CudaSparseModel, AShapePlanAgreesWithTheCpuModel) {
  TIERKV_REQUIRE_GPU();
  // A-shape indices do not depend on the data: the GPU and CPU models use the same ones, so
  // the sparse models differ by what the dense ones differ by (bf16 against fp32).
  auto plan = VsPlan(8, 8, 256);
  plan->default_pattern.pattern = kernels::SparsePattern::kAShape;
  plan->default_pattern.a_shape = {64, 192};
  RuntimeOptions cpu_options;
  cpu_options.device = "cpu";
  auto cpu_dense = Runtime::Load("builtin:tiny", cpu_options);
  cpu_options.sparse_plan = plan;
  auto cpu_sparse = Runtime::Load("builtin:tiny", cpu_options);
  auto gpu_dense = Gpu(nullptr);
  auto gpu_sparse = Gpu(plan);
  ASSERT_TRUE(cpu_dense.ok() && cpu_sparse.ok() && gpu_dense.ok() && gpu_sparse.ok());
  const auto prompt = Prompt(900, 4);
  const auto cd = Logits(**cpu_dense, prompt), cs = Logits(**cpu_sparse, prompt);
  const auto gd = Logits(**gpu_dense, prompt), gs = Logits(**gpu_sparse, prompt);
  const double dense_gap = RelativeDiff(gd, cd), sparse_gap = RelativeDiff(gs, cs);
  const double sparse_effect = RelativeDiff(cs, cd);
  std::printf("900-token prompt, GPU against CPU: dense %.2e, A-shape 64 + 192 %.2e (the "
              "pattern itself moves the CPU logits by %.2e)\n",
              dense_gap, sparse_gap, sparse_effect);
  EXPECT_GT(sparse_effect, 5e-2);  // The plan matters ...
  EXPECT_LT(sparse_gap, 2 * dense_gap + 1e-2);  // ... and both models apply the same one.
}

}  // namespace
}  // namespace tierkv
