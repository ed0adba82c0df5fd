#include "cache_manager/block_index.h"

#include <random>
#include <thread>

#include "core/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tierkv {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kPage = 4096;

std::string Bytes(const BlockKey& k) { return std::string(KeyBytes(k)); }

class BlockIndexTest : public ::testing::Test {
 protected:
  void SetUp() override { Reset(64 * kPage); }

  void Reset(uint64_t capacity,
             BlockIndexOptions::Admission admission = BlockIndexOptions::Admission::kAll) {
    index_.reset();
    pool_ = *HostPool::Create({.capacity_bytes = capacity, .page_bytes = kPage});
    events_ = std::make_unique<EventLog>(1024);
    BlockIndexOptions options;
    options.admission = admission;
    options.write_lease_ttl = absl::Seconds(10);
    options.read_lease_ttl = absl::Seconds(10);
    index_ = std::make_unique<BlockIndex>(options, pool_.get(), &clock_, events_.get());
    spec_ = BuiltinTinyModelSpec();
  }

  // Keys of a chain of `n` blocks; distinct chains per `seed`.
  std::vector<BlockKey> Chain(size_t n, uint32_t seed = 0) {
    std::vector<uint32_t> tokens(n * spec_.block_tokens);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = seed * 1000003 + i;
    return *ComputeBlockKeys(spec_, "", tokens);
  }

  static std::string Payload(const BlockKey& key, uint64_t size) {
    std::string data(size, '\0');
    std::mt19937_64 rng(key[0] | key[1] << 8);
    for (auto& c : data) c = static_cast<char>(rng());
    return data;
  }

  // Allocates, writes and commits blocks [from, to) of `chain`, each `size` bytes.
  absl::Status Store(const std::vector<BlockKey>& chain, size_t from, size_t to,
                     uint64_t size = kPage) {
    std::vector<AllocateBlockSpec> specs;
    for (size_t i = from; i < to; ++i) {
      specs.push_back({Bytes(chain[i]), i == 0 ? "" : Bytes(chain[i - 1]), size, 0});
    }
    TIERKV_ASSIGN_OR_RETURN(AllocateResult a, index_->Allocate(spec_, specs, absl::ZeroDuration()));
    std::vector<std::pair<std::string, uint64_t>> commits;
    for (auto& b : a.blocks) {
      if (b.state != AllocateState::kAllocated) continue;
      std::string data = Payload(b.key, size);
      TIERKV_RETURN_IF_ERROR(index_->Write(a.allocation_id, Bytes(b.key), 0, data));
      commits.emplace_back(Bytes(b.key), BlockChecksum(data.data(), data.size()));
    }
    if (commits.empty()) return absl::OkStatus();
    return index_->Commit(a.allocation_id, commits).status();
  }

  size_t Found(const std::vector<BlockKey>& chain, bool lease = false, uint64_t* lease_id = nullptr) {
    std::vector<std::string> keys;
    for (auto& k : chain) keys.push_back(Bytes(k));
    size_t emitted = 0;
    auto r = index_->Lookup(keys, std::nullopt, {}, lease, absl::ZeroDuration(),
                            [&](const CommittedBlock& b) {
                              // Block i of the answer is the one under key i.
                              EXPECT_EQ(b.key, chain[emitted]) << "block " << emitted;
                              ++emitted;
                            });
    EXPECT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(emitted, r->found);
    if (lease_id) *lease_id = r->lease_id;
    return r->found;
  }

  void ExpectInvariants() {
    absl::Status s = index_->CheckInvariants();
    EXPECT_TRUE(s.ok()) << s;
  }

  FakeClock clock_;
  std::unique_ptr<HostPool> pool_;
  std::unique_ptr<EventLog> events_;
  std::unique_ptr<BlockIndex> index_;
  ModelSpec spec_;
};

// Lookup reads a block's first cache line and updates its second (block_index.h).
TEST(CommittedBlockLayout, LookupFieldsFillTheFirstTwoLines) {
  CommittedBlock b;
  auto at = [&](const void* field) {
    return static_cast<size_t>(static_cast<const char*>(field) - reinterpret_cast<char*>(&b));
  };
  EXPECT_EQ(alignof(CommittedBlock), 64u);
  for (const void* read : {static_cast<const void*>(&b.key), static_cast<const void*>(&b.checksum),
                           static_cast<const void*>(&b.host_offset),
                           static_cast<const void*>(&b.size),
                           static_cast<const void*>(&b.listed),
                           static_cast<const void*>(&b.fingerprint_id),
                           static_cast<const void*>(&b.codec),
                           static_cast<const void*>(&b.in_host),
                           static_cast<const void*>(&b.moving),
                           static_cast<const void*>(&b.in_gpu)}) {
    EXPECT_LT(at(read), 64u);
  }
  EXPECT_EQ(at(&b.key), 0u);  // Lookup compares a guessed slot's first bytes.
  // ...and reads these as one word.
  EXPECT_EQ(at(&b.fingerprint_id), CommittedBlock::kStateWordAt);
  EXPECT_EQ(at(&b.codec), CommittedBlock::kStateWordAt + 4);
  EXPECT_EQ(at(&b.in_host), CommittedBlock::kStateWordAt + 5);
  EXPECT_EQ(at(&b.moving), CommittedBlock::kStateWordAt + 6);
  EXPECT_EQ(at(&b.in_gpu), CommittedBlock::kStateWordAt + 7);
  EXPECT_EQ(sizeof(b.fingerprint_id), 4u);
  EXPECT_EQ(sizeof(b.codec), 1u);
  // The use statistics a Lookup updates (when it writes them into the block) share the
  // second line.
  const std::vector<size_t> updated = CommittedBlock::UseStatOffsetsForTest();
  ASSERT_EQ(updated.size(), 5u);
  EXPECT_EQ(updated[0], 64u);  // touch_seq
  for (size_t offset : updated) {
    EXPECT_GE(offset, 64u);
    EXPECT_LT(offset, 128u);
  }
  EXPECT_GE(at(&b.slab_after), 64u);
  EXPECT_LT(at(&b.slab_after), 128u);
}

