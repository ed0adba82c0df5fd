// The cache manager's GPU tier on a real GPU, as `tierkv up` runs it: the prefill worker's
// new blocks stay in device memory, warm prompts read them there (checked on the device),
// demotion to host memory when the tier is full, a corrupted GPU block is a miss, and the
// device arena's copies and checksums against the CPU. Skips without a usable GPU.
#include <grpcpp/grpcpp.h>

#include <cstring>
#include <random>

#include "cli/all_in_one.h"
#include "core/block_key.h"
#include "gtest/gtest.h"
#include "kernels/cuda/gpu_test_support.h"
#include "kernels/cuda/memory.h"
#include "tierkv/v1/admin_service.grpc.pb.h"
#include "tierkv/v1/prefill_service.grpc.pb.h"

namespace tierkv {
namespace {

namespace cu = kernels::cuda;

std::vector<uint32_t> Prompt(size_t n, uint32_t seed, int64_t vocab) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> tokens(n);
  for (auto& t : tokens) t = rng() % vocab;
  return tokens;
}

class GpuTierGpuTest : public ::testing::Test {
 protected:
  void Start(uint64_t gpu_bytes) {
    AllInOneOptions options;
    options.cache.listen_address = "127.0.0.1:0";
    options.cache.host_capacity_bytes = 256 << 20;
    options.cache.page_bytes = 4096;
    options.runtime.device = "cuda";
    options.gpu_capacity_bytes = gpu_bytes;
    auto all = AllInOne::Start(options);
    ASSERT_TRUE(all.ok()) << all.status();
    all_ = std::move(all).value();
    ASSERT_EQ(all_->gpu_tier_bytes(), gpu_bytes);
    auto channel = grpc::CreateChannel(all_->address(), grpc::InsecureChannelCredentials());
    prefill_ = v1::PrefillService::NewStub(channel);
    admin_ = v1::AdminService::NewStub(channel);
  }
  void TearDown() override {
    if (all_ != nullptr) {
      EXPECT_TRUE(all_->cache_manager().CheckInvariants().ok());
      all_->Shutdown();
    }
  }
  std::unique_ptr<grpc::ClientContext> Ctx() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(2));
    return ctx;
  }
  v1::PrefillResponse Prefill(const std::vector<uint32_t>& tokens) {
    v1::PrefillRequest request;
    request.mutable_tokens()->Add(tokens.begin(), tokens.end());
    v1::PrefillResponse response;
    grpc::Status s = prefill_->Prefill(Ctx().get(), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response;
  }
  v1::StatsResponse Stats() {
    v1::StatsResponse stats;
    EXPECT_TRUE(admin_->Stats(Ctx().get(), {}, &stats).ok());
    return stats;
  }
  const v1::TierStats* Tier(const v1::StatsResponse& stats, v1::Tier tier) {
    for (const auto& t : stats.tiers()) {
      if (t.tier() == tier) return &t;
    }
    return nullptr;
  }

  std::unique_ptr<AllInOne> all_;
  std::unique_ptr<v1::PrefillService::Stub> prefill_;
  std::unique_ptr<v1::AdminService::Stub> admin_;
};

