#include "prefill_worker/sparse_patterns.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace tierkv {
namespace {

using kernels::HeadPattern;
using kernels::SparsePattern;

constexpr int kLayers = 32;
constexpr int kHeads = 8;

// The example of docs/sparse-patterns.md.
constexpr char kExample[] = R"({
  "format": "tierkv-sparse-patterns/v1",
  "min_tokens": 16384,
  "max_coverage": 0.8,
  "default": {"pattern": "vertical_slash", "vertical": 1000, "slash": 6096,
              "keep_first": 30, "keep_near": 100, "last_q": 64},
  "layers": {
    "0": {"3": {"pattern": "a_shape", "n_init": 128, "local": 3968}},
    "5": {"0": {"pattern": "block_sparse", "top_blocks": 64}, "1": {"pattern": "dense"}},
    "31": {"7": {"pattern": "vertical_slash", "vertical": 500, "slash": 2000,
                 "keep_first": 4, "keep_near": 64, "last_q": 32}}
  }
})";

// Every field, inactive budgets included: a round trip must give back the same struct.
bool SameHead(const HeadPattern& a, const HeadPattern& b) {
  return a.pattern == b.pattern && a.a_shape.n_init == b.a_shape.n_init &&
         a.a_shape.local == b.a_shape.local &&
         a.vertical_slash.vertical == b.vertical_slash.vertical &&
         a.vertical_slash.slash == b.vertical_slash.slash &&
         a.vertical_slash.keep_first == b.vertical_slash.keep_first &&
         a.vertical_slash.keep_near == b.vertical_slash.keep_near &&
         a.vertical_slash.last_q == b.vertical_slash.last_q &&
         a.block_sparse.top_blocks == b.block_sparse.top_blocks;
}

testing::AssertionResult SamePlan(const SparsePlan& a, const SparsePlan& b) {
  if (a.min_tokens != b.min_tokens) {
    return testing::AssertionFailure() << "min_tokens " << a.min_tokens << " vs " << b.min_tokens;
  }
  // Exact: the text must carry the double bit for bit.
  if (a.max_coverage != b.max_coverage) {
    return testing::AssertionFailure()
           << "max_coverage " << a.max_coverage << " vs " << b.max_coverage;
  }
  if (!SameHead(a.default_pattern, b.default_pattern)) {
    return testing::AssertionFailure() << "default pattern differs";
  }
  if (a.layers.size() != b.layers.size()) {
    return testing::AssertionFailure() << "layers " << a.layers.size() << " vs " << b.layers.size();
  }
  for (size_t l = 0; l < a.layers.size(); ++l) {
    if (a.layers[l].size() != b.layers[l].size()) {
      return testing::AssertionFailure() << "layer " << l << " has " << a.layers[l].size() << " vs "
                                         << b.layers[l].size() << " heads";
    }
    for (size_t h = 0; h < a.layers[l].size(); ++h) {
      if (!SameHead(a.layers[l][h], b.layers[l][h])) {
        return testing::AssertionFailure() << "layer " << l << " head " << h << " differs";
      }
    }
  }
  return testing::AssertionSuccess();
}

// INVALID_ARGUMENT whose message holds `part`.
testing::AssertionResult IsInvalid(const absl::StatusOr<SparsePlan>& plan,
                                   const std::string& part) {
  if (plan.ok()) return testing::AssertionFailure() << "parsed, expected an error with: " << part;
  if (plan.status().code() != absl::StatusCode::kInvalidArgument ||
      plan.status().message().find(part) == std::string_view::npos) {
    return testing::AssertionFailure()
           << plan.status() << "\n  expected INVALID_ARGUMENT with: " << part;
  }
  return testing::AssertionSuccess();
}

// A file holding the v1 format line and `rest` (a comma-led tail of top-level members).
std::string File(const std::string& rest) {
  return absl::StrCat(R"({"format": "tierkv-sparse-patterns/v1")", rest, "}");
}

// A file whose only listed head is layer 0 head 0 with the given object.
std::string Head(const std::string& head) {
  return File(absl::StrCat(R"(, "layers": {"0": {"0": )", head, "}}"));
}

absl::StatusOr<SparsePlan> Parse(const std::string& text) {
  return ParseSparsePatterns(text, kLayers, kHeads);
}

