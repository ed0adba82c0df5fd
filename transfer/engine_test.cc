// Two engines in one process, over tcp on lo and over shared memory, through both the
// one-sided and the two-sided path.
#include "transfer/engine.h"

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/synchronization/notification.h"
#include "core/block_key.h"
#include "gtest/gtest.h"
#include "transfer/internal/wire.h"
#include "transfer/testing/blocks.h"
#include "transfer/testing/peer.h"

namespace tierkv::transfer {
namespace {

using ::testing::Combine;
using ::testing::TestParamInfo;
using ::testing::Values;

constexpr size_t kPool = 32 << 20;
constexpr size_t kGuard = 1 << 20;  // Unregistered bytes on each side of the region.

std::unique_ptr<TransferEngine> MakeEngine(const EngineOptions& options) {
  absl::StatusOr<std::unique_ptr<TransferEngine>> engine = TransferEngine::Create(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

class EngineTest : public ::testing::TestWithParam<std::tuple<std::string, PathPolicy>> {
 protected:
  const std::string& transport() const { return std::get<0>(GetParam()); }
  PathPolicy path() const { return std::get<1>(GetParam()); }
  bool two_sided() const { return path() == PathPolicy::kTwoSided; }
  EngineOptions Options() const { return testing::LoopbackOptions(transport(), path()); }

  void SetUp() override {
    owner_ = MakeEngine(Options());
    reader_ = MakeEngine(Options());
    ASSERT_NE(owner_, nullptr);
    ASSERT_NE(reader_, nullptr);
    memory_.resize(kPool + 2 * kGuard);
    testing::FillPattern(memory_.data(), memory_.size(), 7);
    absl::StatusOr<std::unique_ptr<MemoryRegion>> region = owner_->Register(pool(), kPool);
    ASSERT_TRUE(region.ok()) << region.status();
    region_ = std::move(*region);
    absl::StatusOr<std::shared_ptr<Endpoint>> ep = reader_->Connect(owner_->worker_address());
    ASSERT_TRUE(ep.ok()) << ep.status();
    ep_ = std::move(*ep);
    ASSERT_EQ(ep_->path(), two_sided() ? TransferPath::kTwoSided : TransferPath::kOneSided);
  }

  char* pool() { return memory_.data() + kGuard; }
  uint64_t addr(size_t offset) { return reinterpret_cast<uint64_t>(pool() + offset); }
  uint64_t GuardChecksum() {
    return BlockChecksum(memory_.data(), kGuard) ^
           (BlockChecksum(memory_.data() + kGuard + kPool, kGuard) * 3);
  }
  // A key for the owner's region that claims `extra` more bytes on each side: what a
  // confused or hostile peer could send.
  std::string ForgedKey(uint64_t extra) {
    internal::RemoteKey real = *internal::DecodeRemoteKey(region_->remote_key());
    return internal::EncodeRemoteKey(real.base - extra, real.length + 2 * extra, real.region_id,
                                     real.ucx_rkey);
  }

  std::unique_ptr<TransferEngine> owner_;
  std::unique_ptr<TransferEngine> reader_;
  std::vector<char> memory_;
  std::unique_ptr<MemoryRegion> region_;
  std::shared_ptr<Endpoint> ep_;
};

TEST_P(EngineTest, GetsManyBlocksOfRandomSizesAllInFlight) {
  std::mt19937_64 rng(1);
  constexpr int kBlocks = 300;
  std::vector<std::vector<char>> buffers(kBlocks);
  std::vector<TransferOp> ops(kBlocks);
  for (int i = 0; i < kBlocks; ++i) {
    size_t length = testing::RandomBlockSize(rng, 1 << 20);
    size_t offset = std::uniform_int_distribution<size_t>(0, kPool - length)(rng);
    buffers[i].assign(length, '\xee');
    ops[i] = {region_->remote_key(), addr(offset), buffers[i].data(), length,
              BlockChecksum(pool() + offset, length)};
  }
  std::vector<absl::Status> statuses = reader_->Get(*ep_, ops);
  ASSERT_EQ(statuses.size(), ops.size());
  for (int i = 0; i < kBlocks; ++i) {
    ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i];
    ASSERT_EQ(std::memcmp(buffers[i].data(), reinterpret_cast<const void*>(ops[i].remote_addr),
                          ops[i].length),
              0)
        << i;
  }
  EXPECT_EQ(owner_->stats().gets_served, two_sided() ? kBlocks : 0);
}

TEST_P(EngineTest, PutsManyBlocksOfRandomSizesAllInFlight) {
  std::mt19937_64 rng(2);
  uint64_t guard = GuardChecksum();
  std::vector<std::vector<char>> buffers;
  std::vector<TransferOp> ops;
  size_t offset = 0;
  while (ops.size() < 300) {
    size_t length = testing::RandomBlockSize(rng, 256 << 10);
    if (offset + length > kPool) break;
    buffers.emplace_back(length);
    testing::FillPattern(buffers.back().data(), length, 1000 + ops.size());
    ops.push_back({region_->remote_key(), addr(offset), buffers.back().data(), length});
    offset += length + 13;
  }
  std::vector<absl::Status> statuses = reader_->Put(*ep_, ops);
  for (size_t i = 0; i < ops.size(); ++i) {
    ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i];
    ASSERT_EQ(std::memcmp(buffers[i].data(), reinterpret_cast<const void*>(ops[i].remote_addr),
                          ops[i].length),
              0)
        << i;
  }
  EXPECT_EQ(GuardChecksum(), guard);
  EXPECT_EQ(owner_->stats().puts_served, two_sided() ? ops.size() : 0);
}

TEST_P(EngineTest, AllocatedRegionServesGetsAndPuts) {
  absl::StatusOr<std::unique_ptr<MemoryRegion>> region = owner_->Allocate(4 << 20);
  ASSERT_TRUE(region.ok()) << region.status();
  char* base = static_cast<char*>((*region)->base());
  ASSERT_NE(base, nullptr);
  testing::FillPattern(base, (*region)->length(), 11);
  constexpr size_t kBlock = 256 << 10;
  std::vector<char> local(8 * kBlock);
  std::vector<TransferOp> ops(8);
  for (int i = 0; i < 8; ++i) {
    ops[i] = {(*region)->remote_key(), reinterpret_cast<uint64_t>(base + i * kBlock),
              local.data() + i * kBlock, kBlock, BlockChecksum(base + i * kBlock, kBlock)};
  }
  for (const absl::Status& status : reader_->Get(*ep_, ops)) ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(std::memcmp(local.data(), base, local.size()), 0);
  // PUT them back one block further on.
  for (int i = 0; i < 8; ++i) ops[i].remote_addr += 8 * kBlock;
  for (const absl::Status& status : reader_->Put(*ep_, ops)) ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(std::memcmp(local.data(), base + 8 * kBlock, local.size()), 0);
}

TEST_P(EngineTest, RangeOutsideTheKeysRegionIsOutOfRangeAndMovesNothing) {
  uint64_t guard = GuardChecksum();
  std::vector<char> local(4096, '\x11');
  std::vector<TransferOp> ops = {
      {region_->remote_key(), addr(kPool - 10), local.data(), 100},     // Runs past the end.
      {region_->remote_key(), addr(0) - 100, local.data(), 50},         // Before the start.
      {region_->remote_key(), addr(0), local.data(), ~size_t{0} - 10},  // Wraps around.
  };
  for (absl::Status& status : reader_->Get(*ep_, ops)) {
    EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange) << status;
  }
  for (absl::Status& status : reader_->Put(*ep_, ops)) {
    EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange) << status;
  }
  EXPECT_TRUE(std::all_of(local.begin(), local.end(), [](char c) { return c == '\x11'; }));
  EXPECT_EQ(GuardChecksum(), guard);
  EXPECT_EQ(owner_->stats().requests_refused, 0u);  // Refused before anything was sent.
}

