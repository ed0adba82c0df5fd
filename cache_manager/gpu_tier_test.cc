// The block index with a GPU tier (a fake device whose memory is host memory): writes that
// stay on the GPU, commit checks on the device, GPU locations only for callers that share
// the GPU, copies to host memory for everyone else, demotion to host for room, and the
// invariants under concurrent churn over GPU, host and SSD.
#include <stdlib.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "cache_manager/block_index.h"
#include "cache_manager/index_test_util.h"
#include "core/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/fake_device_tier.h"

namespace tierkv {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kBlock = 4 * kPage;  // Every test block is 16 KiB.

using testing_util::Bytes;
using testing_util::Payload;

class GpuTierTest : public ::testing::Test {
 protected:
  void TearDown() override {
    index_.reset();
    ssd_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // Host tier of `host_blocks`, GPU tier of `gpu_blocks`, SSD tier of `ssd_blocks` (0: none).
  void Open(uint64_t host_blocks, uint64_t gpu_blocks, uint64_t ssd_blocks = 0,
            bool write_through = false) {
    index_.reset();
    pool_ = *HostPool::Create({.capacity_bytes = host_blocks * kBlock, .page_bytes = kPage});
    auto gpu = FakeDeviceTier::Create(gpu_blocks * kBlock, kPage);
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = std::move(gpu).value();
    events_ = std::make_unique<EventLog>(4096);
    if (ssd_blocks > 0) {
      std::string tmpl = (std::filesystem::current_path() / "gpu-tier-XXXXXX").string();
      ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
      dir_ = tmpl;
      SsdTierOptions ssd_options;
      ssd_options.dir = dir_;
      ssd_options.capacity_bytes = ssd_blocks * kBlock;
      ssd_options.slab_bytes = 16 * kBlock;
      SsdRecovery recovery;
      auto ssd = SsdTier::Open(ssd_options, &recovery);
      ASSERT_TRUE(ssd.ok()) << ssd.status();
      ssd_ = std::move(ssd).value();
    }
    BlockIndexOptions options;
    options.ssd_admit_min_hits = 0;
    options.ssd_write_through = write_through;
    index_ = std::make_unique<BlockIndex>(options, pool_.get(), &clock_, events_.get(),
                                          ssd_.get(), gpu_.get());
  }

  std::vector<BlockKey> Chain(size_t n, uint32_t seed = 0) {
    return testing_util::TestChain(spec_, n, seed);
  }

  std::vector<AllocateBlockSpec> Specs(const std::vector<BlockKey>& chain, size_t from,
                                       size_t to) {
    std::vector<AllocateBlockSpec> specs;
    for (size_t i = from; i < to; ++i) {
      specs.push_back({Bytes(chain[i]), i == 0 ? "" : Bytes(chain[i - 1]), kBlock, 0});
    }
    return specs;
  }

  // Writes a block's payload where its space lies: on the fake device for GPU space (as a
  // same-process writer would, in place), through Write for host space.
  absl::Status Fill(uint64_t allocation_id, const AllocateResult::Block& b,
                    const std::string& data) {
    if (!b.on_gpu) return index_->Write(allocation_id, Bytes(b.key), 0, data);
    uint64_t at = 0;
    for (const PoolExtent& e : b.space.extents) {
      std::memcpy(gpu_->device_bytes() + e.offset, data.data() + at, e.length);
      at += e.length;
    }
    return absl::OkStatus();
  }

  // Allocates, writes and commits chain[from, to); returns how many blocks went to the GPU.
  absl::StatusOr<size_t> Store(const std::vector<BlockKey>& chain, size_t from, size_t to,
                               bool gpu = true) {
    TIERKV_ASSIGN_OR_RETURN(AllocateResult a, index_->Allocate(spec_, Specs(chain, from, to),
                                                               absl::ZeroDuration(), gpu));
    std::vector<std::pair<std::string, uint64_t>> commits;
    size_t on_gpu = 0;
    for (auto& b : a.blocks) {
      if (b.state != AllocateState::kAllocated) continue;
      std::string data = Payload(b.key, kBlock);
      TIERKV_RETURN_IF_ERROR(Fill(a.allocation_id, b, data));
      commits.emplace_back(Bytes(b.key), BlockChecksum(data.data(), data.size()));
      on_gpu += b.on_gpu;
    }
    if (commits.empty()) return on_gpu;
    TIERKV_RETURN_IF_ERROR(index_->Commit(a.allocation_id, commits).status());
    return on_gpu;
  }

  struct Seen {
    size_t found = 0;
    size_t on_gpu = 0;      // Emitted blocks that had a GPU copy.
    size_t host_only = 0;   // Emitted blocks without a GPU copy.
    uint64_t lease = 0;
  };
  // Looks the chain up; every emitted block's bytes are checked where the caller would read
  // them (the GPU copy when it accepts GPU locations and there is one, else the host copy).
  Seen Look(const std::vector<BlockKey>& chain, bool accept_gpu, bool lease = false) {
    std::vector<std::string> keys;
    for (auto& k : chain) keys.push_back(Bytes(k));
    Seen seen;
    size_t i = 0;
    auto r = index_->Lookup(
        keys, std::nullopt, {}, lease, absl::ZeroDuration(),
        [&](const CommittedBlock& b) {
          std::string got(b.size, '\0');
          if (accept_gpu && b.in_gpu) {
            ++seen.on_gpu;
            uint64_t at = 0;
            for (const PoolExtent& e : b.gpu_space.extents) {
              std::memcpy(got.data() + at, gpu_->device_bytes() + e.offset, e.length);
              at += e.length;
            }
          } else {
            EXPECT_TRUE(b.in_host) << "block " << i << " emitted without a host copy";
            if (!b.in_host) return;
            seen.host_only += !b.in_gpu;
            seen.on_gpu += b.in_gpu;
            pool_->Read(b.space, 0, got.data(), b.size);
          }
          EXPECT_TRUE(got == Payload(b.key, kBlock)) << "block " << i << " bytes differ";
          ++i;
        },
        accept_gpu);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return seen;
    seen.found = r->found;
    seen.lease = r->lease_id;
    return seen;
  }

  std::vector<InspectEntry> Inspect(const std::vector<BlockKey>& chain) {
    std::vector<std::string> keys;
    for (auto& k : chain) keys.push_back(Bytes(k));
    auto r = index_->Inspect(keys, std::nullopt, [](size_t, const CommittedBlock&) {});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : std::vector<InspectEntry>{};
  }

  // Stores `n` host blocks (a chain) and pins them: host memory of n blocks is then full
  // of blocks that cannot leave.
  void FillHostWithPinnedBlocks(size_t n) {
    auto pinned = Chain(n, 9);
    ASSERT_EQ(*Store(pinned, 0, n, /*gpu=*/false), 0u);
    std::vector<std::string> keys;
    for (const BlockKey& k : pinned) keys.push_back(Bytes(k));
    ASSERT_TRUE(index_->SetPinned(keys, true).ok());
  }

  void ExpectInvariants() {
    absl::Status s = index_->CheckInvariants();
    EXPECT_TRUE(s.ok()) << s;
    IndexStats st = index_->Stats();
    EXPECT_LE(st.used_bytes, st.capacity_bytes);
    EXPECT_LE(st.gpu_used_bytes, st.gpu_capacity_bytes);
  }

  std::string dir_;
  FakeClock clock_;
  ModelSpec spec_ = BuiltinTinyModelSpec();
  std::unique_ptr<HostPool> pool_;
  std::unique_ptr<FakeDeviceTier> gpu_;
  std::unique_ptr<EventLog> events_;
  std::unique_ptr<SsdTier> ssd_;
  std::unique_ptr<BlockIndex> index_;
};

TEST_F(GpuTierTest, BlocksWrittenOnTheGpuStayThereAndAreCheckedOnTheDevice) {
  Open(/*host_blocks=*/8, /*gpu_blocks=*/8);
  auto a = Chain(4, 1);
  auto stored = Store(a, 0, 4);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(*stored, 4u);
  IndexStats s = index_->Stats();
  EXPECT_TRUE(s.has_gpu);
  EXPECT_EQ(s.gpu_device, "fake device");
  EXPECT_EQ(s.gpu_blocks, 4u);
  EXPECT_EQ(s.gpu_bytes, 4 * kBlock);
  EXPECT_EQ(s.gpu_used_bytes, 4 * kBlock);
  EXPECT_EQ(s.host_blocks, 0u);
  EXPECT_EQ(s.used_bytes, 0u);  // Nothing of the host tier.
  ExpectInvariants();
  // A caller sharing the GPU reads them there: nothing is copied.
  Seen seen = Look(a, /*accept_gpu=*/true);
  EXPECT_EQ(seen.found, 4u);
  EXPECT_EQ(seen.on_gpu, 4u);
  EXPECT_EQ(gpu_->copies(), 0u);
  EXPECT_EQ(index_->Stats().gpu_hits, 4u);
  auto entries = Inspect(a);
  ASSERT_EQ(entries.size(), 4u);
  EXPECT_EQ(entries[0].state, InspectState::kFound);
  EXPECT_THAT(entries[0].detail, HasSubstr("in GPU memory"));
  // The stored events name the GPU tier.
  auto events = events_->Read(1, 100);
  ASSERT_FALSE(events.events.empty());
  EXPECT_EQ(events.events[0].tier, kTierGpu);
}

TEST_F(GpuTierTest, WrongChecksumOnTheGpuIsDataLossAndChangesNothing) {
  Open(8, 8);
  auto a = Chain(2, 1);
  auto alloc = index_->Allocate(spec_, Specs(a, 0, 2), absl::ZeroDuration(), true);
  ASSERT_TRUE(alloc.ok()) << alloc.status();
  std::vector<std::pair<std::string, uint64_t>> commits;
  for (auto& b : alloc->blocks) {
    ASSERT_TRUE(b.on_gpu);
    std::string data = Payload(b.key, kBlock);
    ASSERT_TRUE(Fill(alloc->allocation_id, b, data).ok());
    commits.emplace_back(Bytes(b.key), BlockChecksum(data.data(), data.size()));
  }
  // One byte of block 1 landed wrong on the device.
  gpu_->device_bytes()[alloc->blocks[1].space.extents[0].offset + 7] ^= 0x40;
  auto commit = index_->Commit(alloc->allocation_id, commits);
  EXPECT_EQ(commit.status().code(), absl::StatusCode::kDataLoss) << commit.status();
  EXPECT_THAT(commit.status().message(), HasSubstr("blocks[1]"));
  EXPECT_EQ(Look(a, true).found, 0u);
  EXPECT_EQ(index_->Stats().checksum_failures, 1u);
  ExpectInvariants();
  // The writer rewrites it and commits again.
  std::string data = Payload(alloc->blocks[1].key, kBlock);
  ASSERT_TRUE(Fill(alloc->allocation_id, alloc->blocks[1], data).ok());
  ASSERT_TRUE(index_->Commit(alloc->allocation_id, commits).ok());
  EXPECT_EQ(Look(a, true).found, 2u);
  ExpectInvariants();
}

TEST_F(GpuTierTest, DeviceChecksumFailureCommitsNothing) {
  Open(8, 8);
  auto a = Chain(1, 1);
  auto alloc = index_->Allocate(spec_, Specs(a, 0, 1), absl::ZeroDuration(), true);
  ASSERT_TRUE(alloc.ok());
  std::string data = Payload(a[0], kBlock);
  ASSERT_TRUE(Fill(alloc->allocation_id, alloc->blocks[0], data).ok());
  gpu_->set_fail_checksums(true);
  auto commit = index_->Commit(alloc->allocation_id,
                               {{Bytes(a[0]), BlockChecksum(data.data(), data.size())}});
  EXPECT_EQ(commit.status().code(), absl::StatusCode::kUnavailable) << commit.status();
  EXPECT_EQ(Look(a, true).found, 0u);
  gpu_->set_fail_checksums(false);
  ASSERT_TRUE(index_->Commit(alloc->allocation_id,
                             {{Bytes(a[0]), BlockChecksum(data.data(), data.size())}})
                  .ok());
  EXPECT_EQ(Look(a, true).found, 1u);
  ExpectInvariants();
}

TEST_F(GpuTierTest, PutIntoGpuSpaceIsRefused) {
  Open(8, 8);
  auto a = Chain(1, 1);
  auto alloc = index_->Allocate(spec_, Specs(a, 0, 1), absl::ZeroDuration(), true);
  ASSERT_TRUE(alloc.ok());
  ASSERT_TRUE(alloc->blocks[0].on_gpu);
  absl::Status s = index_->Write(alloc->allocation_id, Bytes(a[0]), 0, "abc");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("GPU tier"));
  ExpectInvariants();
  // Abort gives the GPU space back.
  ASSERT_TRUE(index_->Abort(alloc->allocation_id, {}).ok());
  EXPECT_EQ(index_->Stats().gpu_used_bytes, 0u);
  ExpectInvariants();
}

TEST_F(GpuTierTest, ExpiredWriteLeaseFreesGpuSpace) {
  Open(8, 8);
  auto a = Chain(3, 1);
  auto alloc = index_->Allocate(spec_, Specs(a, 0, 3), absl::Seconds(5), true);
  ASSERT_TRUE(alloc.ok());
  EXPECT_EQ(index_->Stats().gpu_used_bytes, 3 * kBlock);
  clock_.Advance(absl::Seconds(6));
  EXPECT_EQ(index_->ExpireLeases(), 1u);
  EXPECT_EQ(index_->Stats().gpu_used_bytes, 0u);
  ExpectInvariants();
}

TEST_F(GpuTierTest, HostReadersGetAHostCopyAndTheGpuCopyStays) {
  Open(8, 8);
  auto a = Chain(3, 1);
  ASSERT_TRUE(Store(a, 0, 3).ok());
  Seen seen = Look(a, /*accept_gpu=*/false);
  EXPECT_EQ(seen.found, 3u);
  IndexStats s = index_->Stats();
  EXPECT_EQ(s.gpu_to_host, 3u);
  EXPECT_EQ(s.host_blocks, 3u);
  EXPECT_EQ(s.gpu_blocks, 3u);
  EXPECT_EQ(s.gpu_hits, 0u);
  ExpectInvariants();
  // Get streams read the host copy.
  std::string got;
  ASSERT_TRUE(index_->Read(Bytes(a[2]), 1 << 20, [](const CommittedBlock&) {},
                           [&](uint64_t, std::string_view d) {
                             got.append(d);
                             return true;
                           })
                  .ok());
  EXPECT_TRUE(got == Payload(a[2], kBlock));
  auto entries = Inspect(a);
  EXPECT_THAT(entries[1].detail, HasSubstr("in GPU memory and in host memory"));
}

TEST_F(GpuTierTest, GetOfAGpuOnlyBlockCopiesItToHostFirst) {
  Open(8, 8);
  auto a = Chain(1, 1);
  ASSERT_TRUE(Store(a, 0, 1).ok());
  std::string got;
  ASSERT_TRUE(index_->Read(Bytes(a[0]), 4096, [](const CommittedBlock&) {},
                           [&](uint64_t, std::string_view d) {
                             got.append(d);
                             return true;
                           })
                  .ok());
  EXPECT_TRUE(got == Payload(a[0], kBlock));
  EXPECT_EQ(index_->Stats().gpu_to_host, 1u);
  ExpectInvariants();
}

TEST_F(GpuTierTest, FullGpuTierDemotesColdestBlocksToHost) {
  Open(/*host_blocks=*/8, /*gpu_blocks=*/4);
  auto a = Chain(4, 1);
  auto b = Chain(4, 2);
  ASSERT_EQ(*Store(a, 0, 4), 4u);
  ASSERT_EQ(*Store(b, 0, 4), 4u);  // Needs a's room: a goes to host memory.
  IndexStats s = index_->Stats();
  EXPECT_EQ(s.gpu_demotions, 4u);
  EXPECT_EQ(s.gpu_blocks, 4u);
  EXPECT_EQ(s.host_blocks, 4u);
  EXPECT_EQ(s.blocks, 8u);
  EXPECT_EQ(s.evictions, 0u);
  ExpectInvariants();
  // a is whole in host memory, b on the GPU; both serve their bytes.
  Seen sa = Look(a, true);
  EXPECT_EQ(sa.found, 4u);
  EXPECT_EQ(sa.host_only, 4u);
  Seen sb = Look(b, true);
  EXPECT_EQ(sb.found, 4u);
  EXPECT_EQ(sb.on_gpu, 4u);
  ExpectInvariants();
}

TEST_F(GpuTierTest, GpuCopiesWithAHostCopyAreDroppedNotCopied) {
  Open(8, 4);
  auto a = Chain(4, 1);
  ASSERT_EQ(*Store(a, 0, 4), 4u);
  ASSERT_EQ(Look(a, false).found, 4u);  // Host copies made for a host reader.
  const uint64_t copies = gpu_->copies();
  ASSERT_EQ(*Store(Chain(4, 2), 0, 4), 4u);
  IndexStats s = index_->Stats();
  EXPECT_EQ(s.gpu_drops, 4u);
  EXPECT_EQ(s.gpu_demotions, 0u);
  EXPECT_EQ(gpu_->copies(), copies);
  EXPECT_EQ(Look(a, true).found, 4u);
  ExpectInvariants();
}

TEST_F(GpuTierTest, LeasedGpuBlocksStayAndNewBlocksFallBackToHost) {
  Open(8, 4);
  auto a = Chain(4, 1);
  ASSERT_EQ(*Store(a, 0, 4), 4u);
  Seen seen = Look(a, true, /*lease=*/true);
  ASSERT_EQ(seen.found, 4u);
  ASSERT_NE(seen.lease, 0u);
  auto b = Chain(2, 2);
  auto stored = Store(b, 0, 2);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(*stored, 0u);  // In host memory: the GPU's blocks are all being read.
  IndexStats s = index_->Stats();
  EXPECT_EQ(s.gpu_fallbacks, 1u);
  EXPECT_EQ(s.gpu_blocks, 4u);
  EXPECT_EQ(s.host_blocks, 2u);
  ExpectInvariants();
  ASSERT_TRUE(index_->ReleaseLease(seen.lease).ok());
  // Now there is room to make on the GPU.
  EXPECT_EQ(*Store(Chain(2, 3), 0, 2), 2u);
  ExpectInvariants();
}

TEST_F(GpuTierTest, GpuOnlyLeafIsEvictedWhenHostMemoryCannotTakeIt) {
  Open(/*host_blocks=*/2, /*gpu_blocks=*/2);
  // Host memory full of pinned blocks.
  ASSERT_NO_FATAL_FAILURE(FillHostWithPinnedBlocks(2));
  auto a = Chain(2, 1);
  ASSERT_EQ(*Store(a, 0, 2), 2u);
  // Room for one more on the GPU: a's leaf goes (its parent has a child, so it stays).
  auto b = Chain(1, 2);
  ASSERT_EQ(*Store(b, 0, 1), 1u);
  IndexStats s = index_->Stats();
  EXPECT_EQ(s.evicted_capacity, 1u);
  EXPECT_EQ(s.gpu_demotions, 0u);
  EXPECT_EQ(Look(a, true).found, 1u);
  EXPECT_EQ(Look(b, true).found, 1u);
  ExpectInvariants();
  auto entries = Inspect(a);
  EXPECT_EQ(entries[1].state, InspectState::kEvicted);
}

TEST_F(GpuTierTest, FailedDeviceCopyEndsTheHostReadersPrefixAndKeepsTheBlock) {
  Open(8, 8);
  auto a = Chain(2, 1);
  ASSERT_TRUE(Store(a, 0, 2).ok());
  gpu_->set_fail_copies(true);
  EXPECT_EQ(Look(a, false).found, 0u);
  EXPECT_GE(index_->Stats().gpu_copy_failures, 1u);
  ExpectInvariants();
  // The GPU copy was verified at commit: it stays and is still served on the GPU.
  EXPECT_EQ(Look(a, true).found, 2u);
  gpu_->set_fail_copies(false);
  EXPECT_EQ(Look(a, false).found, 2u);
  ExpectInvariants();
}

TEST_F(GpuTierTest, EvictFreesGpuSpace) {
  Open(8, 8);
  auto a = Chain(3, 1);
  ASSERT_TRUE(Store(a, 0, 3).ok());
  auto r = index_->Evict({Bytes(a[1])});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->evicted, 2u);
  EXPECT_EQ(r->bytes_freed, 2 * kBlock);
  IndexStats s = index_->Stats();
  EXPECT_EQ(s.gpu_blocks, 1u);
  EXPECT_EQ(s.gpu_used_bytes, kBlock);
  ExpectInvariants();
}