TEST_F(GpuTierGpuTest, PrefillBlocksStayOnTheGpuAndWarmPromptsReadThemThere) {
  TIERKV_REQUIRE_GPU();
  Start(64 << 20);
  const int64_t vocab = all_->model().vocab_size();
  const uint32_t bt = all_->model().spec().block_tokens;
  auto prompt = Prompt(20 * bt + 5, 1, vocab);
  v1::PrefillResponse cold = Prefill(prompt);
  EXPECT_EQ(cold.cached_tokens(), 0u);
  EXPECT_EQ(cold.stored_blocks(), 20u);
  v1::StatsResponse stats = Stats();
  const v1::TierStats* gpu = Tier(stats, v1::TIER_GPU);
  ASSERT_NE(gpu, nullptr);
  EXPECT_EQ(gpu->blocks(), 20u);
  EXPECT_EQ(Tier(stats, v1::TIER_HOST)->blocks(), 0u);  // Nothing crossed PCIe.
  EXPECT_NE(stats.gpu_device().find("cuda:"), std::string::npos) << stats.gpu_device();

  // The cached KV is bit-exact (checked on the device as it lands), so two warm runs agree;
  // a cold run may differ within bf16 rounding (another split of the prompt).
  v1::PrefillResponse warm = Prefill(prompt);
  EXPECT_EQ(warm.cached_tokens(), 20u * bt);
  EXPECT_EQ(warm.checksum_failures(), 0u);
  v1::PrefillResponse again = Prefill(prompt);
  EXPECT_EQ(again.cached_tokens(), 20u * bt);
  EXPECT_EQ(again.first_token(), warm.first_token());
  stats = Stats();
  EXPECT_EQ(Tier(stats, v1::TIER_GPU)->hits(), 40u);
  EXPECT_EQ(stats.gpu_to_host(), 0u);
}

TEST_F(GpuTierGpuTest, FullGpuTierDemotesToHostAndResultsStayTheSame) {
  TIERKV_REQUIRE_GPU();
  const uint64_t block = [] {
    AllInOneOptions o;
    o.runtime.device = "cuda";
    auto rt = Runtime::Load(o.model, o.runtime);
    return rt.ok() ? (*rt)->spec().RawBlockBytes() : 0;
  }();
  ASSERT_GT(block, 0u);
  Start((block + 4095) / 4096 * 4096 * 12);  // Room for 12 blocks.
  const int64_t vocab = all_->model().vocab_size();
  const uint32_t bt = all_->model().spec().block_tokens;
  // Each prompt runs cold, then warm while its blocks are on the GPU.
  std::vector<std::vector<uint32_t>> prompts;
  std::vector<uint32_t> first_tokens;
  for (uint32_t p = 0; p < 4; ++p) {
    prompts.push_back(Prompt(8 * bt + 3, 10 + p, vocab));
    EXPECT_EQ(Prefill(prompts.back()).stored_blocks(), 8u);
    v1::PrefillResponse warm = Prefill(prompts.back());
    EXPECT_EQ(warm.cached_tokens(), 8u * bt);
    first_tokens.push_back(warm.first_token());
  }
  v1::StatsResponse stats = Stats();
  EXPECT_GT(stats.gpu_demotions(), 0u);
  EXPECT_LE(Tier(stats, v1::TIER_GPU)->blocks(), 12u);
  EXPECT_EQ(Tier(stats, v1::TIER_GPU)->blocks() + Tier(stats, v1::TIER_HOST)->blocks(), 32u);
  // The first prompts' blocks went down to host memory; all four are served whole, with the
  // same result as from the GPU.
  for (size_t p = 0; p < prompts.size(); ++p) {
    v1::PrefillResponse warm = Prefill(prompts[p]);
    EXPECT_EQ(warm.cached_tokens(), 8u * bt) << "prompt " << p;
    EXPECT_EQ(warm.checksum_failures(), 0u);
    EXPECT_EQ(warm.first_token(), first_tokens[p]) << "prompt " << p;
  }
}

TEST_F(GpuTierGpuTest, CorruptedGpuBlockIsAMissAndTheWorkerRecomputes) {
  TIERKV_REQUIRE_GPU();
  Start(64 << 20);
  const int64_t vocab = all_->model().vocab_size();
  const uint32_t bt = all_->model().spec().block_tokens;
  auto prompt = Prompt(6 * bt + 1, 3, vocab);
  v1::PrefillResponse cold = Prefill(prompt);
  ASSERT_EQ(cold.stored_blocks(), 6u);
  // Flip a byte of the fourth block where it lies in device memory.
  auto keys = *ComputeBlockKeys(all_->model().spec(), "", prompt);
  v1::ListBlocksRequest list;
  list.set_page_size(100);
  v1::ListBlocksResponse listed;
  ASSERT_TRUE(admin_->ListBlocks(Ctx().get(), list, &listed).ok());
  uint64_t offset = UINT64_MAX;
  for (const auto& b : listed.blocks()) {
    if (b.key() == KeyBytes(keys[3])) {
      ASSERT_EQ(b.location().tier(), v1::TIER_GPU);
      offset = b.location().extents(0).offset();
    }
  }
  ASSERT_NE(offset, UINT64_MAX);
  uint8_t* device = all_->cache_manager().GpuTierRegion().data() + offset + 100;
  uint8_t byte = 0;
  ASSERT_TRUE(cu::CopyToHost(&byte, device, 1).ok());
  byte ^= 0x20;
  ASSERT_TRUE(cu::CopyToDevice(device, &byte, 1).ok());

  v1::PrefillResponse warm = Prefill(prompt);
  EXPECT_EQ(warm.cached_tokens(), 3u * bt);  // Blocks 0..2; block 3 failed its checksum.
  EXPECT_EQ(warm.checksum_failures(), 1u);
}