// A dead slot reads as zero bytes: a request whose next key is all zero must not be
// answered with the gone block (found through the guess), with or without a lease.
TEST_F(BlockIndexTest, ZeroKeyDoesNotMatchAGoneBlocksSlot) {
  Reset(256 * kPage);
  const auto chain = Chain(40);
  ASSERT_TRUE(Store(chain, 0, 40).ok());  // One Commit: one slab.
  ASSERT_TRUE(index_->Evict({Bytes(chain[20])}).ok());  // Slots 20..39 are dead.
  std::vector<std::string> keys;
  for (size_t i = 0; i < 20; ++i) keys.push_back(Bytes(chain[i]));
  keys.push_back(std::string(32, '\0'));
  // Codec 0 accepted too, so that a zeroed slot's codec does not end the prefix by itself.
  for (bool lease : {false, true}) {
    size_t emitted = 0;
    auto r = index_->Lookup(keys, std::nullopt, {0, kCodecRaw}, lease, absl::ZeroDuration(),
                            [&](const CommittedBlock& b) {
                              EXPECT_EQ(Bytes(b.key), keys[emitted]) << "block " << emitted;
                              ++emitted;
                            });
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->found, 20u);
    EXPECT_EQ(emitted, 20u);
    if (lease) {
      EXPECT_TRUE(index_->ReleaseLease(r->lease_id).ok());
    }
  }
  ExpectInvariants();
}

// Lookup expects a chain's next block in the next slot of its Commit's slab and checks the
// guess by key: gaps, slab ends, chains continued by later commits, shared prefixes and
// commits out of chain order all still give the exact prefix.
TEST_F(BlockIndexTest, LookupFollowsChainsAcrossSlabsAndGaps) {
  Reset(2048 * kPage);
  const auto chain = Chain(700);
  auto prefix = [&](size_t n) { return std::vector<BlockKey>(chain.begin(), chain.begin() + n); };
  ASSERT_TRUE(Store(chain, 0, 600).ok());  // One Commit: slabs of 256, 256 and 88 blocks.
  EXPECT_EQ(Found(prefix(600)), 600u);
  EXPECT_EQ(Found(chain), 600u);
  // A gap: blocks 300.. gone; their slots read as dead.
  ASSERT_TRUE(index_->Evict({Bytes(chain[300])}).ok());
  EXPECT_EQ(Found(chain), 300u);
  // The chain stored again from 300 in a new Commit (new slabs): the walk leaves the old
  // slab where its next slot is dead and finds the new one by the table.
  ASSERT_TRUE(Store(chain, 300, 700).ok());
  EXPECT_EQ(Found(chain), 700u);
  // Another chain sharing the first 100 blocks, then its own: the guess in the first slab
  // holds the other chain's block 100.
  // Keys of a chain depend on every token before them: build it from tokens.
  std::vector<uint32_t> tokens(500 * spec_.block_tokens);
  for (size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = i < 100 * spec_.block_tokens ? static_cast<uint32_t>(i) : 7000000 + i;
  }
  const auto forked = *ComputeBlockKeys(spec_, "", tokens);
  ASSERT_EQ(forked[99], chain[99]);
  ASSERT_NE(forked[100], chain[100]);
  ASSERT_TRUE(Store(forked, 100, 500).ok());
  EXPECT_EQ(Found(forked), 500u);
  EXPECT_EQ(Found(chain), 700u);
  // A chain committed in reverse order: its slab holds it backwards; every guess misses and
  // the table answers.
  const auto reversed = Chain(300, 9);
  std::vector<AllocateBlockSpec> specs;
  for (size_t i = 0; i < reversed.size(); ++i) {
    specs.push_back({Bytes(reversed[i]), i == 0 ? "" : Bytes(reversed[i - 1]), kPage, 0});
  }
  auto a = index_->Allocate(spec_, specs, absl::ZeroDuration());
  ASSERT_TRUE(a.ok()) << a.status();
  std::vector<std::pair<std::string, uint64_t>> commits;
  for (auto it = a->blocks.rbegin(); it != a->blocks.rend(); ++it) {
    std::string data = Payload(it->key, kPage);
    ASSERT_TRUE(index_->Write(a->allocation_id, Bytes(it->key), 0, data).ok());
    commits.emplace_back(Bytes(it->key), BlockChecksum(data.data(), data.size()));
  }
  ASSERT_TRUE(index_->Commit(a->allocation_id, commits).ok());
  EXPECT_EQ(Found(reversed), 300u);
  // Blocks gone from the middle of a slab's run (the forked chain's tail from 250).
  ASSERT_TRUE(index_->Evict({Bytes(forked[250])}).ok());
  EXPECT_EQ(Found(forked), 250u);
  EXPECT_EQ(Found(chain), 700u);
  ExpectInvariants();
}

