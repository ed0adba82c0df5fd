// The block index over a host tier and an SSD tier: demotion, admission, promotion,
// prefix order across tiers, write-through, restart, and what SSD faults turn into.
#include <stdlib.h>

#include <filesystem>
#include <random>
#include <thread>

#include "cache_manager/block_index.h"
#include "cache_manager/index_test_util.h"
#include "core/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/ssd_fault_io.h"

namespace tierkv {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kBlock = 4 * kPage;  // Every test block is 16 KiB.

using testing_util::Bytes;
using testing_util::Payload;

class TieredIndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::current_path() / "tiered-index-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    io_ = std::make_shared<FaultInjectingIo>();
    spec_ = BuiltinTinyModelSpec();
  }
  void TearDown() override {
    index_.reset();
    ssd_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Host tier of `host_blocks` blocks, SSD tier of `ssd_blocks` blocks.
  void Open(uint64_t host_blocks, uint64_t ssd_blocks, uint32_t admit_min_hits = 0,
            bool write_through = false) {
    index_.reset();
    ssd_.reset();
    pool_ = *HostPool::Create({.capacity_bytes = host_blocks * kBlock, .page_bytes = kPage});
    events_ = std::make_unique<EventLog>(4096);
    SsdTierOptions ssd_options;
    ssd_options.dir = dir_;
    ssd_options.capacity_bytes = ssd_blocks * kBlock;
    ssd_options.slab_bytes = 16 * kBlock;
    ssd_options.io = io_;
    recovery_ = SsdRecovery();
    auto ssd = SsdTier::Open(ssd_options, &recovery_);
    ASSERT_TRUE(ssd.ok()) << ssd.status();
    ssd_ = std::move(ssd).value();
    BlockIndexOptions options;
    options.ssd_admit_min_hits = admit_min_hits;
    options.ssd_write_through = write_through;
    index_ = std::make_unique<BlockIndex>(options, pool_.get(), &clock_, events_.get(),
                                          ssd_.get());
    index_->Recover(recovery_);
  }

  std::vector<BlockKey> Chain(size_t n, uint32_t seed = 0) {
    return testing_util::TestChain(spec_, n, seed);
  }

  absl::Status Store(const std::vector<BlockKey>& chain, size_t from, size_t to) {
    std::vector<AllocateBlockSpec> specs;
    for (size_t i = from; i < to; ++i) {
      specs.push_back({Bytes(chain[i]), i == 0 ? "" : Bytes(chain[i - 1]), kBlock, 0});
    }
    TIERKV_ASSIGN_OR_RETURN(AllocateResult a, index_->Allocate(spec_, specs, absl::ZeroDuration()));
    std::vector<std::pair<std::string, uint64_t>> commits;
    for (auto& b : a.blocks) {
      if (b.state != AllocateState::kAllocated) continue;
      std::string data = Payload(b.key, kBlock);
      TIERKV_RETURN_IF_ERROR(index_->Write(a.allocation_id, Bytes(b.key), 0, data));
      commits.emplace_back(Bytes(b.key), BlockChecksum(data.data(), data.size()));
    }
    if (commits.empty()) return absl::OkStatus();
    return index_->Commit(a.allocation_id, commits).status();
  }

  // Found prefix length; with `verify`, reads every found block back and checks its bytes.
  size_t Found(const std::vector<BlockKey>& chain, bool verify = true) {
    std::vector<std::string> keys;
    for (auto& k : chain) keys.push_back(Bytes(k));
    auto r = index_->Lookup(keys, std::nullopt, {}, false, absl::ZeroDuration(),
                            [](const CommittedBlock& b) { EXPECT_TRUE(b.in_host); });
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return 0;
    for (size_t i = 0; verify && i < r->found; ++i) {
      std::string got;
      absl::Status s = index_->Read(
          Bytes(chain[i]), 1 << 20, [](const CommittedBlock&) {},
          [&](uint64_t, std::string_view data) {
            got.append(data);
            return true;
          });
      EXPECT_TRUE(s.ok()) << s;
      EXPECT_TRUE(got == Payload(chain[i], kBlock)) << "block " << i << " bytes differ";
    }
    return r->found;
  }

  std::vector<InspectEntry> Inspect(const std::vector<BlockKey>& chain) {
    std::vector<std::string> keys;
    for (auto& k : chain) keys.push_back(Bytes(k));
    auto r = index_->Inspect(keys, std::nullopt, [](size_t, const CommittedBlock&) {});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : std::vector<InspectEntry>{};
  }

  void ExpectInvariants() {
    absl::Status s = index_->CheckInvariants();
    EXPECT_TRUE(s.ok()) << s;
    IndexStats st = index_->Stats();
    EXPECT_LE(st.used_bytes, st.capacity_bytes);
    EXPECT_LE(st.ssd_used_bytes, st.ssd_capacity_bytes);
  }

  std::string dir_;
  std::shared_ptr<FaultInjectingIo> io_;
  FakeClock clock_;
  std::unique_ptr<HostPool> pool_;
  std::unique_ptr<EventLog> events_;
  std::unique_ptr<SsdTier> ssd_;
  SsdRecovery recovery_;
  std::unique_ptr<BlockIndex> index_;
  ModelSpec spec_;
};

