#include "kernels/sampling.h"

#include <cmath>
#include <limits>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace tierkv::kernels {
namespace {

TEST(ArgMax, PicksLowestIndexAmongTiesAndSkipsNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(ArgMax(std::vector<float>{1, 3, 3, 2}), 1u);
  EXPECT_EQ(ArgMax(std::vector<float>{nan, -5, nan, -1}), 3u);
  EXPECT_EQ(ArgMax(std::vector<float>{}), 0u);
}

TEST(SampleToken, GreedyWhenTemperatureIsZero) {
  std::vector<float> logits = {0.1f, 2.0f, 1.9f, -3.0f};
  for (uint64_t step = 0; step < 10; ++step) EXPECT_EQ(SampleToken(logits, {}, step), 1u);
}

TEST(SampleToken, SameSeedSameTokensDifferentSeedDifferentTokens) {
  std::vector<float> logits(100);
  for (int i = 0; i < 100; ++i) logits[i] = std::sin(i * 0.37f) * 2;
  auto draw = [&](uint64_t seed, float top_p, int top_k) {
    Sampler s({1.0f, top_p, top_k, seed});
    std::vector<uint32_t> out;
    for (int i = 0; i < 50; ++i) out.push_back(s.Next(logits));
    return out;
  };
  EXPECT_EQ(draw(1, 1.0f, 0), draw(1, 1.0f, 0));
  EXPECT_EQ(draw(1, 0.9f, 20), draw(1, 0.9f, 20));
  EXPECT_NE(draw(1, 1.0f, 0), draw(2, 1.0f, 0));
}

TEST(SampleToken, TopPAndTopKRestrictTheCandidates) {
  std::vector<float> logits = {0.0f, 5.0f, 4.0f, 1.0f, 3.0f};
  for (uint64_t step = 0; step < 200; ++step) {
    EXPECT_EQ(SampleToken(logits, {1.0f, 0.01f, 0, 9}, step), 1u);  // Only the top token.
    const uint32_t k2 = SampleToken(logits, {1.0f, 1.0f, 2, 9}, step);
    EXPECT_TRUE(k2 == 1 || k2 == 2) << k2;
  }
}

TEST(SampleToken, FrequenciesFollowTheSoftmax) {
  std::vector<float> logits = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  std::map<uint32_t, int> counts;
  const int n = 20000;
  for (int step = 0; step < n; ++step) ++counts[SampleToken(logits, {1.0f, 1.0f, 0, 5}, step)];
  for (uint32_t t = 0; t < 4; ++t) EXPECT_NEAR(counts[t] / double(n), (t + 1) / 10.0, 0.015) << t;
  // Temperature 0.5 squares the odds: 1:4:9:16.
  counts.clear();
  for (int step = 0; step < n; ++step) ++counts[SampleToken(logits, {0.5f, 1.0f, 0, 5}, step)];
  for (uint32_t t = 0; t < 4; ++t) {
    EXPECT_NEAR(counts[t] / double(n), (t + 1) * (t + 1) / 30.0, 0.015) << t;
  }
}

TEST(ValidateSamplingParams, NamesTheBadField) {
  EXPECT_TRUE(ValidateSamplingParams({}).ok());
  EXPECT_EQ(ValidateSamplingParams({-1.0f}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSamplingParams({1.0f, 0.0f}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSamplingParams({1.0f, 1.5f}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSamplingParams({1.0f, 1.0f, -2}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ValidateSamplingParams({1.0f, 1.5f}).message().find("top_p"), std::string::npos);
}

}  // namespace
}  // namespace tierkv::kernels
