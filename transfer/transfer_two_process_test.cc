// The engine between two processes: this test binary starts a copy of itself as the peer
// that owns the bytes (transfer/testing/peer.h), over tcp on lo and over shared memory,
// through both paths. The peer binds nothing but loopback, dies by alarm if forgotten, and
// is killed by its pid.
#include <signal.h>

#include <algorithm>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/synchronization/notification.h"
#include "core/block_key.h"
#include "gtest/gtest.h"
#include "transfer/engine.h"
#include "transfer/testing/blocks.h"
#include "transfer/testing/peer.h"

namespace {
// In the child, this runs the peer and never returns.
[[maybe_unused]] const bool kIsPeer = tierkv::transfer::testing::MaybeRunPeer();
}  // namespace

namespace tierkv::transfer {
namespace {

using ::testing::Combine;
using ::testing::TestParamInfo;
using ::testing::Values;
using testing::PeerOptions;
using testing::PeerProcess;

constexpr uint64_t kSeed = 77;
constexpr size_t kMaxBlock = 4 << 20;

class TwoProcessTest : public ::testing::TestWithParam<std::tuple<std::string, PathPolicy>> {
 protected:
  const std::string& transport() const { return std::get<0>(GetParam()); }
  bool two_sided() const { return std::get<1>(GetParam()) == PathPolicy::kTwoSided; }

  EngineOptions Options() const {
    EngineOptions options;
    options.name = "test";
    options.transports = transport();
    if (transport() == "tcp") options.net_devices = "lo";
    options.path = std::get<1>(GetParam());
    options.op_timeout = absl::Seconds(3);
    return options;
  }
  PeerOptions Peer(uint64_t region_bytes, uint64_t corrupt_every_n = 0) const {
    PeerOptions options;
    options.transports = transport();
    if (transport() == "tcp") options.net_devices = "lo";
    options.region_bytes = region_bytes;
    options.seed = kSeed;
    options.corrupt_every_n = corrupt_every_n;
    options.alarm_seconds = 120;
    options.op_timeout = absl::Seconds(3);
    return options;
  }

  // Starts the peer and this side's engine, and connects.
  void Start(const PeerOptions& peer_options, EngineOptions options) {
    absl::StatusOr<std::unique_ptr<PeerProcess>> peer = PeerProcess::Start(peer_options);
    ASSERT_TRUE(peer.ok()) << peer.status();
    peer_ = std::move(*peer);
    absl::StatusOr<std::unique_ptr<TransferEngine>> engine = TransferEngine::Create(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    absl::StatusOr<std::shared_ptr<Endpoint>> ep = engine_->Connect(peer_->worker_address());
    ASSERT_TRUE(ep.ok()) << ep.status();
    ep_ = std::move(*ep);
    ASSERT_EQ(ep_->path(), two_sided() ? TransferPath::kTwoSided : TransferPath::kOneSided);
    // What the peer's region holds, to know the checksums to expect.
    expected_.resize(peer_options.region_bytes);
    testing::FillPattern(expected_.data(), expected_.size(), peer_options.seed);
  }

  // `count` GETs of random sizes at random offsets, with the checksums of what they read.
  std::vector<TransferOp> RandomGets(int count, std::vector<std::vector<char>>& buffers,
                                     uint64_t seed) {
    std::mt19937_64 rng(seed);
    buffers.resize(count);
    std::vector<TransferOp> ops(count);
    for (int i = 0; i < count; ++i) {
      size_t length = testing::RandomBlockSize(rng, kMaxBlock);
      size_t offset = std::uniform_int_distribution<size_t>(0, peer_->length() - length)(rng);
      buffers[i].assign(length, '\xee');
      ops[i] = {peer_->remote_key(), peer_->base() + offset, buffers[i].data(), length,
                BlockChecksum(expected_.data() + offset, length)};
    }
    return ops;
  }

  std::unique_ptr<PeerProcess> peer_;
  std::unique_ptr<TransferEngine> engine_;
  std::shared_ptr<Endpoint> ep_;
  std::vector<char> expected_;
};

TEST_P(TwoProcessTest, GetsHundredsOfRandomSizedBlocksWithChecksums) {
  Start(Peer(64 << 20), Options());
  std::vector<std::vector<char>> buffers;
  std::vector<TransferOp> ops = RandomGets(300, buffers, 1);
  std::vector<absl::Status> statuses = engine_->Get(*ep_, ops);
  for (size_t i = 0; i < ops.size(); ++i) {
    ASSERT_TRUE(statuses[i].ok()) << i << " (" << ops[i].length << " B): " << statuses[i];
  }
  absl::StatusOr<EngineStats> stats = peer_->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->gets_served, two_sided() ? ops.size() : 0u);
}

TEST_P(TwoProcessTest, PutsHundredsOfRandomSizedBlocksThatThePeerChecksums) {
  Start(Peer(128 << 20), Options());
  std::mt19937_64 rng(2);
  std::vector<std::vector<char>> buffers;
  std::vector<TransferOp> ops;
  size_t offset = 0;
  while (ops.size() < 300) {
    size_t length = testing::RandomBlockSize(rng, kMaxBlock);
    if (offset + length > peer_->length()) break;
    buffers.emplace_back(length);
    testing::FillPattern(buffers.back().data(), length, 5000 + ops.size());
    ops.push_back({peer_->remote_key(), peer_->base() + offset, buffers.back().data(), length});
    offset += length + 1;
  }
  ASSERT_GE(ops.size(), 200u);
  std::vector<absl::Status> statuses = engine_->Put(*ep_, ops);
  for (size_t i = 0; i < ops.size(); ++i) {
    ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i];
    absl::StatusOr<uint64_t> sum = peer_->Checksum(ops[i].remote_addr, ops[i].length);
    ASSERT_TRUE(sum.ok()) << sum.status();
    ASSERT_EQ(*sum, BlockChecksum(buffers[i].data(), ops[i].length)) << i;
  }
}

TEST_P(TwoProcessTest, GetsAndPutsOnMemoryThePeersEngineAllocated) {
  PeerOptions peer = Peer(64 << 20);
  peer.allocate = true;
  Start(peer, Options());
  std::vector<std::vector<char>> buffers;
  std::vector<TransferOp> gets = RandomGets(200, buffers, 4);
  std::vector<absl::Status> statuses = engine_->Get(*ep_, gets);
  for (size_t i = 0; i < gets.size(); ++i) ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i];
  // PUT what was read to the start of the region, one block after the other.
  std::vector<TransferOp> puts;
  uint64_t offset = 0;
  for (const TransferOp& get : gets) {
    if (offset + get.length > peer_->length()) break;
    puts.push_back({peer_->remote_key(), peer_->base() + offset, get.local, get.length});
    offset += get.length;
  }
  statuses = engine_->Put(*ep_, puts);
  for (size_t i = 0; i < puts.size(); ++i) {
    ASSERT_TRUE(statuses[i].ok()) << i << ": " << statuses[i];
    absl::StatusOr<uint64_t> sum = peer_->Checksum(puts[i].remote_addr, puts[i].length);
    ASSERT_TRUE(sum.ok()) << sum.status();
    ASSERT_EQ(*sum, *gets[i].checksum) << i;
  }
}