TEST(ParseSparsePatterns, ReadsFullExample) {
  absl::StatusOr<SparsePlan> plan = Parse(kExample);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->min_tokens, 16384);
  EXPECT_EQ(plan->max_coverage, 0.8);
  EXPECT_EQ(plan->default_pattern.pattern, SparsePattern::kVerticalSlash);
  EXPECT_EQ(plan->default_pattern.vertical_slash.slash, 6096);
  ASSERT_EQ(plan->layers.size(), size_t{kLayers});
  for (const auto& layer : plan->layers) ASSERT_EQ(layer.size(), size_t{kHeads});

  const HeadPattern& a = plan->For(0, 3);
  EXPECT_EQ(a.pattern, SparsePattern::kAShape);
  EXPECT_EQ(a.a_shape.n_init, 128);
  EXPECT_EQ(a.a_shape.local, 3968);
  EXPECT_EQ(plan->For(5, 0).pattern, SparsePattern::kBlockSparse);
  EXPECT_EQ(plan->For(5, 0).block_sparse.top_blocks, 64);
  EXPECT_EQ(plan->For(5, 1).pattern, SparsePattern::kDense);
  const HeadPattern& vs = plan->For(31, 7);
  EXPECT_EQ(vs.pattern, SparsePattern::kVerticalSlash);
  EXPECT_EQ(vs.vertical_slash.vertical, 500);
  EXPECT_EQ(vs.vertical_slash.slash, 2000);
  EXPECT_EQ(vs.vertical_slash.keep_first, 4);
  EXPECT_EQ(vs.vertical_slash.keep_near, 64);
  EXPECT_EQ(vs.vertical_slash.last_q, 32);

  // Every head not listed holds the default.
  int listed = 0;
  for (int l = 0; l < kLayers; ++l) {
    for (int h = 0; h < kHeads; ++h) {
      if (!SameHead(plan->layers[l][h], plan->default_pattern)) ++listed;
    }
  }
  EXPECT_EQ(listed, 4);
  EXPECT_TRUE(SameHead(plan->For(5, 2), plan->default_pattern));
}

TEST(ParseSparsePatterns, FormatAloneGivesTheStructDefaults) {
  absl::StatusOr<SparsePlan> plan = Parse(File(""));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(SamePlan(*plan, SparsePlan{}));
  EXPECT_TRUE(plan->layers.empty());
}