TEST_P(EngineTest, OwnerRefusesRangesOutsideItsRegionsWhateverTheKeySays) {
  if (!two_sided()) GTEST_SKIP() << "one-sided transfers do not involve the owner";
  uint64_t guard = GuardChecksum();
  std::string forged = ForgedKey(kGuard);
  std::vector<char> local(1 << 20, '\x11');
  std::vector<TransferOp> ops = {
      {forged, addr(0) - 4096, local.data(), 4096},     // Entirely in the guard below.
      {forged, addr(kPool) - 100, local.data(), 200},   // Straddles the end.
      {forged, addr(kPool), local.data(), 1 << 20},     // Large: sent by rendezvous.
      {forged, addr(0), local.data(), 64},              // Inside: still served.
  };
  std::vector<absl::Status> gets = reader_->Get(*ep_, ops);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(gets[i].code(), absl::StatusCode::kOutOfRange) << gets[i];
  EXPECT_TRUE(gets[3].ok()) << gets[3];
  EXPECT_TRUE(std::all_of(local.begin() + 64, local.end(), [](char c) { return c == '\x11'; }));

  std::fill(local.begin(), local.end(), '\x22');
  std::vector<absl::Status> puts = reader_->Put(*ep_, std::span(ops).first(3));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(puts[i].code(), absl::StatusCode::kOutOfRange) << puts[i];
  EXPECT_EQ(GuardChecksum(), guard);
  EXPECT_EQ(owner_->stats().requests_refused, 6u);
}