TEST_F(GpuTierTest, DropCorruptChecksGpuOnlyBlocksOnTheDevice) {
  Open(8, 8);
  auto a = Chain(3, 1);
  ASSERT_TRUE(Store(a, 0, 3).ok());
  auto r = index_->DropCorrupt({Bytes(a[1])});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->evicted, 0u);  // The bytes match: it stays.
  gpu_->set_fail_checksums(true);
  EXPECT_EQ(index_->DropCorrupt({Bytes(a[1])}).status().code(), absl::StatusCode::kInternal);
  gpu_->set_fail_checksums(false);
  EXPECT_EQ(index_->Stats().gpu_blocks, 3u);
  // A bit flipped in every page of device memory: block 1 goes with its child.
  for (uint64_t off = 0; off < 8 * kBlock; off += kPage) gpu_->device_bytes()[off + 7] ^= 1;
  r = index_->DropCorrupt({Bytes(a[1])});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->evicted, 2u);
  EXPECT_EQ(r->bytes_freed, 2 * kBlock);
  const IndexStats s = index_->Stats();
  EXPECT_EQ(s.gpu_blocks, 1u);
  EXPECT_EQ(s.dropped_corrupt, 1u);
  ExpectInvariants();
}

TEST_F(GpuTierTest, DropCorruptChecksTheGpuCopyOfABlockInBothTiers) {
  Open(8, 8);
  auto a = Chain(2, 1);
  ASSERT_TRUE(Store(a, 0, 2).ok());
  EXPECT_EQ(Look(a, /*accept_gpu=*/false).found, 2u);  // Host copies made; GPU copies stay.
  ASSERT_EQ(index_->Stats().host_blocks, 2u);
  ASSERT_EQ(index_->Stats().gpu_blocks, 2u);
  // Only the GPU copies go bad: a reader sharing the GPU reads those, so they count.
  for (uint64_t off = 0; off < 8 * kBlock; off += kPage) gpu_->device_bytes()[off + 7] ^= 1;
  auto r = index_->DropCorrupt({Bytes(a[1])});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->evicted, 1u);
  EXPECT_EQ(Look(a, /*accept_gpu=*/false).found, 1u);
  ExpectInvariants();
}