TEST(ParseSparsePatterns, BudgetsLeftOutTakeTheStructDefaults) {
  absl::StatusOr<SparsePlan> plan = Parse(File(R"(, "default": {"pattern": "a_shape", "local": 512},
      "layers": {"2": {"1": {"pattern": "vertical_slash", "last_q": 16}}})"));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->min_tokens, SparsePlan{}.min_tokens);
  EXPECT_EQ(plan->max_coverage, SparsePlan{}.max_coverage);
  HeadPattern a;
  a.pattern = SparsePattern::kAShape;
  a.a_shape.local = 512;
  EXPECT_TRUE(SameHead(plan->default_pattern, a));
  HeadPattern vs;
  vs.vertical_slash.last_q = 16;
  EXPECT_TRUE(SameHead(plan->For(2, 1), vs));
  // Unlisted heads take the file's default, not the struct's.
  EXPECT_TRUE(SameHead(plan->For(2, 0), a));
  EXPECT_TRUE(SameHead(plan->For(31, 7), a));
}

TEST(ParseSparsePatterns, NoListedHeadLeavesLayersEmpty) {
  for (const char* layers : {R"(, "layers": {})", R"(, "layers": {"3": {}, "4": {}})"}) {
    absl::StatusOr<SparsePlan> plan = Parse(File(layers));
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_TRUE(plan->layers.empty()) << layers;
  }
}

TEST(ParseSparsePatterns, AcceptsBoundaryValues) {
  absl::StatusOr<SparsePlan> plan = Parse(File(
      R"(, "min_tokens": 1, "max_coverage": 1,
         "default": {"pattern": "vertical_slash", "vertical": 0, "slash": 1, "keep_first": 0,
                     "keep_near": 1, "last_q": 1},
         "layers": {"31": {"7": {"pattern": "a_shape", "n_init": 0, "local": 1},
                           "6": {"pattern": "block_sparse", "top_blocks": 1},
                           "5": {"pattern": "vertical_slash", "last_q": 64,
                                 "vertical": 9223372036854775807}}})"));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->min_tokens, 1);
  EXPECT_EQ(plan->max_coverage, 1.0);
  EXPECT_EQ(plan->default_pattern.vertical_slash.last_q, 1);
  EXPECT_EQ(plan->For(31, 7).a_shape.n_init, 0);
  EXPECT_EQ(plan->For(31, 6).block_sparse.top_blocks, 1);
  EXPECT_EQ(plan->For(31, 5).vertical_slash.last_q, 64);
  EXPECT_EQ(plan->For(31, 5).vertical_slash.vertical, std::numeric_limits<int64_t>::max());
}

TEST(ParseSparsePatterns, RefusesBadModelShape) {
  EXPECT_TRUE(IsInvalid(ParseSparsePatterns(File(""), 0, kHeads), "0 layers"));
  EXPECT_TRUE(IsInvalid(ParseSparsePatterns(File(""), kLayers, -1), "-1 query heads"));
}

struct BadCase {
  std::string json;
  std::string message;
};

void ExpectAllInvalid(const std::vector<BadCase>& cases) {
  for (const BadCase& c : cases) {
    EXPECT_TRUE(IsInvalid(Parse(c.json), c.message)) << "input: " << c.json;
  }
}

TEST(ParseSparsePatterns, RefusesTextThatIsNotAPatternObject) {
  ExpectAllInvalid({
      {"", "not valid JSON"},
      {"{", "not valid JSON"},
      {File(", \"min_tokens\": 1,"), "not valid JSON"},
      {File("") + " {}", "not valid JSON"},
      {File(", /* comment */ \"min_tokens\": 1"), "not valid JSON"},
      {"[]", "(root): must be a JSON object, got array"},
      {"\"tierkv-sparse-patterns/v1\"", "(root): must be a JSON object, got string"},
  });
}

TEST(ParseSparsePatterns, RefusesMissingOrOtherFormat) {
  ExpectAllInvalid({
      {"{}", "format: missing"},
      {R"({"min_tokens": 8192})", "format: missing"},
      {R"({"format": "tierkv-sparse-patterns/v2"})",
       "format: expected \"tierkv-sparse-patterns/v1\""},
      {R"({"format": ""})", "format: expected"},
      {R"({"format": 1})", "format: expected"},
      {R"({"format": null})", "format: expected"},
  });
}

TEST(ParseSparsePatterns, RefusesUnknownTopLevelKeys) {
  ExpectAllInvalid({
      {File(R"(, "patterns": {})"), "patterns: unknown key"},
      {File(R"(, "Min_tokens": 1)"), "Min_tokens: unknown key"},
      {File(R"(, "": 1)"), "\"\": unknown key"},
  });
}

TEST(ParseSparsePatterns, RefusesRepeatedKeys) {
  ExpectAllInvalid({
      {File(R"(, "min_tokens": 1, "min_tokens": 2)"), "min_tokens: duplicate key"},
      {File(R"(, "layers": {"5": {"0": {"pattern": "dense"}}, "5": {"1": {"pattern": "dense"}}})"),
       "layers.5: duplicate key"},
      {File(R"(, "layers": {"5": {"0": {"pattern": "dense"}, "0": {"pattern": "a_shape"}}})"),
       "layers.5.0: duplicate key"},
      {Head(R"({"pattern": "a_shape", "local": 1, "local": 2})"),
       "layers.0.0.local: duplicate key"},
  });
}

TEST(ParseSparsePatterns, RefusesBadMinTokens) {
  ExpectAllInvalid({
      {File(R"(, "min_tokens": 0)"), "min_tokens: must be at least 1, got 0"},
      {File(R"(, "min_tokens": -8192)"), "min_tokens: must be at least 1, got -8192"},
      {File(R"(, "min_tokens": 1.5)"), "min_tokens: must be an integer, got 1.5"},
      {File(R"(, "min_tokens": 8192.0)"), "min_tokens: must be an integer, got 8192.0"},
      {File(R"(, "min_tokens": 8e3)"), "min_tokens: must be an integer"},
      {File(R"(, "min_tokens": "8192")"), "min_tokens: must be an integer, got \"8192\""},
      {File(R"(, "min_tokens": null)"), "min_tokens: must be an integer, got null"},
      {File(R"(, "min_tokens": true)"), "min_tokens: must be an integer, got true"},
      {File(R"(, "min_tokens": [8192])"), "min_tokens: must be an integer"},
      {File(R"(, "min_tokens": 18446744073709551615)"),
       "min_tokens: must be at most 9223372036854775807"},
      {File(R"(, "min_tokens": 1e400)"), "not valid JSON"},
  });
}

TEST(ParseSparsePatterns, RefusesBadMaxCoverage) {
  ExpectAllInvalid({
      {File(R"(, "max_coverage": 0)"), "max_coverage: must be above 0 and at most 1, got 0"},
      {File(R"(, "max_coverage": 0.0)"), "max_coverage: must be above 0 and at most 1"},
      {File(R"(, "max_coverage": -0.5)"), "max_coverage: must be above 0 and at most 1"},
      {File(R"(, "max_coverage": 1.0000001)"), "max_coverage: must be above 0 and at most 1"},
      {File(R"(, "max_coverage": 2)"), "max_coverage: must be above 0 and at most 1"},
      {File(R"(, "max_coverage": "0.85")"), "max_coverage: must be a number, got \"0.85\""},
      {File(R"(, "max_coverage": null)"), "max_coverage: must be a number"},
  });
}

TEST(ParseSparsePatterns, RefusesBadHeadObjects) {
  ExpectAllInvalid({
      {File(R"(, "default": "dense")"), "default: must be an object with a \"pattern\""},
      {File(R"(, "default": {})"), "default.pattern: missing"},
      {File(R"(, "default": {"local": 4})"), "default.pattern: missing"},
      {File(R"(, "default": {"pattern": "sparse"})"),
       "default.pattern: unknown pattern \"sparse\""},
      {File(R"(, "default": {"pattern": "Dense"})"), "default.pattern: unknown pattern"},
      {File(R"(, "default": {"pattern": 1})"), "default.pattern: must be a string, got 1"},
      {Head(R"([])"), "layers.0.0: must be an object with a \"pattern\", got []"},
      {Head(R"({"top_blocks": 4})"), "layers.0.0.pattern: missing"},
      {Head(R"({"pattern": null})"), "layers.0.0.pattern: must be a string"},
  });
}

TEST(ParseSparsePatterns, RefusesFieldsOfAnotherPattern) {
  ExpectAllInvalid({
      {Head(R"({"pattern": "a_shape", "top_blocks": 64})"),
       "layers.0.0.top_blocks: a budget of block_sparse, not of a_shape"},
      {Head(R"({"pattern": "block_sparse", "local": 64})"),
       "layers.0.0.local: a budget of a_shape, not of block_sparse"},
      {Head(R"({"pattern": "dense", "vertical": 10})"),
       "layers.0.0.vertical: a budget of vertical_slash, not of dense"},
      {File(R"(, "default": {"pattern": "vertical_slash", "n_init": 4})"),
       "default.n_init: a budget of a_shape, not of vertical_slash"},
      {Head(R"({"pattern": "a_shape", "window": 64})"),
       "layers.0.0.window: unknown field; a_shape takes \"pattern\", n_init, local"},
      {Head(R"({"pattern": "dense", "foo": 1})"),
       "layers.0.0.foo: unknown field; dense takes only \"pattern\""},
  });
}

TEST(ParseSparsePatterns, RefusesBudgetsOutOfRange) {
  ExpectAllInvalid({
      {Head(R"({"pattern": "vertical_slash", "vertical": -1})"),
       "layers.0.0.vertical: must be at least 0, got -1"},
      {Head(R"({"pattern": "vertical_slash", "slash": 0})"),
       "layers.0.0.slash: must be at least 1, got 0"},
      {Head(R"({"pattern": "vertical_slash", "keep_first": -1})"),
       "layers.0.0.keep_first: must be at least 0, got -1"},
      {Head(R"({"pattern": "vertical_slash", "keep_near": 0})"),
       "layers.0.0.keep_near: must be at least 1, got 0"},
      {Head(R"({"pattern": "vertical_slash", "last_q": 0})"),
       "layers.0.0.last_q: must be between 1 and 64, got 0"},
      {Head(R"({"pattern": "vertical_slash", "last_q": 65})"),
       "layers.0.0.last_q: must be between 1 and 64, got 65"},
      {Head(R"({"pattern": "a_shape", "n_init": -1})"),
       "layers.0.0.n_init: must be at least 0, got -1"},
      {Head(R"({"pattern": "a_shape", "local": 0})"),
       "layers.0.0.local: must be at least 1, got 0"},
      {File(R"(, "layers": {"5": {"0": {"pattern": "block_sparse", "top_blocks": 0}}})"),
       "layers.5.0.top_blocks: must be at least 1"},
      {File(R"(, "default": {"pattern": "block_sparse", "top_blocks": -3})"),
       "default.top_blocks: must be at least 1, got -3"},
  });
}

TEST(ParseSparsePatterns, RefusesBudgetsThatAreNotIntegers) {
  ExpectAllInvalid({
      {Head(R"({"pattern": "block_sparse", "top_blocks": 1.5})"),
       "layers.0.0.top_blocks: must be an integer, got 1.5"},
      {Head(R"({"pattern": "block_sparse", "top_blocks": 64.0})"),
       "layers.0.0.top_blocks: must be an integer, got 64.0"},
      {Head(R"({"pattern": "a_shape", "local": "3968"})"),
       "layers.0.0.local: must be an integer, got \"3968\""},
      {Head(R"({"pattern": "vertical_slash", "last_q": null})"),
       "layers.0.0.last_q: must be an integer, got null"},
      {Head(R"({"pattern": "vertical_slash", "slash": false})"),
       "layers.0.0.slash: must be an integer, got false"},
      {Head(R"({"pattern": "a_shape", "n_init": 18446744073709551615})"),
       "layers.0.0.n_init: must be at most 9223372036854775807"},
  });
}

TEST(ParseSparsePatterns, RefusesBadLayerKeys) {
  ExpectAllInvalid({
      {File(R"(, "layers": [])"), "layers: must be an object of layer numbers"},
      {File(R"(, "layers": {"x": {}})"), "layers.x: not a layer number"},
      {File(R"(, "layers": {"03": {}})"), "layers.03: not a layer number"},
      {File(R"(, "layers": {"00": {}})"), "layers.00: not a layer number"},
      {File(R"(, "layers": {"-1": {}})"), "layers.-1: not a layer number"},
      {File(R"(, "layers": {"+1": {}})"), "layers.+1: not a layer number"},
      {File(R"(, "layers": {"1.0": {}})"), "layers.\"1.0\": not a layer number"},
      {File(R"(, "layers": {" 1": {}})"), "layers.\" 1\": not a layer number"},
      {File(R"(, "layers": {"": {}})"), "layers.\"\": not a layer number"},
      {File(R"(, "layers": {"0x1": {}})"), "layers.0x1: not a layer number"},
      {File(R"(, "layers": {"40": {}})"), "layers.40: the model has 32 layers"},
      {File(R"(, "layers": {"32": {}})"), "layers.32: the model has 32 layers"},
      {File(R"(, "layers": {"99999999999999999999": {}})"),
       "layers.99999999999999999999: the model has 32 layers"},
      {File(R"(, "layers": {"3": [{"pattern": "dense"}]})"),
       "layers.3: must be an object of head numbers"},
      {File(R"(, "layers": {"3": null})"), "layers.3: must be an object of head numbers"},
  });
}

TEST(ParseSparsePatterns, RefusesBadHeadKeys) {
  ExpectAllInvalid({
      {File(R"(, "layers": {"3": {"x": {"pattern": "dense"}}})"), "layers.3.x: not a head number"},
      {File(R"(, "layers": {"3": {"01": {"pattern": "dense"}}})"),
       "layers.3.01: not a head number"},
      {File(R"(, "layers": {"3": {"-0": {"pattern": "dense"}}})"),
       "layers.3.-0: not a head number"},
      {File(R"(, "layers": {"3": {"8": {"pattern": "dense"}}})"),
       "layers.3.8: the model has 8 query heads"},
      {File(R"(, "layers": {"3": {"4294967296": {"pattern": "dense"}}})"),
       "layers.3.4294967296: the model has 8 query heads"},
  });
}

TEST(ParseSparsePatterns, OneBadHeadRefusesTheWholeFile) {
  // The good heads before and after the bad one are not returned in any form.
  EXPECT_TRUE(IsInvalid(Parse(File(R"(, "layers": {"1": {"0": {"pattern": "dense"}},
                                 "2": {"0": {"pattern": "a_shape", "local": 0}},
                                 "3": {"0": {"pattern": "dense"}}})")),
                        "layers.2.0.local: must be at least 1"));
}

// A plan with every value in range, drawn at random: small and huge budgets, max_coverage
// over the whole (0, 1] range, layers empty or full, some listed heads equal to the default.
SparsePlan RandomPlan(std::mt19937_64& rng, int num_layers, int num_q_heads) {
  auto chance = [&rng](double p) { return std::bernoulli_distribution(p)(rng); };
  auto budget = [&](int64_t min, int64_t max) {
    if (chance(0.1)) return chance(0.5) ? min : max;
    const int64_t hi = chance(0.8) ? std::min<int64_t>(max, min + 100000) : max;
    return std::uniform_int_distribution<int64_t>(min, hi)(rng);
  };
  auto head = [&]() {
    HeadPattern h;  // Other patterns' budgets stay at their defaults, as a parse leaves them.
    switch (std::uniform_int_distribution<int>(0, 3)(rng)) {
      case 0:
        h.pattern = SparsePattern::kDense;
        break;
      case 1:
        h.pattern = SparsePattern::kAShape;
        h.a_shape.n_init = budget(0, std::numeric_limits<int64_t>::max());
        h.a_shape.local = budget(1, std::numeric_limits<int64_t>::max());
        break;
      case 2:
        h.pattern = SparsePattern::kVerticalSlash;
        h.vertical_slash.vertical = budget(0, std::numeric_limits<int64_t>::max());
        h.vertical_slash.slash = budget(1, std::numeric_limits<int64_t>::max());
        h.vertical_slash.keep_first = budget(0, std::numeric_limits<int64_t>::max());
        h.vertical_slash.keep_near = budget(1, std::numeric_limits<int64_t>::max());
        h.vertical_slash.last_q = budget(1, 64);
        break;
      default:
        h.pattern = SparsePattern::kBlockSparse;
        h.block_sparse.top_blocks = budget(1, std::numeric_limits<int64_t>::max());
        break;
    }
    return h;
  };

  SparsePlan plan;
  plan.min_tokens = budget(1, std::numeric_limits<int64_t>::max());
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  plan.max_coverage = chance(0.1) ? 1.0 : (chance(0.05) ? 4.9e-324 : 1.0 - u);
  if (plan.max_coverage == 0.0) plan.max_coverage = 0.5;
  plan.default_pattern = head();
  if (chance(0.3)) return plan;
  plan.layers.assign(num_layers, std::vector<HeadPattern>(num_q_heads, plan.default_pattern));
  const double listed = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  for (auto& layer : plan.layers) {
    for (HeadPattern& h : layer) {
      if (chance(listed)) h = head();
    }
  }
  return plan;
}

TEST(SparsePatternsToJson, RandomPlansRoundTripExactly) {
  std::mt19937_64 rng(20240611);
  for (int trial = 0; trial < 300; ++trial) {
    const int num_layers = std::uniform_int_distribution<int>(1, 40)(rng);
    const int num_q_heads = std::uniform_int_distribution<int>(1, 64)(rng);
    const SparsePlan plan = RandomPlan(rng, num_layers, num_q_heads);
    const std::string text = SparsePatternsToJson(plan, num_layers, num_q_heads);
    absl::StatusOr<SparsePlan> back = ParseSparsePatterns(text, num_layers, num_q_heads);
    ASSERT_TRUE(back.ok()) << "trial " << trial << ": " << back.status() << "\n" << text;
    ASSERT_TRUE(SamePlan(*back, plan)) << "trial " << trial << "\n" << text;
    // The text of a parsed plan is a fixed point.
    ASSERT_EQ(SparsePatternsToJson(*back, num_layers, num_q_heads), text) << "trial " << trial;
  }
}

TEST(SparsePatternsToJson, FullPlanOfDefaultsStaysFull) {
  SparsePlan plan;
  plan.layers.assign(3, std::vector<HeadPattern>(2, plan.default_pattern));
  absl::StatusOr<SparsePlan> back = ParseSparsePatterns(SparsePatternsToJson(plan, 3, 2), 3, 2);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(SamePlan(*back, plan));
}

TEST(SparsePatternsToJson, ShortPlanMeansTheDefaultForTheRest) {
  SparsePlan plan;
  plan.layers.resize(1);
  plan.layers[0].resize(1);
  plan.layers[0][0].pattern = SparsePattern::kDense;
  absl::StatusOr<SparsePlan> back = ParseSparsePatterns(SparsePatternsToJson(plan, 4, 4), 4, 4);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->layers.size(), 4u);
  for (int l = 0; l < 4; ++l) {
    for (int h = 0; h < 4; ++h) {
      EXPECT_TRUE(SameHead(back->For(l, h), plan.For(l, h))) << l << " " << h;
    }
  }
}

TEST(SparsePatternsToJson, WritesKeysInAFixedOrder) {
  SparsePlan plan;
  plan.layers.assign(12, std::vector<HeadPattern>(4, plan.default_pattern));
  plan.layers[10][2].pattern = SparsePattern::kDense;
  plan.layers[2][3].pattern = SparsePattern::kBlockSparse;
  plan.layers[2][3].block_sparse.top_blocks = 16;
  plan.layers[2][0].pattern = SparsePattern::kAShape;
  EXPECT_EQ(SparsePatternsToJson(plan, 12, 4), R"({
  "format": "tierkv-sparse-patterns/v1",
  "min_tokens": 32768,
  "max_coverage": 0.85,
  "default": {
    "pattern": "vertical_slash",
    "vertical": 1000,
    "slash": 6096,
    "keep_first": 30,
    "keep_near": 100,
    "last_q": 64
  },
  "layers": {
    "2": {
      "0": {
        "pattern": "a_shape",
        "n_init": 128,
        "local": 3968
      },
      "3": {
        "pattern": "block_sparse",
        "top_blocks": 16
      }
    },
    "10": {
      "2": {
        "pattern": "dense"
      }
    }
  }
}
)");
}

