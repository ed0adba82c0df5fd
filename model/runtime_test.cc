// The runtime interface over the CPU model (GPU runs are covered by cuda_model_gpu_test and
// the device scripts): device choice, sequences, block moves and their errors.
#include "model/runtime.h"

#include <cmath>
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

// Logits of two ways to the same sequence: bit for bit on the CPU (its kernels are
// split-invariant), within bf16 rounding on the GPU (a different split runs other tiles).
void ExpectSameLogits(const Runtime& r, const std::vector<float>& got,
                      const std::vector<float>& want) {
  if (r.device() == kernels::Device::kCpu) {
    EXPECT_EQ(got, want);
    return;
  }
  ASSERT_EQ(got.size(), want.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  EXPECT_LT(std::sqrt(num / den), 2e-2);
}

class RuntimeOnDevice : public testing::TestWithParam<std::string> {};

INSTANTIATE_TEST_SUITE_P(Devices, RuntimeOnDevice,
                         testing::ValuesIn(GpuRuntimeAvailable()
                                               ? std::vector<std::string>{"cpu", "cuda"}
                                               : std::vector<std::string>{"cpu"}));

TEST_P(RuntimeOnDevice, BlocksMovedBetweenSequencesContinueTheSequence) {
  RuntimeOptions o;
  o.device = GetParam();
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
  absl::StatusOr<std::vector<std::string>> batch = (*a)->ExtractBlocks(1, 3);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_EQ(*batch, std::vector<std::string>(blocks.begin() + 1, blocks.end()));
  EXPECT_EQ((*a)->ExtractBlocks(2, 3).status().code(), absl::StatusCode::kOutOfRange);
  // Written in place into pieces (block 1 in one piece, blocks 2 and 3 in three).
  const size_t bytes = blocks[0].size();
  std::string area(3 * bytes, '\0');
  std::vector<PayloadTarget> targets = {{area.data(), bytes},
                                        {area.data() + bytes, 100},
                                        {area.data() + bytes + 100, bytes - 100},
                                        {area.data() + 2 * bytes, bytes}};
  std::vector<std::span<const PayloadTarget>> where = {{&targets[0], 1}, {&targets[1], 2},
                                                       {&targets[3], 1}};
  std::vector<uint64_t> written(3, 0);
  ASSERT_TRUE((*a)->WriteBlocksInPlace(1, where, written).ok());
  EXPECT_EQ(area, blocks[1] + blocks[2] + blocks[3]);
  std::vector<uint64_t> sums(3);
  ChecksumsOf(where, sums);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(sums[i], BlockChecksum(blocks[1 + i].data(), bytes));
    EXPECT_EQ(written[i], sums[i]) << "block " << 1 + i;  // On the GPU: computed there.
  }
  EXPECT_EQ((*a)->WriteBlocksInPlace(2, where).code(), absl::StatusCode::kOutOfRange);
  targets[2].size -= 1;
  EXPECT_EQ((*a)->WriteBlocksInPlace(1, where).code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<std::unique_ptr<Sequence>> b = r.NewSequence(128);
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE((*b)->AppendBlocks(blocks).ok());
  EXPECT_EQ((*b)->tokens(), 64);
  absl::StatusOr<std::vector<float>> warm =
      r.Prefill(std::span<const uint32_t>(prompt).subspan(64), b->get());
  ASSERT_TRUE(warm.ok());
  ExpectSameLogits(r, *warm, *cold);

  // In place, from pieces (each block in two), keeping only what `verify` vouches for.
  std::vector<PayloadPiece> pieces;
  for (const std::string& blk : blocks) {
    pieces.push_back({blk.data(), 1000});
    pieces.push_back({blk.data() + 1000, blk.size() - 1000});
  }
  std::vector<std::span<const PayloadPiece>> split;
  for (size_t i = 0; i < blocks.size(); ++i) split.emplace_back(&pieces[2 * i], 2);
  std::vector<uint64_t> checksums;
  for (const std::string& blk : blocks) checksums.push_back(BlockChecksum(blk.data(), blk.size()));
  EXPECT_EQ(IntactPrefix(split, checksums), 4u);
  checksums[3] ^= 1;
  EXPECT_EQ(IntactPrefix(split, checksums), 3u);
  absl::StatusOr<std::unique_ptr<Sequence>> d = r.NewSequence(128);
  ASSERT_TRUE(d.ok());
  absl::StatusOr<size_t> kept =
      (*d)->AppendBlocksInPlace(split, [&](auto bytes) { return IntactPrefix(bytes, checksums); });
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(*kept, 3u);
  EXPECT_EQ((*d)->tokens(), 48);
  absl::StatusOr<std::vector<float>> in_place =
      r.Prefill(std::span<const uint32_t>(prompt).subspan(48), d->get());
  ASSERT_TRUE(in_place.ok());
  ExpectSameLogits(r, *in_place, *cold);

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

namespace tierkv {
namespace {

// Enough blocks that the GPU's extraction runs several batches through its two staging halves.
TEST(RuntimeOnGpu, ExtractBlocksInManyBatchesEqualsOneAtATime) {
  if (!GpuRuntimeAvailable()) GTEST_SKIP() << "no usable GPU: the CPU case is covered above";
  RuntimeOptions o;
  o.device = "cuda";
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Load("builtin:tiny", o);
  ASSERT_TRUE(rt.ok()) << rt.status();
  const std::vector<uint32_t> prompt = Tokens(16 * 600 + 5, 9);
  absl::StatusOr<std::unique_ptr<Sequence>> seq = (*rt)->NewSequence(prompt.size());
  ASSERT_TRUE(seq.ok());
  ASSERT_TRUE((*rt)->Prefill(prompt, seq->get()).ok());
  absl::StatusOr<std::vector<std::string>> all = (*seq)->ExtractBlocks(3, 597);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 597u);
  for (uint64_t i = 0; i < 597; i += 37) {
    EXPECT_EQ((*all)[i], *(*seq)->ExtractBlock(3 + i)) << "block " << 3 + i;
  }
  EXPECT_EQ((*all)[596], *(*seq)->ExtractBlock(599));
}

}  // namespace
}  // namespace tierkv