TEST_P(TwoProcessTest, CorruptedByteInFlightIsCaughtByTheReadersChecksum) {
  // Two-sided: the peer, which sends the bytes, corrupts every 5th block it serves.
  // One-sided: the peer's CPU is not involved, so this side corrupts where bytes land.
  EngineOptions options = Options();
  if (!two_sided()) options.fault_corrupt_every_n = 5;
  Start(Peer(64 << 20, two_sided() ? 5 : 0), options);
  std::vector<std::vector<char>> buffers;
  std::vector<TransferOp> ops = RandomGets(100, buffers, 3);
  std::vector<absl::Status> statuses = engine_->Get(*ep_, ops);
  int lost = 0;
  for (const absl::Status& status : statuses) {
    if (status.code() == absl::StatusCode::kDataLoss) {
      ++lost;
    } else {
      EXPECT_TRUE(status.ok()) << status;
    }
  }
  EXPECT_EQ(lost, 20);
  if (two_sided()) {
    absl::StatusOr<EngineStats> stats = peer_->Stats();
    ASSERT_TRUE(stats.ok());
    EXPECT_EQ(stats->blocks_corrupted, 20u);
  }
  // The peer's memory itself was never changed.
  absl::StatusOr<uint64_t> sum = peer_->Checksum(peer_->base(), peer_->length());
  ASSERT_TRUE(sum.ok());
  EXPECT_EQ(*sum, BlockChecksum(expected_.data(), expected_.size()));
}

TEST_P(TwoProcessTest, CorruptedPutIsCaughtByTheOwnersChecksum) {
  EngineOptions options = Options();
  options.fault_corrupt_every_n = 4;
  Start(Peer(32 << 20), options);
  constexpr int kBlocks = 40;
  constexpr size_t kBlock = 256 << 10;
  std::vector<char> local(kBlocks * kBlock);
  testing::FillPattern(local.data(), local.size(), 9);
  std::vector<TransferOp> ops(kBlocks);
  for (int i = 0; i < kBlocks; ++i) {
    ops[i] = {peer_->remote_key(), peer_->base() + i * kBlock, local.data() + i * kBlock, kBlock};
  }
  for (const absl::Status& status : engine_->Put(*ep_, ops)) ASSERT_TRUE(status.ok()) << status;
  int mismatched = 0;
  for (int i = 0; i < kBlocks; ++i) {
    absl::StatusOr<uint64_t> sum = peer_->Checksum(ops[i].remote_addr, kBlock);
    ASSERT_TRUE(sum.ok());
    mismatched += *sum != BlockChecksum(local.data() + i * kBlock, kBlock);
  }
  EXPECT_EQ(mismatched, kBlocks / 4);
}