TEST_F(GpuTierTest, WriteThroughKeepsNewBlocksInHostMemory) {
  Open(8, 8, /*ssd_blocks=*/16, /*write_through=*/true);
  auto a = Chain(2, 1);
  auto stored = Store(a, 0, 2);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(*stored, 0u);
  EXPECT_EQ(index_->Stats().ssd_blocks, 2u);
  ExpectInvariants();
}

TEST_F(GpuTierTest, GpuBlocksDemotedToHostGoOnToSsd) {
  Open(/*host_blocks=*/2, /*gpu_blocks=*/2, /*ssd_blocks=*/16);
  auto a = Chain(2, 1);
  auto b = Chain(2, 2);
  auto c = Chain(2, 3);
  ASSERT_EQ(*Store(a, 0, 2), 2u);
  ASSERT_EQ(*Store(b, 0, 2), 2u);  // a: GPU -> host.
  ASSERT_EQ(*Store(c, 0, 2), 2u);  // b: GPU -> host, a: host -> SSD.
  IndexStats s = index_->Stats();
  EXPECT_EQ(s.gpu_demotions, 4u);
  EXPECT_EQ(s.demotions, 2u);
  EXPECT_EQ(s.evictions, 0u);
  ExpectInvariants();
  EXPECT_EQ(Look(a, true).found, 2u);  // Promoted from SSD, checksum checked.
  EXPECT_EQ(Look(c, true).on_gpu, 2u);
  ExpectInvariants();
}