// The arena by itself: checksums of scattered, multi-piece blocks of two sizes equal the
// CPU's, and copies to host memory split across pieces land exactly.
TEST(DeviceArenaGpuTest, ChecksumsAndCopiesMatchTheCpu) {
  TIERKV_REQUIRE_GPU();
  RuntimeOptions o;
  o.device = "cuda";
  auto rt = Runtime::Load("builtin:tiny", o);
  ASSERT_TRUE(rt.ok()) << rt.status();
  auto arena = (*rt)->AllocateDeviceArena(8 << 20);
  ASSERT_TRUE(arena.ok()) << arena.status();
  DeviceArena& a = **arena;
  ASSERT_EQ(reinterpret_cast<uintptr_t>(a.base()) % 65536, 0u);
  std::vector<uint8_t> host(8 << 20);
  std::mt19937_64 rng(7);
  for (auto& b : host) b = static_cast<uint8_t>(rng());
  ASSERT_TRUE(cu::CopyToDevice(a.base(), host.data(), host.size()).ok());
  // Block i: pieces at scattered offsets; sizes 12288 (three pieces) then 40000 (two).
  std::vector<std::vector<PayloadPiece>> pieces;
  std::vector<std::vector<std::pair<size_t, size_t>>> where;
  for (int i = 0; i < 40; ++i) {
    std::vector<std::pair<size_t, size_t>> w;
    if (i < 30) {
      w = {{(i * 7919 % 500) * 8192, 4096}, {(i * 104729 % 300) * 4096 + (2 << 20), 4096},
           {(i * 31 % 97) * 4096 + (5 << 20), 4096}};
    } else {
      w = {{(i * 13 % 50) * 65536 + 8, 30000}, {(i * 17 % 20) * 65536 + (6 << 20), 10000}};
    }
    std::vector<PayloadPiece> p;
    for (auto [off, len] : w) p.push_back({a.base() + off, len});
    pieces.push_back(p);
    where.push_back(w);
  }
  std::vector<std::span<const PayloadPiece>> spans(pieces.begin(), pieces.end());
  std::vector<uint64_t> sums(spans.size(), 0);
  ASSERT_TRUE(a.Checksums(spans, sums).ok());
  for (size_t i = 0; i < spans.size(); ++i) {
    ChecksumBuilder b;
    for (auto [off, len] : where[i]) b.Update(host.data() + off, len);
    EXPECT_EQ(sums[i], b.Finish()) << "block " << i;
  }
  // A block copied out into three host pieces of other sizes.
  std::vector<uint8_t> out(40000, 0);
  std::vector<std::span<uint8_t>> dst = {std::span(out).first(1),
                                         std::span(out).subspan(1, 29999),
                                         std::span(out).subspan(30000)};
  ASSERT_TRUE(a.CopyToHost(pieces[35], dst).ok());
  ChecksumBuilder b;
  b.Update(out.data(), out.size());
  EXPECT_EQ(b.Finish(), sums[35]);
  // Sizes that do not add up change nothing and say so.
  std::vector<std::span<uint8_t>> short_dst = {std::span(out).first(100)};
  EXPECT_EQ(a.CopyToHost(pieces[35], short_dst).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tierkv