// Kills the peer while a batch is in flight: every op must complete within a bounded time,
// and the endpoint must then fail fast.
TEST_P(TwoProcessTest, KilledPeerFailsEveryOpInFlightWithinBoundedTime) {
  // UCX 1.13's cross-memory-attach transport (cma, part of "shm") aborts the process when
  // the peer it reads from has died (process_vm_readv: ESRCH is fatal there). The engine's
  // two-sided path over shm reaches it through rendezvous reads; leave it out here so that
  // the test checks what the engine does, not that UCX limit (see transfer/engine.h).
  const bool avoid_cma = transport() == "shm" && two_sided();
  for (bool is_get : {true, false}) {
    SCOPED_TRACE(is_get ? "GET" : "PUT");
    PeerOptions peer_options = Peer(256 << 20);
    EngineOptions options = Options();
    if (avoid_cma) peer_options.transports = options.transports = "posix,sysv,self";
    Start(peer_options, options);
    constexpr int kBlocks = 64;
    constexpr size_t kBlock = 4 << 20;
    std::vector<char> local(kBlocks * kBlock, '\x5a');
    std::vector<TransferOp> ops(kBlocks);
    for (int i = 0; i < kBlocks; ++i) {
      ops[i] = {peer_->remote_key(), peer_->base() + i * kBlock, local.data() + i * kBlock,
                kBlock};
    }
    absl::Notification done;
    std::vector<absl::Status> statuses;
    auto record = [&](std::vector<absl::Status> s) {
      statuses = std::move(s);
      done.Notify();
    };
    absl::Time start = absl::Now();
    if (is_get) {
      engine_->GetAsync(ep_, ops, record);
    } else {
      engine_->PutAsync(ep_, ops, record);
    }
    peer_->Kill();
    // Over tcp the dead peer is detected at once; over shared memory it takes op_timeout
    // (3 s) plus the abandon grace (1 s). The rest is slack for a loaded machine.
    ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(20)));
    absl::Duration took = absl::Now() - start;
    EXPECT_LT(took, absl::Seconds(8));
    int failed = 0;
    for (const absl::Status& status : statuses) {
      if (status.ok()) continue;
      ++failed;
      EXPECT_TRUE(status.code() == absl::StatusCode::kUnavailable ||
                  status.code() == absl::StatusCode::kDeadlineExceeded)
          << status;
    }
    EXPECT_GT(failed, 0) << "the whole batch finished before the kill; nothing was tested";

    // The next op on the endpoint fails within the timeout too, never hangs.
    absl::Time again = absl::Now();
    absl::Status next = engine_->Get(*ep_, std::span(ops).first(1))[0];
    EXPECT_TRUE(next.code() == absl::StatusCode::kUnavailable ||
                next.code() == absl::StatusCode::kDeadlineExceeded)
        << next;
    EXPECT_LT(absl::Now() - again, absl::Seconds(5));
    ep_.reset();
    engine_.reset();
    peer_.reset();
  }
}

TEST(TwoProcess, WithoutPeerFailureDetectionAKilledPeerStillFailsInBoundedTime) {
  PeerOptions peer_options;
  peer_options.transports = "tcp";
  peer_options.net_devices = "lo";
  peer_options.region_bytes = 64 << 20;
  absl::StatusOr<std::unique_ptr<PeerProcess>> peer = PeerProcess::Start(peer_options);
  ASSERT_TRUE(peer.ok()) << peer.status();
  EngineOptions options;
  options.transports = "tcp";
  options.net_devices = "lo";
  options.detect_peer_failure = false;
  options.op_timeout = absl::Seconds(2);
  absl::StatusOr<std::unique_ptr<TransferEngine>> engine = TransferEngine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  absl::StatusOr<std::shared_ptr<Endpoint>> ep = (*engine)->Connect((*peer)->worker_address());
  ASSERT_TRUE(ep.ok()) << ep.status();
  constexpr int kBlocks = 16;
  constexpr size_t kBlock = 4 << 20;
  std::vector<char> local(kBlocks * kBlock);
  std::vector<TransferOp> ops(kBlocks);
  for (int i = 0; i < kBlocks; ++i) {
    ops[i] = {(*peer)->remote_key(), (*peer)->base() + i * kBlock, local.data() + i * kBlock,
              kBlock};
  }
  ASSERT_TRUE((*engine)->Get(**ep, std::span(ops).first(1))[0].ok());
  (*peer)->Kill();
  absl::Time start = absl::Now();
  for (const absl::Status& status : (*engine)->Get(**ep, ops)) {
    EXPECT_TRUE(status.code() == absl::StatusCode::kUnavailable ||
                status.code() == absl::StatusCode::kDeadlineExceeded)
        << status;
  }
  EXPECT_LT(absl::Now() - start, absl::Seconds(8));
}

std::string ParamName(const TestParamInfo<TwoProcessTest::ParamType>& info) {
  return testing::TransportPathName(std::get<0>(info.param), std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Transports, TwoProcessTest,
                         Combine(Values("tcp", "shm"),
                                 Values(PathPolicy::kOneSided, PathPolicy::kTwoSided)),
                         ParamName);

}  // namespace
}  // namespace tierkv::transfer