// Without an SSD, a host block whose children are only in GPU memory must not wedge the
// host tier: the chain below it goes first, then it does.
TEST_F(GpuTierTest, HostParentsOfGpuOnlyChildrenCanLeave) {
  Open(/*host_blocks=*/2, /*gpu_blocks=*/4);
  auto a = Chain(2, 1);
  auto e = Chain(2, 2);
  ASSERT_EQ(*Store(a, 0, 1, /*gpu=*/false), 0u);
  ASSERT_EQ(*Store(a, 1, 2), 1u);
  ASSERT_EQ(*Store(e, 0, 1, /*gpu=*/false), 0u);
  ASSERT_EQ(*Store(e, 1, 2), 1u);
  ExpectInvariants();
  for (uint32_t i = 0; i < 3; ++i) {
    auto stored = Store(Chain(1, 10 + i), 0, 1, /*gpu=*/false);
    ASSERT_TRUE(stored.ok()) << "host Allocate " << i << ": " << stored.status();
  }
  IndexStats s = index_->Stats();
  EXPECT_EQ(s.gpu_evictions, 2u);  // a1 and e1 went with their parents.
  EXPECT_EQ(Look(a, true).found, 0u);
  ExpectInvariants();
}

// When the GPU tier cannot free enough (its blocks are leased), nothing is evicted for it.
TEST_F(GpuTierTest, GpuRoomThatCannotBeMadeChangesNothing) {
  Open(/*host_blocks=*/2, /*gpu_blocks=*/4);
  ASSERT_NO_FATAL_FAILURE(FillHostWithPinnedBlocks(2));
  auto a = Chain(1, 1);
  ASSERT_EQ(*Store(a, 0, 1), 1u);
  auto l = Chain(3, 2);
  ASSERT_EQ(*Store(l, 0, 3), 3u);
  Seen seen = Look(l, true, /*lease=*/true);
  ASSERT_EQ(seen.found, 3u);
  auto c = Chain(2, 3);
  auto stored = Store(c, 0, 2);
  EXPECT_EQ(stored.status().code(), absl::StatusCode::kResourceExhausted) << stored.status();
  EXPECT_EQ(index_->Stats().evicted_capacity, 0u);
  EXPECT_EQ(Look(a, true).found, 1u);
  ExpectInvariants();
}