TEST_F(TieredIndexTest, FullHostTierDemotesToSsdAndLookupPromotesBack) {
  Open(/*host_blocks=*/4, /*ssd_blocks=*/32);
  auto a = Chain(4, 1);
  auto b = Chain(4, 2);
  ASSERT_TRUE(Store(a, 0, 4).ok());
  ASSERT_TRUE(Store(b, 0, 4).ok());  // Needs a's room: a goes to SSD.
  IndexStats s = index_->Stats();
  EXPECT_EQ(s.demotions, 4u);
  EXPECT_EQ(s.ssd_blocks, 4u);
  EXPECT_EQ(s.host_blocks, 4u);
  EXPECT_EQ(s.blocks, 8u);
  ExpectInvariants();

  // a comes back (checksum verified) and b goes down in turn; the bytes are the same.
  EXPECT_EQ(Found(a), 4u);
  s = index_->Stats();
  EXPECT_EQ(s.promotions, 4u);
  EXPECT_EQ(Found(b), 4u);
  ExpectInvariants();
  auto entries = Inspect(a);
  ASSERT_EQ(entries.size(), 4u);
  EXPECT_EQ(entries[0].state, InspectState::kFound);
}

TEST_F(TieredIndexTest, HostEvictionTakesChildrenBeforeParents) {
  Open(4, 32);
  auto a = Chain(3, 1);
  ASSERT_TRUE(Store(a, 0, 3).ok());
  auto b = Chain(1, 2);
  ASSERT_TRUE(Store(b, 0, 1).ok());
  // One more block: one host block must go, and it is a's deepest (b is newer).
  auto c = Chain(1, 3);
  ASSERT_TRUE(Store(c, 0, 1).ok());
  auto entries = Inspect(a);
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_THAT(entries[0].detail, HasSubstr("in host memory"));
  EXPECT_THAT(entries[1].detail, HasSubstr("in host memory"));
  EXPECT_THAT(entries[2].detail, HasSubstr("on SSD"));
  ExpectInvariants();
  // The chain is still served whole: the SSD-only tail is promoted.
  EXPECT_EQ(Found(a), 3u);
  ExpectInvariants();
}

TEST_F(TieredIndexTest, ChainLongerThanHostMemoryIsServedAsFarAsItFits) {
  Open(/*host_blocks=*/5, /*ssd_blocks=*/32);
  auto a = Chain(8, 1);
  ASSERT_TRUE(Store(a, 0, 4).ok());
  // The allocation holds a[3] (the chain it extends) in host memory; a[0..2] go to SSD.
  ASSERT_TRUE(Store(a, 4, 8).ok());
  ASSERT_TRUE(Store(Chain(4, 2), 0, 4).ok());  // Now a[4..7] go too, in one batch.
  EXPECT_EQ(index_->Stats().ssd_blocks, 7u);
  ExpectInvariants();
  // Only five blocks fit in host memory: the prefix served is those five, intact.
  EXPECT_EQ(Found(a), 5u);
  IndexStats s = index_->Stats();
  EXPECT_EQ(s.host_blocks, 5u);
  EXPECT_EQ(s.blocks, 12u);
  ExpectInvariants();
}