// A Lookup without a lease answers blocks in slab runs in a loop of its own (AnswerRun);
// with a lease every block takes the general way; with a record sink (the service's way)
// the loop leaves the blocks' use statistics pending in their slab. All three must leave
// every block as the others do: the same answers, recency, counters and admission uses,
// through slab ends, gaps, forks, repeated and shorter prefixes, leaves (which move in
// eviction order), blocks of another fingerprint and an eviction in the middle.
TEST_F(BlockIndexTest, RunLoopUpdatesBlocksAsTheGeneralWayDoes) {
  struct Seen {
    BlockKey key;
    uint64_t hits, touch_seq;
    absl::Duration last_access;  // Since the run began (the clock goes on between runs).
    uint32_t uses, uses_epoch;
    bool listed, no_demote;
    bool operator==(const Seen&) const = default;
  };
  enum class Way { kLease, kRunLoop, kSink };
  auto run = [&](Way way) {
    Reset(2048 * kPage, BlockIndexOptions::Admission::kAuto);
    const absl::Time start = clock_.Now();
    const auto chain = Chain(700);
    const auto other = Chain(300, 5);
    EXPECT_TRUE(Store(chain, 0, 600).ok());  // Slabs of 256, 256 and 88.
    EXPECT_TRUE(Store(chain, 600, 700).ok());
    EXPECT_TRUE(Store(other, 0, 300).ok());
    std::vector<uint32_t> tokens(500 * spec_.block_tokens);
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i] = i < 100 * spec_.block_tokens ? static_cast<uint32_t>(i) : 7000000 + i;
    }
    const auto forked = *ComputeBlockKeys(spec_, "", tokens);
    EXPECT_TRUE(Store(forked, 100, 500).ok());
    EXPECT_TRUE(index_->Evict({Bytes(forked[250])}).ok());  // A gap inside a slab's run.
    std::vector<size_t> found;
    // What each Lookup hands the admission controller.
    std::vector<std::vector<std::pair<size_t, uint32_t>>> sampled;
    std::vector<char> records(32 * 1000);
    auto lookup = [&](const std::vector<BlockKey>& keys, size_t n,
                      const std::optional<Digest>& fingerprint = std::nullopt) {
      std::string packed;
      for (size_t i = 0; i < n; ++i) packed += Bytes(keys[i]);
      size_t emitted = 0;
      LookupRecordSink sink{.records = records.data(), .capacity = 1000, .count = 0,
                            .host_tier = 2};
      auto r = index_->LookupPackedBatches(
          packed, fingerprint, {}, way == Way::kLease, absl::ZeroDuration(),
          [&](BlockIndex::BlockBatch blocks) {
            for (const CommittedBlock* b : blocks) {
              if (way != Way::kSink) {
                EXPECT_EQ(b->key, keys[emitted]);
              }
              ++emitted;
            }
          },
          /*accept_gpu=*/false, way == Way::kSink ? &sink : nullptr);
      EXPECT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(emitted + sink.count, r->found);
      found.push_back(r->found);
      sampled.push_back(BlockIndex::SampledOfLastLookupForTest());
      if (r->lease_id != 0) {
        EXPECT_TRUE(index_->ReleaseLease(r->lease_id).ok());
      }
      clock_.Advance(absl::Milliseconds(7));
    };
    for (int round = 0; round < 3; ++round) {
      lookup(chain, 700);
      lookup(chain, 700);  // The same runs again.
      lookup(chain, 17 + 100 * round);  // Ends inside a run.
      lookup(forked, 500);
      lookup(other, 300);
      lookup(chain, 700, ModelFingerprint(spec_));
      lookup(chain, 700, Digest{});  // Another model's: nothing.
      if (round == 1) {
        // Leaves in the middle of pending runs move into eviction order.
        EXPECT_TRUE(index_->Evict({Bytes(chain[400]), Bytes(other[150])}).ok());
      }
    }
    std::vector<Seen> blocks;
    index_->List(0, 10000, [&](const CommittedBlock& b) {
      blocks.push_back({b.key, b.hits(), b.touch_seq(), b.last_access() - start, b.uses().count,
                        b.uses().aged_epoch(), b.listed, b.no_demote()});
    });
    const IndexStats stats = index_->Stats();
    ExpectInvariants();
    return std::make_tuple(found, blocks, stats.hits, stats.misses, sampled);
  };
  const auto with_lease = run(Way::kLease);
  for (Way way : {Way::kRunLoop, Way::kSink}) {
    const auto got = run(way);
    const char* name = way == Way::kRunLoop ? "run loop" : "sink";
    EXPECT_EQ(std::get<0>(got), std::get<0>(with_lease)) << name;
    // 700 + 300 + 400 blocks, less the forked chain's 250 from the gap on, and the
    // evicted blocks with their descendants (300 + 150).
    ASSERT_EQ(std::get<1>(got).size(), 700u) << name;
    ASSERT_EQ(std::get<1>(with_lease).size(), 700u);
    for (size_t i = 0; i < 700; ++i) {
      const Seen& a = std::get<1>(got)[i];
      const Seen& b = std::get<1>(with_lease)[i];
      EXPECT_TRUE(a == b) << name << ", block " << i << ": hits " << a.hits << "/" << b.hits
                          << ", touch_seq " << a.touch_seq << "/" << b.touch_seq << ", uses "
                          << a.uses << "/" << b.uses << " epoch " << a.uses_epoch << "/"
                          << b.uses_epoch << ", listed " << a.listed << "/" << b.listed
                          << ", last_access " << a.last_access << "/" << b.last_access;
      if (!(a == b)) break;
    }
    EXPECT_EQ(std::get<2>(got), std::get<2>(with_lease)) << name;
    EXPECT_EQ(std::get<3>(got), std::get<3>(with_lease)) << name;
    EXPECT_EQ(std::get<4>(got), std::get<4>(with_lease)) << name;
  }
  size_t sampled_keys = 0;
  for (const auto& s : std::get<4>(with_lease)) sampled_keys += s.size();
  EXPECT_GT(sampled_keys, 50u);  // The comparison above has something to compare.
}

TEST_F(BlockIndexTest, UncommittedBlocksAreInvisibleUntilCommit) {
  auto chain = Chain(2);
  auto a = index_->Allocate(spec_, {{Bytes(chain[0]), "", 100, 0}}, absl::ZeroDuration());
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(Found(chain), 0u);
  std::string data = Payload(chain[0], 100);
  ASSERT_TRUE(index_->Write(a->allocation_id, Bytes(chain[0]), 0, data).ok());
  EXPECT_EQ(Found(chain), 0u);
  ASSERT_TRUE(index_->Commit(a->allocation_id, {{Bytes(chain[0]), BlockChecksum(data.data(), 100)}}).ok());
  EXPECT_EQ(Found(chain), 1u);
  ExpectInvariants();
}

TEST_F(BlockIndexTest, LookupStopsAtFirstMissingBlock) {
  auto chain = Chain(5);
  ASSERT_TRUE(Store(chain, 0, 2).ok());
  ASSERT_TRUE(Store(chain, 3, 5).ok());  // Blocks 3 and 4 exist, block 2 does not.
  EXPECT_EQ(Found(chain), 2u);
  auto s = index_->Stats();
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.misses, 3u);
}

TEST_F(BlockIndexTest, LookupTreatsOtherFingerprintOrCodecAsMiss) {
  auto chain = Chain(1);
  ASSERT_TRUE(Store(chain, 0, 1).ok());
  Digest other{};
  other[0] = 1;
  std::vector<std::string> keys = {Bytes(chain[0])};
  auto noop = [](const CommittedBlock&) {};
  EXPECT_EQ(index_->Lookup(keys, other, {}, false, absl::ZeroDuration(), noop)->found, 0u);
  EXPECT_EQ(index_->Lookup(keys, ModelFingerprint(spec_), {}, false, absl::ZeroDuration(), noop)->found, 1u);
  EXPECT_EQ(index_->Lookup(keys, std::nullopt, {3}, false, absl::ZeroDuration(), noop)->found, 0u);
}

