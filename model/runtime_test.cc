// The runtime interface over the CPU model (GPU runs are covered by cuda_model_gpu_test and
// the device scripts): device choice, sequences, block moves and their errors.
#include "model/runtime.h"

#include <random>

#include "gtest/gtest.h"

namespace tierkv {
namespace {

std::vector<uint32_t> Tokens(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> t(n);
  for (uint32_t& x : t) x = static_cast<uint32_t>(rng() % 32768);
  return t;
}

TEST(Runtime, CpuDeviceLoadsTheCpuModel) {
  RuntimeOptions o;
  o.device = "cpu";
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Load("builtin:tiny", o);
  ASSERT_TRUE(rt.ok()) << rt.status();
  EXPECT_EQ((*rt)->device(), kernels::Device::kCpu);
  EXPECT_EQ((*rt)->spec().kv_dtype, "fp32");
  EXPECT_EQ((*rt)->vocab_size(), 32768);
}

TEST(Runtime, AutoPicksTheGpuOnlyWhenOneIsUsable) {
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Load("builtin:tiny");
  ASSERT_TRUE(rt.ok()) << rt.status();
  EXPECT_EQ((*rt)->device(),
            GpuRuntimeAvailable() ? kernels::Device::kCuda : kernels::Device::kCpu);
  if ((*rt)->device() == kernels::Device::kCuda) {
    EXPECT_EQ((*rt)->spec().kv_dtype, "bf16");
  }
}

TEST(Runtime, UnknownOrMissingDevicesAreErrors) {
  RuntimeOptions o;
  o.device = "tpu";
  EXPECT_EQ(Runtime::Load("builtin:tiny", o).status().code(),
            absl::StatusCode::kInvalidArgument);
  if (!GpuRuntimeAvailable()) {
    o.device = "cuda";
    absl::Status s = Runtime::Load("builtin:tiny", o).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  }
}

TEST(Runtime, BlocksMovedBetweenSequencesContinueBitForBit) {
  RuntimeOptions o;
  o.device = "cpu";
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Load("builtin:tiny", o);
  ASSERT_TRUE(rt.ok());
  const Runtime& r = **rt;
  const std::vector<uint32_t> prompt = Tokens(70, 1);  // 4 blocks of 16 and 6 more.
  absl::StatusOr<std::unique_ptr<Sequence>> a = r.NewSequence(128);
  ASSERT_TRUE(a.ok());
  absl::StatusOr<std::vector<float>> cold = r.Prefill(prompt, a->get());
  ASSERT_TRUE(cold.ok());
  std::vector<std::string> blocks;
  for (uint64_t i = 0; i < 4; ++i) {
    absl::StatusOr<std::string> b = (*a)->ExtractBlock(i);
    ASSERT_TRUE(b.ok());
    blocks.push_back(*b);
  }
  EXPECT_EQ((*a)->ExtractBlock(4).status().code(), absl::StatusCode::kOutOfRange);

  absl::StatusOr<std::unique_ptr<Sequence>> b = r.NewSequence(128);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE((*b)->AppendBlocks(blocks).ok());
  EXPECT_EQ((*b)->tokens(), 64);
  absl::StatusOr<std::vector<float>> warm =
      r.Prefill(std::span<const uint32_t>(prompt).subspan(64), b->get());
  ASSERT_TRUE(warm.ok());
  EXPECT_EQ(*warm, *cold);

  // A payload of the wrong size changes nothing.
  std::vector<std::string> bad = {blocks[0], blocks[1].substr(1)};
  absl::StatusOr<std::unique_ptr<Sequence>> c = r.NewSequence(128);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->AppendBlocks(bad).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*c)->tokens(), 0);
  EXPECT_EQ(r.NewSequence(0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tierkv