// A GPU-only parent that could not go while it had a child is tried again once the child
// has left.
TEST_F(GpuTierTest, GpuParentIsRetriedAfterItsChildLeaves) {
  Open(/*host_blocks=*/2, /*gpu_blocks=*/2);
  ASSERT_NO_FATAL_FAILURE(FillHostWithPinnedBlocks(2));
  auto a = Chain(2, 1);
  ASSERT_EQ(*Store(a, 0, 2), 2u);
  auto stored = Store(Chain(2, 5), 0, 2);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(*stored, 2u);
  EXPECT_EQ(index_->Stats().gpu_evictions, 2u);
  ExpectInvariants();
}

TEST_F(GpuTierTest, FlushToSsdBringsGpuOnlyBlocksDownFirst) {
  Open(/*host_blocks=*/4, /*gpu_blocks=*/4, /*ssd_blocks=*/16);
  auto a = Chain(4, 1);
  ASSERT_EQ(*Store(a, 0, 4), 4u);
  BlockIndex::FlushResult flushed = index_->FlushToSsd();
  EXPECT_EQ(flushed.written, 4u);
  EXPECT_EQ(flushed.left, 0u);
  IndexStats s = index_->Stats();
  EXPECT_EQ(s.ssd_blocks, 4u);
  EXPECT_EQ(s.gpu_demotions, 4u);
  ExpectInvariants();
}