TEST_F(TieredIndexTest, AKeyRepeatedInOneLookupIsPromotedOnce) {
  Open(4, 32);
  auto a = Chain(1, 1);
  ASSERT_TRUE(Store(a, 0, 1).ok());
  ASSERT_TRUE(Store(Chain(4, 2), 0, 4).ok());  // a goes to SSD.
  ASSERT_EQ(index_->Stats().ssd_blocks, 1u);
  // No chain repeats a key: the prefix ends at the repetition, and nothing leaks.
  auto r = index_->Lookup(std::vector<std::string>{Bytes(a[0]), Bytes(a[0]), Bytes(a[0])},
                          std::nullopt, {}, false, absl::ZeroDuration(),
                          [](const CommittedBlock&) {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GE(r->found, 1u);
  ExpectInvariants();
  std::vector<std::string> all;
  index_->List(0, 100, [&](const CommittedBlock& b) { all.push_back(Bytes(b.key)); });
  for (const std::string& k : all) (void)index_->Evict({k});
  EXPECT_EQ(index_->Stats().used_bytes, 0u) << "host pages leaked";
  ExpectInvariants();
}

TEST_F(TieredIndexTest, AdmissionDropsBlocksNeverUsedAgain) {
  Open(4, 32, /*admit_min_hits=*/1);
  auto used = Chain(2, 1);
  auto once = Chain(2, 2);
  ASSERT_TRUE(Store(used, 0, 2).ok());
  ASSERT_TRUE(Store(once, 0, 2).ok());
  EXPECT_EQ(Found(used, false), 2u);  // A second use: admitted to SSD when demoted.
  auto fresh = Chain(4, 3);
  ASSERT_TRUE(Store(fresh, 0, 4).ok());
  IndexStats s = index_->Stats();
  EXPECT_EQ(s.demotions, 2u);
  EXPECT_EQ(s.admissions_refused, 2u);
  EXPECT_EQ(Found(used), 2u);
  EXPECT_EQ(Found(once), 0u);
  EXPECT_EQ(Inspect(once)[0].state, InspectState::kEvicted);
  ExpectInvariants();
}

TEST_F(TieredIndexTest, PinnedAndLeasedBlocksStayInHostMemory) {
  Open(4, 32);
  auto a = Chain(2, 1);
  auto b = Chain(2, 2);
  ASSERT_TRUE(Store(a, 0, 2).ok());
  ASSERT_TRUE(Store(b, 0, 2).ok());
  ASSERT_TRUE(index_->SetPinned({Bytes(a[1])}, true).ok());  // Keeps a[0] too.
  std::vector<std::string> keys = {Bytes(b[0]), Bytes(b[1])};
  auto lease = index_->Lookup(keys, std::nullopt, {}, true, absl::ZeroDuration(),
                              [](const CommittedBlock&) {});
  ASSERT_TRUE(lease.ok());
  // Room for one more: only a[0] may go (down to SSD; the pinned a[1] keeps it cached).
  auto c = Chain(1, 3);
  ASSERT_TRUE(Store(c, 0, 1).ok());
  auto entries = Inspect(a);
  EXPECT_THAT(entries[0].detail, HasSubstr("on SSD"));
  EXPECT_THAT(entries[1].detail, HasSubstr("in host memory"));
  EXPECT_THAT(Inspect(b)[0].detail, HasSubstr("in host memory"));
  EXPECT_THAT(Inspect(b)[1].detail, HasSubstr("in host memory"));
  // With c leased too, nothing else may leave host memory.
  auto c_lease = index_->Lookup(std::vector<std::string>{Bytes(c[0])}, std::nullopt, {}, true, absl::ZeroDuration(),
                                [](const CommittedBlock&) {});
  ASSERT_TRUE(c_lease.ok());
  auto d = Chain(1, 4);
  auto stored = Store(d, 0, 1);
  EXPECT_EQ(stored.code(), absl::StatusCode::kResourceExhausted) << stored;
  ExpectInvariants();
  ASSERT_TRUE(index_->ReleaseLease(lease->lease_id).ok());
  ASSERT_TRUE(index_->ReleaseLease(c_lease->lease_id).ok());
  ASSERT_TRUE(Store(d, 0, 1).ok());
  EXPECT_THAT(Inspect(a)[1].detail, HasSubstr("in host memory"));
  ExpectInvariants();
}

TEST_F(TieredIndexTest, SsdTierEvictsColdBlocksAndNeverExceedsCapacity) {
  Open(/*host_blocks=*/2, /*ssd_blocks=*/6);
  std::vector<std::vector<BlockKey>> chains;
  for (uint32_t i = 0; i < 12; ++i) {
    chains.push_back(Chain(2, 100 + i));
    ASSERT_TRUE(Store(chains.back(), 0, 2).ok()) << i;
    ExpectInvariants();
  }
  IndexStats s = index_->Stats();
  EXPECT_GT(s.ssd_evictions, 0u);
  EXPECT_LE(s.ssd_blocks, 6u);
  // The newest chains are whole; the oldest are gone, and their chains were cut from the
  // leaves up (never a parent before its child).
  EXPECT_EQ(Found(chains.back()), 2u);
  EXPECT_EQ(Found(chains.front()), 0u);
  for (auto& chain : chains) {
    auto e = Inspect(chain);
    EXPECT_FALSE(e[0].state != InspectState::kFound && e[1].state == InspectState::kFound);
  }
  ExpectInvariants();
}

TEST_F(TieredIndexTest, CorruptSsdCopyIsAMissWithItsReason) {
  Open(2, 32);
  auto a = Chain(2, 1);
  auto b = Chain(2, 2);
  ASSERT_TRUE(Store(a, 0, 2).ok());
  ASSERT_TRUE(Store(b, 0, 2).ok());  // a is on SSD now.
  ASSERT_EQ(index_->Stats().ssd_blocks, 2u);
  io_->CorruptNextReads(2, 100);  // Both blocks: reads run in parallel, in any order.
  EXPECT_EQ(Found(a), 0u);  // a[0] failed verification: nothing of a is handed out.
  io_->Clear();  // a[1] may not have been read.
  IndexStats s = index_->Stats();
  EXPECT_EQ(s.ssd_read_failures, 1u);
  auto entries = Inspect(a);
  EXPECT_EQ(entries[0].state, InspectState::kChecksumFailure);
  EXPECT_THAT(entries[0].detail, HasSubstr("checksum"));
  EXPECT_EQ(entries[1].state, InspectState::kUnreachable);
  ExpectInvariants();
  // Storing the chain again heals it.
  ASSERT_TRUE(Store(a, 0, 1).ok());
  EXPECT_EQ(Found(a), 2u);
  ExpectInvariants();
}

TEST_F(TieredIndexTest, TruncatedSlabIsDetectedOnRead) {
  Open(2, 32);
  auto a = Chain(2, 1);
  ASSERT_TRUE(Store(a, 0, 2).ok());
  ASSERT_TRUE(Store(Chain(2, 2), 0, 2).ok());
  for (auto& f : std::filesystem::recursive_directory_iterator(dir_)) {
    if (f.is_regular_file() && f.path().extension() == ".dat") {
      std::filesystem::resize_file(f.path(), 0);
    }
  }
  EXPECT_EQ(Found(a), 0u);
  EXPECT_EQ(index_->Stats().ssd_read_failures, 1u);
  EXPECT_EQ(Inspect(a)[0].state, InspectState::kChecksumFailure);
  ExpectInvariants();
}

TEST_F(TieredIndexTest, SsdWriteErrorsFallBackToEviction) {
  for (int err : {ENOSPC, EIO}) {
    SCOPED_TRACE(err);
    Open(2, 32);
    auto a = Chain(2, 1 + err);
    ASSERT_TRUE(Store(a, 0, 2).ok());
    io_->FailNext(FaultInjectingIo::Op::kPWrite, 100, err);
    // Demotion fails; the allocation still gets its room by evicting, and nothing breaks.
    auto b = Chain(2, 100 + err);
    absl::Status s = Store(b, 0, 2);
    EXPECT_TRUE(s.ok()) << s;
    io_->Clear();
    IndexStats st = index_->Stats();
    EXPECT_GT(st.ssd_write_failures, 0u);
    EXPECT_EQ(st.ssd_blocks, 0u);
    EXPECT_EQ(Found(b), 2u);
    EXPECT_EQ(Found(a), 0u);
    ExpectInvariants();
    index_.reset();
    ssd_.reset();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
}

TEST_F(TieredIndexTest, SsdReadErrorsAreMisses) {
  for (int err : {EIO, ENOSPC}) {
    SCOPED_TRACE(err);
    Open(2, 32);
    auto a = Chain(2, 10 + err);
    ASSERT_TRUE(Store(a, 0, 2).ok());
    ASSERT_TRUE(Store(Chain(2, 100 + err), 0, 2).ok());
    io_->FailNext(FaultInjectingIo::Op::kPRead, 100, err);
    EXPECT_EQ(Found(a), 0u);
    EXPECT_EQ(index_->Stats().ssd_read_failures, 1u);
    io_->Clear();
    ExpectInvariants();
    index_.reset();
    ssd_.reset();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
}

TEST_F(TieredIndexTest, GetOfACorruptSsdBlockIsDataLoss) {
  Open(2, 32);
  auto a = Chain(1, 1);
  ASSERT_TRUE(Store(a, 0, 1).ok());
  ASSERT_TRUE(Store(Chain(2, 2), 0, 2).ok());
  io_->CorruptNextReads(1, 7);
  std::string got;
  absl::Status s = index_->Read(Bytes(a[0]), 1 << 20, [](const CommittedBlock&) {},
                                [&](uint64_t, std::string_view d) {
                                  got.append(d);
                                  return true;
                                });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_TRUE(got.empty()) << "corrupt bytes were handed out";
  EXPECT_EQ(Inspect(a)[0].state, InspectState::kChecksumFailure);
  ExpectInvariants();
}

TEST_F(TieredIndexTest, WriteThroughSurvivesRestartWithoutRescanning) {
  Open(8, 32, 0, /*write_through=*/true);
  auto a = Chain(3, 1);
  auto b = Chain(2, 2);
  ASSERT_TRUE(Store(a, 0, 3).ok());
  ASSERT_TRUE(Store(b, 0, 2).ok());
  EXPECT_EQ(index_->Stats().ssd_blocks, 5u);
  ASSERT_TRUE(index_->Evict({Bytes(b[1])}).ok());  // Gone from both tiers.
  const uint64_t reads_before = io_->calls(FaultInjectingIo::Op::kPRead);

  Open(8, 32, 0, true);  // A restart on the same directory.
  EXPECT_EQ(io_->calls(FaultInjectingIo::Op::kPRead), reads_before) << "payloads were read";
  EXPECT_EQ(recovery_.records.size(), 4u);
  IndexStats s = index_->Stats();
  EXPECT_EQ(s.blocks, 4u);
  EXPECT_EQ(s.host_blocks, 0u);
  EXPECT_EQ(s.ssd_recovered_blocks, 4u);
  ExpectInvariants();
  EXPECT_EQ(Found(a), 3u);
  EXPECT_EQ(Found(b), 1u);
  EXPECT_EQ(Inspect(b)[1].state, InspectState::kNeverStored);
  ExpectInvariants();
}

TEST_F(TieredIndexTest, FlushOnShutdownKeepsWriteBackBlocksAcrossARestart) {
  Open(/*host_blocks=*/8, /*ssd_blocks=*/32);
  auto a = Chain(3, 1);
  auto b = Chain(3, 2);
  ASSERT_TRUE(Store(a, 0, 3).ok());
  ASSERT_TRUE(Store(b, 0, 3).ok());
  EXPECT_EQ(index_->Stats().ssd_blocks, 0u);  // Write-back: nothing went down yet.
  BlockIndex::FlushResult flushed = index_->FlushToSsd(/*batch=*/2);
  EXPECT_EQ(flushed.written, 6u);
  EXPECT_EQ(flushed.bytes, 6 * kBlock);
  EXPECT_EQ(flushed.left, 0u);
  ExpectInvariants();
  Open(8, 32);  // Restart on the same directory.
  EXPECT_EQ(recovery_.records.size(), 6u);
  EXPECT_EQ(Found(a), 3u);
  EXPECT_EQ(Found(b), 3u);
  ExpectInvariants();
}

TEST_F(TieredIndexTest, FlushKeepsTheHottestWhenTheSsdIsTooSmall) {
  Open(/*host_blocks=*/8, /*ssd_blocks=*/4);
  auto cold = Chain(3, 1);
  auto hot = Chain(3, 2);
  ASSERT_TRUE(Store(cold, 0, 3).ok());
  ASSERT_TRUE(Store(hot, 0, 3).ok());
  EXPECT_EQ(Found(hot), 3u);
  BlockIndex::FlushResult flushed = index_->FlushToSsd();
  EXPECT_EQ(flushed.written, 4u);
  EXPECT_EQ(flushed.left, 2u);
  auto entries = Inspect(hot);
  for (const auto& e : entries) EXPECT_THAT(e.detail, HasSubstr("on SSD"));
  ExpectInvariants();
}

TEST_F(TieredIndexTest, WriteThroughCommitFailsCleanlyWhenSsdFails) {
  Open(8, 32, 0, true);
  auto a = Chain(1, 1);
  io_->FailNext(FaultInjectingIo::Op::kPWrite, 100, ENOSPC);
  auto alloc = index_->Allocate(spec_, {{Bytes(a[0]), "", kBlock, 0}}, absl::ZeroDuration());
  ASSERT_TRUE(alloc.ok());
  std::string data = Payload(a[0], kBlock);
  ASSERT_TRUE(index_->Write(alloc->allocation_id, Bytes(a[0]), 0, data).ok());
  auto commit = index_->Commit(alloc->allocation_id,
                               {{Bytes(a[0]), BlockChecksum(data.data(), data.size())}});
  EXPECT_EQ(commit.status().code(), absl::StatusCode::kResourceExhausted) << commit.status();
  EXPECT_EQ(Found(a), 0u);
  io_->Clear();
  // Still pending: the writer commits again once the disk has room.
  commit = index_->Commit(alloc->allocation_id,
                          {{Bytes(a[0]), BlockChecksum(data.data(), data.size())}});
  ASSERT_TRUE(commit.ok()) << commit.status();
  EXPECT_EQ(Found(a), 1u);
  ExpectInvariants();
}

TEST_F(TieredIndexTest, ConcurrentClientsKeepEveryInvariant) {
  Open(/*host_blocks=*/16, /*ssd_blocks=*/48, /*admit_min_hits=*/0);
  constexpr int kThreads = 4;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 60; ++i) {
        auto chain = Chain(3, rng() % 24);
        absl::Status s = Store(chain, 0, 3);
        if (!s.ok() && s.code() != absl::StatusCode::kResourceExhausted &&
            s.code() != absl::StatusCode::kFailedPrecondition) {
          ADD_FAILURE() << s;
        }
        std::vector<std::string> keys;
        for (auto& k : chain) keys.push_back(Bytes(k));
        auto r = index_->Lookup(keys, std::nullopt, {}, true, absl::ZeroDuration(),
                                [](const CommittedBlock& b) {
                                  if (!b.in_host) ADD_FAILURE() << "emitted off host";
                                });
        if (!r.ok()) continue;
        for (size_t j = 0; j < r->found; ++j) {
          std::string got;
          absl::Status read = index_->Read(keys[j], 1 << 20, [](const CommittedBlock&) {},
                                           [&](uint64_t, std::string_view d) {
                                             got.append(d);
                                             return true;
                                           });
          if (read.ok() && got != Payload(chain[j], kBlock)) ++wrong;
        }
        if (r->lease_id != 0) (void)index_->ReleaseLease(r->lease_id);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  ExpectInvariants();
  IndexStats s = index_->Stats();
  EXPECT_GT(s.demotions, 0u);
  EXPECT_GT(s.promotions, 0u);
}

}  // namespace
}  // namespace tierkv