class LoadSparsePatternsTest : public testing::Test {
 protected:
  std::string Write(const std::string& name, const std::string& text) {
    const std::string path =
        absl::StrCat(testing::TempDir(), "/tierkv_sparse_patterns_", ::getpid(), "_", name);
    std::ofstream(path, std::ios::binary) << text;
    written_.push_back(path);
    return path;
  }
  void TearDown() override {
    for (const std::string& path : written_) std::remove(path.c_str());
  }

 private:
  std::vector<std::string> written_;
};

TEST_F(LoadSparsePatternsTest, ReadsAFile) {
  const std::string path = Write("example.json", kExample);
  absl::StatusOr<SparsePlan> loaded = LoadSparsePatterns(path, kLayers, kHeads);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  absl::StatusOr<SparsePlan> parsed = Parse(kExample);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(SamePlan(*loaded, *parsed));
}

TEST_F(LoadSparsePatternsTest, MissingFileIsNotFoundNamingThePath) {
  const std::string path = testing::TempDir() + "/tierkv_no_such_patterns.json";
  absl::StatusOr<SparsePlan> plan = LoadSparsePatterns(path, kLayers, kHeads);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(plan.status().message().find(path), std::string_view::npos) << plan.status();
}

TEST_F(LoadSparsePatternsTest, DirectoryIsAReadErrorNamingThePath) {
  const std::string path = testing::TempDir();
  absl::StatusOr<SparsePlan> plan = LoadSparsePatterns(path, kLayers, kHeads);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find(path), std::string_view::npos) << plan.status();
}

TEST_F(LoadSparsePatternsTest, BadFileNamesThePathAndTheJsonPath) {
  const std::string path = Write("bad.json", File(R"(, "layers": {"40": {}})"));
  EXPECT_TRUE(IsInvalid(LoadSparsePatterns(path, kLayers, kHeads),
                        absl::StrCat(path, ": layers.40: the model has 32 layers")));
}

}  // namespace
}  // namespace tierkv