TEST_P(EngineTest, UnregisteredRegionIsRefused) {
  if (!two_sided()) GTEST_SKIP() << "one-sided transfers do not involve the owner";
  std::vector<char> other(1 << 16, '\x33');
  absl::StatusOr<std::unique_ptr<MemoryRegion>> region = owner_->Register(other.data(), other.size());
  ASSERT_TRUE(region.ok()) << region.status();
  std::string key = (*region)->remote_key();
  std::vector<char> local(100);
  TransferOp op{key, reinterpret_cast<uint64_t>(other.data()), local.data(), local.size()};
  EXPECT_TRUE(reader_->Get(*ep_, {&op, 1})[0].ok());
  region->reset();
  EXPECT_EQ(reader_->Get(*ep_, {&op, 1})[0].code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(reader_->Put(*ep_, {&op, 1})[0].code(), absl::StatusCode::kOutOfRange);
}

TEST_P(EngineTest, MalformedOpsFailAloneInTheirBatch) {
  std::vector<char> a(100), b(100);
  std::vector<TransferOp> ops = {
      {region_->remote_key(), addr(0), a.data(), a.size()},
      {region_->remote_key(), addr(0), nullptr, 10},
      {region_->remote_key(), addr(0), a.data(), 0},
      {"not a key", addr(0), a.data(), 10},
      {region_->remote_key(), addr(500), b.data(), b.size()},
  };
  std::vector<absl::Status> statuses = reader_->Get(*ep_, ops);
  EXPECT_TRUE(statuses[0].ok()) << statuses[0];
  EXPECT_EQ(statuses[1].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(statuses[2].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(statuses[3].code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(statuses[4].ok()) << statuses[4];
  EXPECT_EQ(std::memcmp(b.data(), pool() + 500, b.size()), 0);
  EXPECT_TRUE(reader_->Get(*ep_, {}).empty());
}

TEST_P(EngineTest, ChecksumMismatchIsDataLoss) {
  std::vector<char> a(4096), b(4096);
  std::vector<TransferOp> ops = {
      {region_->remote_key(), addr(0), a.data(), a.size(), BlockChecksum(pool(), 4096)},
      {region_->remote_key(), addr(8192), b.data(), b.size(), BlockChecksum(pool(), 4096)},
  };
  std::vector<absl::Status> statuses = reader_->Get(*ep_, ops);
  EXPECT_TRUE(statuses[0].ok()) << statuses[0];
  EXPECT_EQ(statuses[1].code(), absl::StatusCode::kDataLoss) << statuses[1];
}

TEST_P(EngineTest, AsyncFormsDeliverEveryStatusOnceAndVerifyChecksums) {
  constexpr int kBlocks = 64;
  constexpr size_t kBlock = 64 << 10;
  std::vector<char> local(kBlocks * kBlock);
  std::vector<TransferOp> ops(kBlocks);
  for (int i = 0; i < kBlocks; ++i) {
    ops[i] = {region_->remote_key(), addr(i * kBlock), local.data() + i * kBlock, kBlock,
              BlockChecksum(pool() + i * kBlock, kBlock)};
  }
  ops[5].checksum = 12345;
  absl::Notification got;
  std::vector<absl::Status> statuses;
  reader_->GetAsync(ep_, ops, [&](std::vector<absl::Status> s) {
    statuses = std::move(s);
    got.Notify();
  });
  ASSERT_TRUE(got.WaitForNotificationWithTimeout(absl::Seconds(30)));
  for (int i = 0; i < kBlocks; ++i) {
    if (i == 5) {
      EXPECT_EQ(statuses[i].code(), absl::StatusCode::kDataLoss);
    } else {
      EXPECT_TRUE(statuses[i].ok()) << i << ": " << statuses[i];
    }
  }

  // PUT the blocks back shifted by one block, asynchronously.
  for (int i = 0; i < kBlocks; ++i) ops[i].remote_addr = addr((i + 1) * kBlock);
  absl::Notification put;
  reader_->PutAsync(ep_, ops, [&](std::vector<absl::Status> s) {
    statuses = std::move(s);
    put.Notify();
  });
  ASSERT_TRUE(put.WaitForNotificationWithTimeout(absl::Seconds(30)));
  for (const absl::Status& status : statuses) EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(std::memcmp(pool() + kBlock, local.data(), kBlocks * kBlock), 0);
}

TEST_P(EngineTest, SynchronousCallsFromACallbackFailInsteadOfDeadlocking) {
  std::vector<char> a(64);
  TransferOp op{region_->remote_key(), addr(0), a.data(), a.size()};
  absl::Notification done;
  std::vector<absl::Status> inner;
  absl::Status connect;
  reader_->GetAsync(ep_, {&op, 1}, [&](std::vector<absl::Status>) {
    inner = reader_->Get(*ep_, {&op, 1});
    connect = reader_->Connect(owner_->worker_address()).status();
    done.Notify();
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  ASSERT_EQ(inner.size(), 1u);
  EXPECT_EQ(inner[0].code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(connect.code(), absl::StatusCode::kFailedPrecondition);
}

TEST_P(EngineTest, CorruptedByteInFlightIsCaughtByTheChecksum) {
  // The owner corrupts what it sends on the two-sided path; on the one-sided path the
  // owner sends nothing, so the reader corrupts where the bytes land.
  EngineOptions faulty = Options();
  faulty.fault_corrupt_every_n = 4;
  std::unique_ptr<TransferEngine> owner = two_sided() ? MakeEngine(faulty) : MakeEngine(Options());
  std::unique_ptr<TransferEngine> reader = two_sided() ? MakeEngine(Options()) : MakeEngine(faulty);
  absl::StatusOr<std::unique_ptr<MemoryRegion>> region = owner->Register(pool(), kPool);
  ASSERT_TRUE(region.ok());
  absl::StatusOr<std::shared_ptr<Endpoint>> ep = reader->Connect(owner->worker_address());
  ASSERT_TRUE(ep.ok());
  uint64_t before = BlockChecksum(pool(), kPool);

  constexpr int kBlocks = 40;
  constexpr size_t kBlock = 100 << 10;
  std::vector<char> local(kBlocks * kBlock);
  std::vector<TransferOp> ops(kBlocks);
  for (int i = 0; i < kBlocks; ++i) {
    ops[i] = {(*region)->remote_key(), addr(i * kBlock), local.data() + i * kBlock, kBlock,
              BlockChecksum(pool() + i * kBlock, kBlock)};
  }
  std::vector<absl::Status> statuses = reader->Get(**ep, ops);
  int lost = 0;
  for (const absl::Status& status : statuses) {
    if (status.code() == absl::StatusCode::kDataLoss) {
      ++lost;
    } else {
      EXPECT_TRUE(status.ok()) << status;
    }
  }
  EXPECT_EQ(lost, kBlocks / 4);
  EXPECT_EQ((two_sided() ? owner : reader)->stats().blocks_corrupted, uint64_t{kBlocks / 4});
  EXPECT_EQ(BlockChecksum(pool(), kPool), before);  // The source was never changed.
}

TEST_P(EngineTest, ManyThreadsShareOneEndpoint) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 20;
  constexpr int kBlocks = 16;
  constexpr size_t kBlock = 32 << 10;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<char> local(kBlocks * kBlock);
      std::vector<TransferOp> ops(kBlocks);
      for (int round = 0; round < kRounds; ++round) {
        for (int i = 0; i < kBlocks; ++i) {
          size_t offset = ((t * kRounds + round) * kBlocks + i) * kBlock % (kPool - kBlock);
          ops[i] = {region_->remote_key(), addr(offset), local.data() + i * kBlock, kBlock,
                    BlockChecksum(pool() + offset, kBlock)};
        }
        for (const absl::Status& status : reader_->Get(*ep_, ops)) failures += !status.ok();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST_P(EngineTest, EndpointOfAnotherEngineIsInvalidArgument) {
  std::unique_ptr<TransferEngine> other = MakeEngine(Options());
  absl::StatusOr<std::shared_ptr<Endpoint>> foreign = other->Connect(owner_->worker_address());
  ASSERT_TRUE(foreign.ok());
  std::vector<char> a(64);
  TransferOp op{region_->remote_key(), addr(0), a.data(), a.size()};
  EXPECT_EQ(reader_->Get(**foreign, {&op, 1})[0].code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(EngineTest, PeerEngineGoneFailsOpsWithinTheTimeout) {
  EngineOptions options = Options();
  options.op_timeout = absl::Seconds(2);
  std::unique_ptr<TransferEngine> owner = MakeEngine(options);
  std::unique_ptr<TransferEngine> reader = MakeEngine(options);
  std::vector<char> memory(1 << 20);
  auto region = owner->Register(memory.data(), memory.size());
  ASSERT_TRUE(region.ok());
  std::string key = (*region)->remote_key();
  auto ep = reader->Connect(owner->worker_address());
  ASSERT_TRUE(ep.ok());
  std::vector<char> local(4096);
  TransferOp op{key, reinterpret_cast<uint64_t>(memory.data()), local.data(), local.size()};
  ASSERT_TRUE(reader->Get(**ep, {&op, 1})[0].ok());
  region->reset();
  owner.reset();
  if (!two_sided() && transport() == "shm") {
    // cma reads this very process's memory, which is still there: only the endpoint's
    // owner engine is gone, so there is nothing to detect. The two-process test kills a
    // real peer instead.
    return;
  }
  absl::Time start = absl::Now();
  absl::Status status = reader->Get(**ep, {&op, 1})[0];
  EXPECT_TRUE(status.code() == absl::StatusCode::kUnavailable ||
              status.code() == absl::StatusCode::kDeadlineExceeded)
      << status;
  EXPECT_LT(absl::Now() - start, absl::Seconds(8));
  // The endpoint is closed (right after the op failed: the progress thread closes it
  // after the failure is delivered), and from then on ops on it fail at once.
  absl::Time closed_by = absl::Now() + absl::Seconds(2);
  while ((*ep)->health().ok() && absl::Now() < closed_by) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_FALSE((*ep)->health().ok());
  absl::Time again = absl::Now();
  EXPECT_EQ(reader->Get(**ep, {&op, 1})[0].code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(absl::Now() - again, absl::Seconds(1));
}

std::string ParamName(const TestParamInfo<EngineTest::ParamType>& info) {
  return testing::TransportPathName(std::get<0>(info.param), std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Transports, EngineTest,
                         Combine(Values("tcp", "shm"),
                                 Values(PathPolicy::kOneSided, PathPolicy::kTwoSided)),
                         ParamName);

TEST(TransferEngine, AutoPathIsTwoSidedOverTcpAndOneSidedOverSharedMemory) {
  for (auto [transport, expected, lane] :
       {std::tuple{"tcp", TransferPath::kTwoSided, "tcp/lo"},
        std::tuple{"shm", TransferPath::kOneSided, "cma/memory"}}) {
    auto owner = MakeEngine(testing::LoopbackOptions(transport, PathPolicy::kAuto));
    auto reader = MakeEngine(testing::LoopbackOptions(transport, PathPolicy::kAuto));
    auto ep = reader->Connect(owner->worker_address());
    ASSERT_TRUE(ep.ok()) << ep.status();
    EXPECT_EQ((*ep)->path(), expected) << transport;
    EXPECT_NE((*ep)->transports().find(lane), std::string::npos) << (*ep)->transports();
  }
}

TEST(TransferEngine, TcpStaysTwoSidedWithoutPeerFailureDetection) {
  // Without peer error handling UCX offers tcp's own put_zcopy as an RMA lane; it is still
  // the socket, not RMA the owner's CPU stays out of.
  EngineOptions options = testing::LoopbackOptions("tcp", PathPolicy::kAuto);
  options.detect_peer_failure = false;
  auto owner = MakeEngine(options);
  auto reader = MakeEngine(options);
  auto ep = reader->Connect(owner->worker_address());
  ASSERT_TRUE(ep.ok()) << ep.status();
  EXPECT_EQ((*ep)->path(), TransferPath::kTwoSided);
  std::vector<char> memory(1 << 20, '\x44'), local(1 << 20);
  auto region = owner->Register(memory.data(), memory.size());
  ASSERT_TRUE(region.ok());
  TransferOp op{(*region)->remote_key(), reinterpret_cast<uint64_t>(memory.data()), local.data(),
                local.size(), BlockChecksum(memory.data(), memory.size())};
  EXPECT_TRUE(reader->Get(**ep, {&op, 1})[0].ok());
}

TEST(TransferEngine, ConnectReturnsTheCachedEndpointAndRejectsGarbage) {
  auto owner = MakeEngine(testing::LoopbackOptions("tcp", PathPolicy::kAuto));
  auto reader = MakeEngine(testing::LoopbackOptions("tcp", PathPolicy::kAuto));
  auto first = reader->Connect(owner->worker_address());
  auto second = reader->Connect(owner->worker_address());
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(first->get(), second->get());
  EXPECT_TRUE((*first)->health().ok());
  EXPECT_EQ(reader->Connect("garbage").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(reader->Connect("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TransferEngine, RegisterRejectsNullEmptyAndOverlappingRanges) {
  auto engine = MakeEngine(testing::LoopbackOptions("tcp", PathPolicy::kAuto));
  std::vector<char> memory(1 << 16);
  EXPECT_EQ(engine->Register(nullptr, 10).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Register(memory.data(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto region = engine->Register(memory.data() + 4096, 8192);
  ASSERT_TRUE(region.ok()) << region.status();
  EXPECT_EQ((*region)->base(), memory.data() + 4096);
  EXPECT_EQ((*region)->length(), 8192u);
  EXPECT_EQ(engine->Register(memory.data(), 4097).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Register(memory.data() + 12287, 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(engine->Register(memory.data(), 4096).ok());  // Adjacent is fine.
  EXPECT_TRUE(engine->Register(memory.data() + 12288, 4096).ok());
  EXPECT_EQ(engine->Allocate(0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TransferEngine, UnknownTransportFailsToStart) {
  EngineOptions options;
  options.transports = "no_such_transport";
  absl::StatusOr<std::unique_ptr<TransferEngine>> engine = TransferEngine::Create(options);
  EXPECT_FALSE(engine.ok());
}

}  // namespace
}  // namespace tierkv::transfer