// Threads store, look up (sharing the GPU or not, with and without leases), pin and evict
// over a few chains on small GPU, host and SSD tiers; every block a Lookup hands out has
// the right bytes where the caller reads it, and the invariants hold at the end.
TEST_F(GpuTierTest, ConcurrentChurnKeepsInvariantsAndBytes) {
  for (const uint64_t ssd_blocks : {uint64_t{0}, uint64_t{24}}) {
    SCOPED_TRACE(ssd_blocks);
    Open(/*host_blocks=*/10, /*gpu_blocks=*/6, ssd_blocks);
    std::vector<std::vector<BlockKey>> chains;
    for (uint32_t c = 0; c < 6; ++c) chains.push_back(Chain(5, c + 1));
    std::atomic<int> errors{0};
    auto worker = [&](int seed) {
      std::mt19937 rng(seed);
      for (int op = 0; op < 300; ++op) {
        const auto& chain = chains[rng() % chains.size()];
        switch (rng() % 6) {
          case 0:
          case 1: {
            const size_t from = rng() % 3, to = from + 1 + rng() % 3;
            auto s = Store(chain, from, to, rng() % 4 != 0);
            // Full of leased/pinned blocks, a parent not committed: allowed outcomes.
            if (!s.ok() && s.status().code() != absl::StatusCode::kResourceExhausted &&
                s.status().code() != absl::StatusCode::kFailedPrecondition &&
                s.status().code() != absl::StatusCode::kInvalidArgument) {
              ADD_FAILURE() << s.status();
              ++errors;
            }
            break;
          }
          case 2:
          case 3: {
            Seen seen = Look(chain, rng() % 2 == 0, rng() % 2 == 0);
            if (seen.lease != 0) (void)index_->ReleaseLease(seen.lease);
            break;
          }
          case 4: {
            auto r = index_->SetPinned({Bytes(chain[rng() % 5])}, rng() % 2 == 0);
            (void)r;
            break;
          }
          case 5: {
            auto r = index_->Evict({Bytes(chain[rng() % 5])});
            (void)r;
            break;
          }
        }
      }
    };
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) threads.emplace_back(worker, t + 1);
    for (auto& t : threads) t.join();
    EXPECT_EQ(errors.load(), 0);
    ExpectInvariants();
    // Unpin everything: the whole cache is readable both ways.
    for (const auto& chain : chains) {
      for (const BlockKey& k : chain) (void)index_->SetPinned({Bytes(k)}, false);
      Look(chain, true);
      Look(chain, false);
    }
    ExpectInvariants();
    IndexStats s = index_->Stats();
    EXPECT_GT(s.gpu_demotions + s.gpu_drops, 0u);
  }
}

}  // namespace
}  // namespace tierkv