TEST_F(BlockIndexTest, MalformedInputIsInvalidArgumentAndChangesNothing) {
  auto chain = Chain(2);
  auto noop = [](const CommittedBlock&) {};
  EXPECT_EQ(index_->Lookup(std::vector<std::string>{"short"}, std::nullopt, {}, false, absl::ZeroDuration(), noop).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(index_->Lookup(std::vector<std::string>{Bytes(chain[0])}, std::nullopt, {}, true, absl::Hours(100), noop).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A bad entry anywhere in an Allocate reserves nothing.
  auto bad = index_->Allocate(spec_, {{Bytes(chain[0]), "", 100, 0}, {"xx", "", 100, 0}},
                              absl::ZeroDuration());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(index_->Allocate(spec_, {{Bytes(chain[0]), "", 0, 0}}, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(index_->Allocate(spec_, {{Bytes(chain[0]), "", 10, 99}}, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(index_->Allocate(spec_, {{Bytes(chain[0]), "", 10, 0}, {Bytes(chain[0]), "", 10, 0}},
                             absl::ZeroDuration()).status().code(),
            absl::StatusCode::kInvalidArgument);
  ModelSpec bad_spec = spec_;
  bad_spec.block_tokens = 12;
  EXPECT_EQ(index_->Allocate(bad_spec, {{Bytes(chain[0]), "", 10, 0}}, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool_->used_bytes(), 0u);
  EXPECT_EQ(index_->Stats().pending_allocations, 0u);
}

TEST_F(BlockIndexTest, UnknownAllocationIsNotFound) {
  auto chain = Chain(1);
  EXPECT_EQ(index_->Commit(77, {{Bytes(chain[0]), 1}}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(index_->Write(77, Bytes(chain[0]), 0, "x").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(index_->Abort(77, {}).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(BlockIndexTest, CommitWithWrongChecksumIsDataLossAndLeavesBlockPending) {
  auto chain = Chain(1);
  auto a = index_->Allocate(spec_, {{Bytes(chain[0]), "", 100, 0}}, absl::ZeroDuration());
  std::string data = Payload(chain[0], 100);
  ASSERT_TRUE(index_->Write(a->allocation_id, Bytes(chain[0]), 0, data).ok());
  const uint64_t sum = BlockChecksum(data.data(), data.size());
  auto bad = index_->Commit(a->allocation_id, {{Bytes(chain[0]), sum ^ 1}});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("nothing was committed"));
  EXPECT_EQ(Found(chain), 0u);
  EXPECT_EQ(index_->Stats().checksum_failures, 1u);
  // The writer can still commit the right bytes.
  EXPECT_TRUE(index_->Commit(a->allocation_id, {{Bytes(chain[0]), sum}}).ok());
  EXPECT_EQ(Found(chain), 1u);
  ExpectInvariants();
}

TEST_F(BlockIndexTest, WriteBeyondDeclaredSizeIsOutOfRangeAndWritesNothing) {
  auto chain = Chain(1);
  auto a = index_->Allocate(spec_, {{Bytes(chain[0]), "", 100, 0}}, absl::ZeroDuration());
  std::string zeros(100, '\0');
  ASSERT_TRUE(index_->Write(a->allocation_id, Bytes(chain[0]), 0, zeros).ok());
  EXPECT_EQ(index_->Write(a->allocation_id, Bytes(chain[0]), 90, std::string(11, 'x')).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(index_->Write(a->allocation_id, Bytes(chain[0]), 101, "").code(),
            absl::StatusCode::kOutOfRange);
  // Nothing of the refused write landed: the zeros still commit.
  EXPECT_TRUE(index_->Commit(a->allocation_id, {{Bytes(chain[0]), BlockChecksum(zeros.data(), 100)}}).ok());
}

TEST_F(BlockIndexTest, ExpiredWriteLeaseIsReclaimedAndReportedAsExpired) {
  auto chain = Chain(1);
  auto a = index_->Allocate(spec_, {{Bytes(chain[0]), "", kPage, 0}}, absl::Seconds(2));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(pool_->used_bytes(), kPage);
  clock_.Advance(absl::Seconds(3));
  EXPECT_EQ(index_->ExpireLeases(), 1u);
  EXPECT_EQ(pool_->used_bytes(), 0u);
  auto c = index_->Commit(a->allocation_id, {{Bytes(chain[0]), 0}});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("expired"));
  EXPECT_EQ(index_->Stats().expired_allocations, 1u);
  ExpectInvariants();
}

TEST_F(BlockIndexTest, ExpiryIsEnforcedEvenBeforeTheReaperRuns) {
  auto chain = Chain(1);
  auto a = index_->Allocate(spec_, {{Bytes(chain[0]), "", 10, 0}}, absl::Seconds(1));
  clock_.Advance(absl::Seconds(2));
  EXPECT_EQ(index_->Write(a->allocation_id, Bytes(chain[0]), 0, "x").code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool_->used_bytes(), 0u);
}

TEST_F(BlockIndexTest, SecondWriterSeesInProgressAndCommitted) {
  auto chain = Chain(2);
  auto a = index_->Allocate(spec_, {{Bytes(chain[0]), "", 10, 0}}, absl::ZeroDuration());
  auto b = index_->Allocate(spec_, {{Bytes(chain[0]), "", 10, 0}, {Bytes(chain[1]), Bytes(chain[0]), 10, 0}},
                            absl::ZeroDuration());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->blocks[0].state, AllocateState::kInProgress);
  EXPECT_EQ(b->blocks[1].state, AllocateState::kAllocated);
  ASSERT_TRUE(index_->Abort(a->allocation_id, {}).ok());
  ASSERT_TRUE(index_->Abort(b->allocation_id, {}).ok());
  ASSERT_TRUE(Store(chain, 0, 1).ok());
  auto c = index_->Allocate(spec_, {{Bytes(chain[0]), "", 10, 0}}, absl::ZeroDuration());
  EXPECT_EQ(c->blocks[0].state, AllocateState::kAlreadyCommitted);
  EXPECT_EQ(c->allocation_id, 0u);
  ExpectInvariants();
}

TEST_F(BlockIndexTest, EvictionTakesLeastRecentlyUsedLeavesFirst) {
  Reset(8 * kPage);
  auto a = Chain(4, 1);
  auto b = Chain(4, 2);
  ASSERT_TRUE(Store(a, 0, 4).ok());
  ASSERT_TRUE(Store(b, 0, 4).ok());
  EXPECT_EQ(Found(a), 4u);  // a is now more recent than b.
  auto c = Chain(2, 3);
  ASSERT_TRUE(Store(c, 0, 2).ok());
  // Two blocks had to go: b's deepest two, never a parent before its child.
  EXPECT_EQ(Found(a), 4u);
  EXPECT_EQ(Found(b), 2u);
  EXPECT_EQ(index_->Stats().evictions, 2u);
  ExpectInvariants();
}

TEST_F(BlockIndexTest, PrefixOrderHoldsEvenWhenTheParentIsColder) {
  Reset(4 * kPage);
  auto a = Chain(3, 1);
  ASSERT_TRUE(Store(a, 0, 1).ok());
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(Store(a, 1, 3).ok());  // Children committed (touched) after their parent.
  auto other = Chain(1, 9);
  ASSERT_TRUE(Store(other, 0, 1).ok());
  auto more = Chain(1, 10);
  ASSERT_TRUE(Store(more, 0, 1).ok());  // One eviction: a leaf, not a's root.
  EXPECT_EQ(Found(a), 2u);
  ExpectInvariants();
}

TEST_F(BlockIndexTest, LeasedAndPinnedBlocksAreNeverEvicted) {
  Reset(4 * kPage);
  auto a = Chain(2, 1);
  auto b = Chain(2, 2);
  ASSERT_TRUE(Store(a, 0, 2).ok());
  ASSERT_TRUE(Store(b, 0, 2).ok());
  uint64_t lease = 0;
  EXPECT_EQ(Found(a, true, &lease), 2u);
  ASSERT_NE(lease, 0u);
  ASSERT_TRUE(index_->SetPinned({Bytes(b[1])}, true).ok());
  auto c = Chain(1, 3);
  auto s = Store(c, 0, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(Found(a), 2u);
  EXPECT_EQ(Found(b), 2u);  // Nothing was evicted by the failed attempt.
  EXPECT_EQ(index_->Stats().allocation_failures, 1u);
  ASSERT_TRUE(index_->ReleaseLease(lease).ok());
  EXPECT_EQ(index_->ReleaseLease(lease).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(Store(c, 0, 1).ok());
  EXPECT_EQ(Found(a), 1u);  // a's leaf went; pinned b stays whole.
  EXPECT_EQ(Found(b), 2u);
  ExpectInvariants();
}

TEST_F(BlockIndexTest, EvictionSparesTheChainANewBlockExtends) {
  Reset(4 * kPage);
  auto a = Chain(6, 1);
  ASSERT_TRUE(Store(a, 0, 4).ok());  // Full. a[3] is the only leaf and the coldest block.
  // Extending a by two blocks needs two pages, but every cached block is an ancestor of the
  // new ones: nothing may be evicted for them.
  auto s = Store(a, 4, 6);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(Found(a), 4u);
  // With an unrelated cold chain present, that chain goes instead.
  Reset(6 * kPage);
  auto other = Chain(2, 2);
  ASSERT_TRUE(Store(other, 0, 2).ok());
  ASSERT_TRUE(Store(a, 0, 4).ok());
  ASSERT_TRUE(Store(a, 4, 6).ok());
  EXPECT_EQ(Found(a), 6u);
  EXPECT_EQ(Found(other), 0u);
  ExpectInvariants();
}

TEST_F(BlockIndexTest, AllocationHoldsTheParentItExtendsUntilItEnds) {
  auto a = Chain(3, 1);
  ASSERT_TRUE(Store(a, 0, 2).ok());
  auto pending = index_->Allocate(spec_, {{Bytes(a[2]), Bytes(a[1]), 10, 0}}, absl::Seconds(5));
  ASSERT_TRUE(pending.ok());
  EXPECT_EQ(index_->Evict({Bytes(a[1])}).status().code(), absl::StatusCode::kFailedPrecondition);
  ExpectInvariants();
  ASSERT_TRUE(index_->Abort(pending->allocation_id, {}).ok());
  EXPECT_TRUE(index_->Evict({Bytes(a[1])}).ok());
  // Expiry releases the hold too.
  ASSERT_TRUE(Store(a, 1, 2).ok());
  ASSERT_TRUE(index_->Allocate(spec_, {{Bytes(a[2]), Bytes(a[1]), 10, 0}}, absl::Seconds(1)).ok());
  clock_.Advance(absl::Seconds(2));
  index_->ExpireLeases();
  EXPECT_TRUE(index_->Evict({Bytes(a[1])}).ok());
  ExpectInvariants();
}

TEST_F(BlockIndexTest, ReadLeaseExpires) {
  Reset(2 * kPage);
  auto a = Chain(2, 1);
  ASSERT_TRUE(Store(a, 0, 2).ok());
  uint64_t lease = 0;
  Found(a, true, &lease);
  clock_.Advance(absl::Seconds(11));
  EXPECT_EQ(index_->ExpireLeases(), 1u);
  EXPECT_EQ(index_->ReleaseLease(lease).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(Store(Chain(1, 5), 0, 1).ok());
  ExpectInvariants();
}

TEST_F(BlockIndexTest, BlockLargerThanTheTierIsResourceExhausted) {
  auto chain = Chain(1);
  auto r = index_->Allocate(spec_, {{Bytes(chain[0]), "", 65 * kPage, 0}}, absl::ZeroDuration());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(BlockIndexTest, EvictRemovesDescendantsAndRefusesProtectedOnes) {
  auto a = Chain(4);
  ASSERT_TRUE(Store(a, 0, 4).ok());
  ASSERT_TRUE(index_->SetPinned({Bytes(a[3])}, true).ok());
  auto r = index_->Evict({Bytes(a[1])});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Found(a), 4u);
  ASSERT_TRUE(index_->SetPinned({Bytes(a[3])}, false).ok());
  r = index_->Evict({Bytes(a[1])});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->evicted, 3u);
  EXPECT_EQ(Found(a), 1u);
  EXPECT_EQ(index_->Evict({Bytes(a[2])}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(index_->SetPinned({Bytes(a[2])}, true).status().code(), absl::StatusCode::kNotFound);
  ExpectInvariants();
}

TEST_F(BlockIndexTest, ChildCommittedBeforeParentIsLinkedWhenParentArrives) {
  Reset(3 * kPage);
  auto a = Chain(2);
  ASSERT_TRUE(Store(a, 1, 2).ok());
  ASSERT_TRUE(Store(a, 0, 1).ok());
  ExpectInvariants();
  EXPECT_EQ(Found(a), 2u);
  ASSERT_TRUE(Store(Chain(2, 7), 0, 2).ok());  // Needs one eviction: a[1], never a[0] first.
  EXPECT_EQ(Found(a), 1u);
  ExpectInvariants();
}

TEST_F(BlockIndexTest, InspectExplainsEveryKindOfMiss) {
  auto chain = Chain(6);
  ASSERT_TRUE(Store(chain, 0, 3).ok());
  ASSERT_TRUE(index_->Evict({Bytes(chain[1])}).ok());  // Evicts 1 and 2.
  ASSERT_TRUE(Store(chain, 2, 3).ok());                // 2 again: unreachable behind 1.
  auto pending = index_->Allocate(spec_, {{Bytes(chain[3]), Bytes(chain[2]), 10, 0}},
                                  absl::ZeroDuration());
  std::vector<std::string> keys;
  for (auto& k : chain) keys.push_back(Bytes(k));
  auto r = index_->Inspect(keys, std::nullopt, [](size_t, const CommittedBlock&) {});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].state, InspectState::kFound);
  EXPECT_EQ((*r)[1].state, InspectState::kEvicted);
  EXPECT_THAT((*r)[1].detail, HasSubstr("requested"));
  EXPECT_EQ((*r)[2].state, InspectState::kUnreachable);
  EXPECT_EQ((*r)[3].state, InspectState::kUncommitted);
  EXPECT_EQ((*r)[4].state, InspectState::kNeverStored);
}

TEST_F(BlockIndexTest, InspectRecognisesTokensCachedUnderAnotherModel) {
  std::vector<uint32_t> tokens(64);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = 7 * i;
  ModelSpec other = spec_;
  other.weights_digest = "seed:999";
  auto other_keys = *ComputeBlockKeys(other, "", tokens);
  std::swap(spec_, other);
  ASSERT_TRUE(Store(other_keys, 0, 2).ok());
  std::swap(spec_, other);
  auto mine = *ComputeBlockKeys(spec_, "", tokens);
  std::vector<std::string> keys;
  for (auto& k : mine) keys.push_back(Bytes(k));
  auto r = index_->Inspect(keys, BlockIndex::TokenQuery{spec_, "", tokens},
                           [](size_t, const CommittedBlock&) {});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].state, InspectState::kFingerprintMismatch);
  EXPECT_THAT((*r)[0].detail, HasSubstr("seed:999"));
  EXPECT_EQ((*r)[2].state, InspectState::kNeverStored);
}

TEST_F(BlockIndexTest, DropCorruptChecksTheBytesAndDropsOnlyWrongBlocks) {
  auto a = Chain(4);
  ASSERT_TRUE(Store(a, 0, 4).ok());
  auto space_of = [&](const BlockKey& key) {
    PoolAllocation space;
    const std::vector<std::string> keys = {Bytes(key)};
    auto r = index_->Lookup(keys, std::nullopt, {}, false, absl::ZeroDuration(),
                            [&](const CommittedBlock& b) { space = b.space; });
    EXPECT_TRUE(r.ok() && r->found == 1);
    return space;
  };
  // Intact bytes: the reader's copy went wrong, not the block. Nothing goes.
  auto r = index_->DropCorrupt({Bytes(a[1])});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->evicted, 0u);
  EXPECT_EQ(Found(a), 4u);
  // A bit flipped in block 1's host copy: it goes with its descendants, pinned or not, and
  // counts as a checksum drop (the descendants as requested evictions).
  const PoolAllocation space = space_of(a[1]);
  pool_->base()[space.extents[0].offset + 100] ^= 0x10;
  ASSERT_TRUE(index_->SetPinned({Bytes(a[1]), Bytes(a[3])}, true).ok());
  uint64_t lease = 0;
  EXPECT_EQ(Found(a, /*lease=*/true, &lease), 4u);
  EXPECT_EQ(index_->DropCorrupt({Bytes(a[1])}).status().code(),
            absl::StatusCode::kFailedPrecondition);  // A reader holds it.
  EXPECT_EQ(Found(a), 4u);
  ASSERT_TRUE(index_->ReleaseLease(lease).ok());
  const IndexStats before = index_->Stats();
  r = index_->DropCorrupt({Bytes(a[1])});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->evicted, 3u);
  EXPECT_EQ(Found(a), 1u);
  const IndexStats after = index_->Stats();
  EXPECT_EQ(after.dropped_corrupt, before.dropped_corrupt + 1);
  EXPECT_EQ(after.evicted_requested, before.evicted_requested + 2);
  EXPECT_EQ(index_->DropCorrupt({Bytes(a[2])}).status().code(), absl::StatusCode::kNotFound);
  ExpectInvariants();
  // The chain can be stored again over the dropped blocks.
  ASSERT_TRUE(Store(a, 1, 4).ok());
  EXPECT_EQ(Found(a), 4u);
  ExpectInvariants();
}

TEST_F(BlockIndexTest, ReadCopiesBytesAndChecksumMatches) {
  auto chain = Chain(1);
  ASSERT_TRUE(Store(chain, 0, 1, 10000).ok());
  std::string got;
  uint64_t sum = 0;
  ASSERT_TRUE(index_->Read(Bytes(chain[0]), 3000,
                           [&](const CommittedBlock& b) { sum = b.checksum; },
                           [&](uint64_t off, std::string_view d) {
                             EXPECT_EQ(off, got.size());
                             got.append(d);
                             return true;
                           }).ok());
  EXPECT_EQ(got, Payload(chain[0], 10000));
  EXPECT_EQ(sum, BlockChecksum(got.data(), got.size()));
}

TEST_F(BlockIndexTest, EventsFollowStoresAndEvictions) {
  auto chain = Chain(2);
  ASSERT_TRUE(Store(chain, 0, 2).ok());
  ASSERT_TRUE(index_->Evict({Bytes(chain[0])}).ok());
  auto r = events_->Read(1, 10);
  ASSERT_EQ(r.events.size(), 4u);
  EXPECT_EQ(r.events[0].type, EventType::kStored);
  EXPECT_EQ(r.events[2].type, EventType::kEvicted);
  EXPECT_EQ(r.events[2].key, chain[1]);  // Deepest first.
  EXPECT_EQ(r.events[3].reason, "requested");
}

TEST_F(BlockIndexTest, DrainingRefusesAllocations) {
  index_->SetDraining(true);
  auto chain = Chain(1);
  EXPECT_EQ(index_->Allocate(spec_, {{Bytes(chain[0]), "", 10, 0}}, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kUnavailable);
  index_->SetDraining(false);
  EXPECT_TRUE(Store(chain, 0, 1).ok());
}

// Writes, commits, aborts and lease expiry racing on the same blocks: whatever wins, no
// call crashes, nothing half-written becomes visible, and the pool accounting stays exact.
TEST_F(BlockIndexTest, WriteCommitAbortAndExpiryRaceSafely) {
  Reset(256 * kPage);
  std::atomic<bool> stop{false};
  std::atomic<int> committed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(100 + t);
      while (!stop) {
        auto chain = Chain(1, rng() % 1000000);
        auto a = index_->Allocate(spec_, {{Bytes(chain[0]), "", 3 * kPage, 0}}, absl::Seconds(1));
        if (!a.ok() || a->allocation_id == 0) continue;
        const uint64_t id = a->allocation_id;
        std::string data = Payload(chain[0], 3 * kPage);
        const uint64_t sum = BlockChecksum(data.data(), data.size());
        std::thread writer([&] {
          for (int i = 0; i < 3; ++i) {
            (void)index_->Write(id, Bytes(chain[0]), i * kPage,
                                std::string_view(data).substr(i * kPage, kPage));
          }
        });
        std::thread aborter([&] {
          if (rng() % 3 == 0) (void)index_->Abort(id, {});
        });
        absl::StatusOr<uint32_t> c;
        for (int i = 0; i < 5; ++i) {
          c = index_->Commit(id, {{Bytes(chain[0]), sum}});
          if (c.ok()) break;
        }
        writer.join();
        aborter.join();
        if (c.ok()) {
          ++committed;
          // Visible means intact.
          std::string got;
          ASSERT_TRUE(index_->Read(Bytes(chain[0]), kPage, [](const CommittedBlock&) {},
                                   [&](uint64_t, std::string_view d) {
                                     got.append(d);
                                     return true;
                                   }).ok());
          EXPECT_EQ(got, data);
        } else {
          (void)index_->Abort(id, {});
        }
      }
    });
  }
  for (int i = 0; i < 30; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (i % 5 == 0) clock_.Advance(absl::Seconds(2));
    index_->ExpireLeases();
  }
  stop = true;
  for (auto& th : threads) th.join();
  clock_.Advance(absl::Seconds(10));
  index_->ExpireLeases();
  ExpectInvariants();
  EXPECT_GT(committed.load(), 0);
  EXPECT_EQ(index_->Stats().pending_blocks, 0u);
}

TEST_F(BlockIndexTest, ConcurrentChurnKeepsInvariants) {
  Reset(32 * kPage);
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      while (!stop) {
        auto chain = Chain(1 + rng() % 6, rng() % 20);
        size_t n = Found(chain, rng() % 2 == 0);
        if (n < chain.size()) {
          absl::Status s = Store(chain, n, chain.size());
          EXPECT_TRUE(s.ok() || s.code() == absl::StatusCode::kResourceExhausted ||
                      s.code() == absl::StatusCode::kNotFound)
              << s;
        }
        if (rng() % 8 == 0) index_->ExpireLeases();
        if (rng() % 5 == 0) {
          // A reader's report on an intact block: held and hashed outside the lock while
          // the others churn; it stays (or is already gone).
          auto r = index_->DropCorrupt({Bytes(chain[rng() % chain.size()])});
          EXPECT_TRUE(r.ok() ? r->evicted == 0
                             : r.status().code() == absl::StatusCode::kNotFound ||
                                   r.status().code() == absl::StatusCode::kFailedPrecondition)
              << r.status();
        }
      }
    });
  }
  for (int i = 0; i < 20; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    clock_.Advance(absl::Seconds(3));
    ExpectInvariants();
  }
  stop = true;
  for (auto& th : threads) th.join();
  clock_.Advance(absl::Seconds(60));
  index_->ExpireLeases();
  ExpectInvariants();
  EXPECT_LE(pool_->used_bytes(), pool_->capacity_bytes());
}

TEST_F(BlockIndexTest, CommitRefusesACycleOfParents) {
  auto keys = Chain(2);
  // k0's parent is k1, and then k1's parent would be k0.
  auto a = index_->Allocate(spec_, {{Bytes(keys[0]), Bytes(keys[1]), 100, 0}},
                            absl::ZeroDuration());
  ASSERT_TRUE(a.ok());
  std::string data = Payload(keys[0], 100);
  ASSERT_TRUE(index_->Write(a->allocation_id, Bytes(keys[0]), 0, data).ok());
  ASSERT_TRUE(index_->Commit(a->allocation_id, {{Bytes(keys[0]), BlockChecksum(data.data(), 100)}}).ok());
  auto b = index_->Allocate(spec_, {{Bytes(keys[1]), Bytes(keys[0]), 100, 0}},
                            absl::ZeroDuration());
  ASSERT_TRUE(b.ok());
  data = Payload(keys[1], 100);
  ASSERT_TRUE(index_->Write(b->allocation_id, Bytes(keys[1]), 0, data).ok());
  auto c = index_->Commit(b->allocation_id, {{Bytes(keys[1]), BlockChecksum(data.data(), 100)}});
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
  EXPECT_THAT(c.status().message(), HasSubstr("cycle"));
  EXPECT_EQ(index_->Stats().blocks, 1u);
  ASSERT_TRUE(index_->Abort(b->allocation_id, {}).ok());  // It held k0 as the parent.
  ASSERT_TRUE(index_->Evict({Bytes(keys[0])}).ok());
  ExpectInvariants();
}

// ---------------------------------------------------------------------------------------
// Second-use admission.

class AdmissionTest : public BlockIndexTest {
 protected:
  void SetUp() override { Reset(8 * kPage, BlockIndexOptions::Admission::kSecondUse); }

  // Looks a chain up (counting its keys as asked for), then stores what is missing; returns
  // how many blocks came back not admitted.
  size_t Request(const std::vector<BlockKey>& chain) {
    const size_t found = Found(chain);
    std::vector<AllocateBlockSpec> specs;
    for (size_t i = found; i < chain.size(); ++i) {
      specs.push_back({Bytes(chain[i]), i == 0 ? "" : Bytes(chain[i - 1]), kPage, 0});
    }
    if (specs.empty()) return 0;
    auto a = index_->Allocate(spec_, specs, absl::ZeroDuration());
    EXPECT_TRUE(a.ok()) << a.status();
    if (!a.ok()) return 0;
    size_t refused = 0;
    std::vector<std::pair<std::string, uint64_t>> commits;
    for (auto& b : a->blocks) {
      if (b.state == AllocateState::kNotAdmitted) ++refused;
      if (b.state != AllocateState::kAllocated) continue;
      std::string data = Payload(b.key, kPage);
      EXPECT_TRUE(index_->Write(a->allocation_id, Bytes(b.key), 0, data).ok());
      commits.emplace_back(Bytes(b.key), BlockChecksum(data.data(), data.size()));
    }
    if (!commits.empty()) {
      EXPECT_TRUE(index_->Commit(a->allocation_id, commits).ok());
    }
    return refused;
  }
};

TEST_F(AdmissionTest, FreeSpaceAdmitsEverything) {
  EXPECT_EQ(Request(Chain(4, 1)), 0u);
  EXPECT_EQ(Request(Chain(4, 2)), 0u);  // Exactly full now.
  EXPECT_EQ(index_->Stats().blocks, 8u);
  ExpectInvariants();
}

TEST_F(AdmissionTest, OneOffBlocksDoNotDisplaceReusedOnes) {
  auto reused = Chain(4, 1);
  EXPECT_EQ(Request(reused), 0u);
  EXPECT_EQ(Request(Chain(4, 2)), 0u);
  EXPECT_EQ(Found(reused), 4u);  // Reused: its keys are now asked for twice.
  // The tier is full: a prompt never seen before is kept out, whole.
  auto one_off = Chain(4, 3);
  EXPECT_EQ(Request(one_off), 4u);
  EXPECT_EQ(Found(one_off), 0u);
  EXPECT_EQ(Found(reused), 4u);
  IndexStats s = index_->Stats();
  EXPECT_EQ(s.admissions_not_admitted, 4u);
  EXPECT_EQ(s.evictions, 0u);
  EXPECT_LE(s.used_bytes, s.capacity_bytes);
  // Seen a second time, it displaces the least recently used blocks.
  EXPECT_EQ(Request(one_off), 0u);
  EXPECT_EQ(Found(one_off), 4u);
  EXPECT_EQ(index_->Stats().evicted_capacity, 4u);
  ExpectInvariants();
}

TEST_F(AdmissionTest, AChainIsNeverCutByAdmission) {
  auto a = Chain(6, 1);
  EXPECT_EQ(Request(Chain(8, 2)), 0u);  // Fill the tier.
  // Blocks 0-2 were asked for before, 3-5 not: 3-5 stay out, and so does nothing above.
  Found(std::vector<BlockKey>(a.begin(), a.begin() + 3));
  EXPECT_EQ(Request(a), 3u);
  EXPECT_EQ(Found(a), 3u);
  ExpectInvariants();
}

TEST_F(AdmissionTest, PinsAndLeasesAreRespected) {
  auto pinned = Chain(4, 1);
  EXPECT_EQ(Request(pinned), 0u);
  ASSERT_TRUE(index_->SetPinned({Bytes(pinned[3])}, true).ok());
  auto leased = Chain(4, 2);
  EXPECT_EQ(Request(leased), 0u);
  uint64_t lease = 0;
  EXPECT_EQ(Found(leased, true, &lease), 4u);
  auto hot = Chain(2, 3);
  Found(hot);
  Found(hot);
  // Admitted (asked for twice), but nothing may go: all or nothing.
  std::vector<AllocateBlockSpec> specs = {{Bytes(hot[0]), "", kPage, 0},
                                          {Bytes(hot[1]), Bytes(hot[0]), kPage, 0}};
  auto r = index_->Allocate(spec_, specs, absl::ZeroDuration());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_EQ(Found(pinned), 4u);
  ExpectInvariants();
  ASSERT_TRUE(index_->ReleaseLease(lease).ok());
  EXPECT_EQ(Request(hot), 0u);
  EXPECT_EQ(Found(pinned), 4u);
  EXPECT_EQ(Found(hot), 2u);
  ExpectInvariants();
}

// Auto admission through the index: Lookups feed its miniatures with the keys each missed,
// and Allocate applies the rule they chose with the request's count of new blocks.
TEST_F(AdmissionTest, AutoLetsShortRequestsInAndKeepsLongOnesOut) {
  Reset(160 * kPage, BlockIndexOptions::Admission::kAuto);
  // Conversation turns of 8 blocks, each asked for again 16 rounds later, between one-off
  // documents of 100 blocks: only a rule that admits short requests at once keeps turns
  // until they come back.
  uint32_t seed = 100;
  std::vector<std::vector<BlockKey>> waiting;
  for (int round = 0; round < 300; ++round) {
    waiting.push_back(Chain(8, seed++));
    Request(waiting.back());
    Request(Chain(100, seed++));
    if (waiting.size() > 16) {
      Request(waiting.front());
      waiting.erase(waiting.begin());
    }
  }
  EXPECT_EQ(index_->Stats().admission, "auto (now second-use or up to 64 new blocks)");
  EXPECT_EQ(index_->Stats().blocks, 160u);  // Full.
  // A new turn comes in at once, whole; a new document of 100 blocks stays out, whole.
  auto turn = Chain(8, seed++);
  EXPECT_EQ(Request(turn), 0u);
  EXPECT_EQ(Found(turn), 8u);
  auto document = Chain(100, seed++);
  EXPECT_EQ(Request(document), 100u);
  EXPECT_EQ(Found(document), 0u);
  IndexStats s = index_->Stats();
  EXPECT_LE(s.used_bytes, s.capacity_bytes);
  ExpectInvariants();
}

}  // namespace
}  // namespace tierkv
