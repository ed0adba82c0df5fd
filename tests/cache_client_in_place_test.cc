// The cache client's in-place paths (reading blocks where they lie in a same-process host
// tier, storing straight into it) against a fake cache manager whose Lookup and Allocate
// answers are wrong: nothing is read or written outside what was asked, no block is
// committed under another block's bytes, and a lost read lease throws the read away.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <random>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "cache_client/cache_client.h"
#include "core/block_key.h"
#include "gtest/gtest.h"
#include "model/runtime.h"
#include "prefill_worker/prefill.h"
#include "proto/lookup_blocks.h"
#include "tierkv/v1/cache_service.grpc.pb.h"

namespace tierkv {
namespace {

std::vector<uint32_t> Tokens(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> t(n);
  for (uint32_t& x : t) x = static_cast<uint32_t>(rng() % 32768);
  return t;
}

// Fake cache manager: answers whatever the test put in `lookup` / `allocate`, and verifies
// Commit checksums over the tier bytes like the real BlockIndex::Commit.
class FakeCache final : public v1::CacheService::Service {
 public:
  FakeCache(std::vector<uint8_t>* tier, std::vector<uint8_t>* gpu_tier)
      : tier_(tier), gpu_tier_(gpu_tier) {}
  v1::LookupResponse lookup;
  bool last_accept_gpu = false;
  v1::Tier last_allocate_tier = v1::TIER_UNSPECIFIED;
  v1::AllocateResponse allocate;
  std::map<std::string, uint64_t> committed;  // key -> checksum accepted
  int releases = 0;
  grpc::Status release_status = grpc::Status::OK;

  grpc::Status Lookup(grpc::ServerContext*, const v1::LookupRequest* req,
                      v1::LookupResponse* r) override {
    last_accept_gpu = req->accept_gpu();
    *r = lookup;
    return grpc::Status::OK;
  }
  grpc::Status Allocate(grpc::ServerContext*, const v1::AllocateRequest* req,
                        v1::AllocateResponse* r) override {
    last_allocate_tier = req->tier();
    *r = allocate;
    return grpc::Status::OK;
  }
  grpc::Status Commit(grpc::ServerContext*, const v1::CommitRequest* req,
                      v1::CommitResponse* r) override {
    for (const auto& b : req->blocks()) {
      const v1::AllocateResponse::Block* a = nullptr;
      for (const auto& x : allocate.blocks()) {
        if (x.key() == b.key()) a = &x;
      }
      if (a == nullptr) return grpc::Status(grpc::NOT_FOUND, "no such block");
      ChecksumBuilder cb;
      const uint8_t* base =
          (a->location().tier() == v1::TIER_GPU ? gpu_tier_ : tier_)->data();
      for (const auto& e : a->location().extents()) cb.Update(base + e.offset(), e.length());
      if (cb.Finish() != b.checksum()) return grpc::Status(grpc::DATA_LOSS, "checksum mismatch");
    }
    for (const auto& b : req->blocks()) committed[b.key()] = b.checksum();
    r->set_committed(req->blocks_size());
    return grpc::Status::OK;
  }
  grpc::Status Abort(grpc::ServerContext*, const v1::AbortRequest*, v1::AbortResponse*) override {
    return grpc::Status::OK;
  }
  grpc::Status ReleaseLease(grpc::ServerContext*, const v1::ReleaseLeaseRequest*,
                            v1::ReleaseLeaseResponse*) override {
    ++releases;
    return release_status;
  }

 private:
  std::vector<uint8_t>* tier_;
  std::vector<uint8_t>* gpu_tier_;
};

class CacheClientInPlace : public testing::Test {
 protected:
  void SetUp() override {
    RuntimeOptions o;
    o.device = "cpu";
    rt_ = *Runtime::Load("builtin:tiny", o);
    bytes_ = rt_->spec().RawBlockBytes();
    // Tier: 8 real blocks of a 130-token prompt's KV, back to back.
    prompt_ = Tokens(130, 5);
    auto seq = *rt_->NewSequence(200);
    ASSERT_TRUE(rt_->Prefill(prompt_, seq.get()).ok());
    tier_.resize(8 * bytes_);
    for (int i = 0; i < 8; ++i) {
      std::string b = *seq->ExtractBlock(i);
      std::memcpy(tier_.data() + i * bytes_, b.data(), bytes_);
      blocks_.push_back(b);
    }
    fake_ = std::make_unique<FakeCache>(&tier_, &gpu_tier_);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(fake_.get());
    server_ = builder.BuildAndStart();
    CacheClientOptions co;
    co.address = "127.0.0.1:" + std::to_string(port);
    co.use_data_plane = false;
    client_ = *CacheClient::Create(co);
    client_->SetLocalHostTier(std::span<const uint8_t>(tier_));
  }
  void TearDown() override { server_->Shutdown(); }
  // A Lookup answer of `n` consistent host blocks 0..n-1 of the tier.
  v1::LookupResponse Found(uint32_t n) {
    v1::LookupResponse r;
    r.set_found(n);
    r.set_lease_id(7);
    r.set_lease_expires_unix_ms(absl::ToUnixMillis(absl::Now() + absl::Seconds(30)));
    std::string records(n * kLookupRecordBytes, '\0');
    for (uint32_t i = 0; i < n; ++i) {
      EncodeLookupBlock({.checksum = BlockChecksum(tier_.data() + i * bytes_, bytes_),
                         .offset = i * bytes_,
                         .size = static_cast<uint32_t>(bytes_),
                         .pieces = 1,
                         .first_piece = 0,
                         .codec = v1::CODEC_RAW,
                         .tier = v1::TIER_HOST},
                        records.data() + i * kLookupRecordBytes);
    }
    r.set_blocks(records);
    return r;
  }
  // Changes record i of `r`.
  static void Patch(v1::LookupResponse& r, uint32_t i,
                    const std::function<void(LookupBlock&)>& change) {
    char* at = r.mutable_blocks()->data() + i * kLookupRecordBytes;
    LookupBlock b = DecodeLookupBlock(at);
    change(b);
    EncodeLookupBlock(b, at);
  }

  std::unique_ptr<Runtime> rt_;
  size_t bytes_ = 0;
  std::vector<uint32_t> prompt_;
  std::vector<uint8_t> tier_;
  // Stands in for the GPU tier's device memory (the CPU runtime reads it like host memory).
  std::vector<uint8_t> gpu_tier_;
  std::vector<std::string> blocks_;
  std::unique_ptr<FakeCache> fake_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<CacheClient> client_;
};

absl::StatusOr<StoreResult> StoreAsTheWorkerDoes(CacheClient& client, const Runtime& rt,
                                                 Sequence& seq, std::span<const BlockKey> keys,
                                                 size_t count) {
  return client.StoreInPlace(
      rt.spec(), keys, 0, count,
      [&](std::span<const size_t> idx, std::span<const std::span<const PayloadTarget>> t,
          std::span<uint64_t> sums) -> absl::Status {
        for (size_t j = 0; j < idx.size(); ++j) {
          absl::Status s = seq.WriteBlocksInPlace(idx[j], t.subspan(j, 1), sums.subspan(j, 1));
          if (!s.ok()) return s;
        }
        return absl::OkStatus();
      });
}

v1::AllocateResponse Allocated(std::span<const BlockKey> keys, std::vector<int> key_of,
                               std::vector<uint64_t> offsets, uint64_t bytes) {
  v1::AllocateResponse a;
  a.set_allocation_id(1);
  a.set_lease_expires_unix_ms(absl::ToUnixMillis(absl::Now() + absl::Seconds(30)));
  for (size_t i = 0; i < key_of.size(); ++i) {
    auto* b = a.add_blocks();
    b->set_key(std::string(KeyBytes(keys[key_of[i]])));
    b->set_state(v1::AllocateResponse::STATE_ALLOCATED);
    b->mutable_location()->set_tier(v1::TIER_HOST);
    auto* e = b->mutable_location()->add_extents();
    e->set_offset(offsets[i]);
    e->set_length(bytes);
  }
  return a;
}

TEST_F(CacheClientInPlace, ConsistentAnswersAreUsedAndStored) {
  fake_->lookup = Found(4);
  std::vector<BlockKey> keys = *ComputeBlockKeys(rt_->spec(), "", std::span(prompt_).first(64));
  size_t offered = 0;
  auto used = client_->UsePrefixInPlace(
      rt_->spec(), keys,
      [&](std::span<const std::span<const PayloadPiece>> b, std::span<const uint64_t> c, std::span<const uint8_t>) {
        offered = b.size();
        return IntactPrefix(b, c);
      });
  ASSERT_TRUE(used.ok()) << used.status();
  EXPECT_EQ(offered, 4u);
  EXPECT_EQ(used->used, 4u);
  EXPECT_FALSE(used->lease_lost);
  EXPECT_EQ(fake_->releases, 1);

  std::vector<uint32_t> p = Tokens(50, 9);  // 3 full blocks.
  auto seq = *rt_->NewSequence(64);
  ASSERT_TRUE(rt_->Prefill(p, seq.get()).ok());
  std::vector<BlockKey> pk = *ComputeBlockKeys(rt_->spec(), "", p);
  fake_->allocate = Allocated(pk, {0, 1}, {2 * bytes_, 5 * bytes_}, bytes_);
  auto stored = StoreAsTheWorkerDoes(*client_, *rt_, *seq, pk, 2);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->stored, 2u);
  for (int i = 0; i < 2; ++i) {
    std::string b = *seq->ExtractBlock(i);
    EXPECT_EQ(fake_->committed[std::string(KeyBytes(pk[i]))], BlockChecksum(b.data(), b.size()));
  }
}

TEST_F(CacheClientInPlace, MoreBlocksFoundThanAskedForIsAnError) {
  fake_->lookup = Found(5);
  std::vector<BlockKey> keys = *ComputeBlockKeys(rt_->spec(), "", std::span(prompt_).first(32));
  ASSERT_EQ(keys.size(), 2u);
  bool called = false;
  auto used = client_->UsePrefixInPlace(
      rt_->spec(), keys,
      [&](std::span<const std::span<const PayloadPiece>> b, std::span<const uint64_t> c, std::span<const uint8_t>) {
        called = true;
        return b.size();
      });
  EXPECT_EQ(used.status().code(), absl::StatusCode::kInternal) << used.status();
  EXPECT_FALSE(called);
  EXPECT_EQ(fake_->releases, 1);  // The lease goes back all the same.

  // PrepareSequence (cache optional) computes the whole prompt instead.
  std::vector<uint32_t> prompt(prompt_.begin(), prompt_.begin() + 40);
  auto seq = PrepareSequence(*rt_, client_.get(), "", prompt, /*cache_required=*/false);
  ASSERT_TRUE(seq.ok()) << seq.status();
  EXPECT_EQ(seq->cached_blocks, 0u);
  EXPECT_EQ(seq->computed_tokens, 40u);
}

TEST_F(CacheClientInPlace, MalformedRecordsAreAnError) {
  v1::LookupResponse r = Found(3);
  r.mutable_blocks()->resize(2 * kLookupRecordBytes);  // Two records for three blocks.
  fake_->lookup = r;
  std::vector<BlockKey> keys = *ComputeBlockKeys(rt_->spec(), "", std::span(prompt_).first(64));
  auto used = client_->UsePrefixInPlace(
      rt_->spec(), keys,
      [&](std::span<const std::span<const PayloadPiece>> b, std::span<const uint64_t> c, std::span<const uint8_t>) {
        ADD_FAILURE() << "use called with " << b.size() << " blocks";
        return size_t{0};
      });
  EXPECT_EQ(used.status().code(), absl::StatusCode::kInternal);
}

TEST_F(CacheClientInPlace, NoLeaseMeansNoReadAndALostLeaseIsReported) {
  std::vector<BlockKey> keys = *ComputeBlockKeys(rt_->spec(), "", std::span(prompt_).first(64));
  auto use = [&](std::span<const std::span<const PayloadPiece>> b, std::span<const uint64_t> c, std::span<const uint8_t>) {
    return b.size();
  };
  v1::LookupResponse r = Found(3);
  r.set_lease_id(0);
  fake_->lookup = r;
  auto none = client_->UsePrefixInPlace(rt_->spec(), keys, use);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->used, 0u);

  r = Found(3);
  r.set_lease_expires_unix_ms(absl::ToUnixMillis(absl::Now() + absl::Milliseconds(100)));
  fake_->lookup = r;
  auto expiring = client_->UsePrefixInPlace(rt_->spec(), keys, use);
  ASSERT_TRUE(expiring.ok());
  EXPECT_EQ(expiring->used, 0u);

  fake_->lookup = Found(3);
  fake_->release_status = grpc::Status(grpc::NOT_FOUND, "lease expired");
  auto lost = client_->UsePrefixInPlace(rt_->spec(), keys, use);
  ASSERT_TRUE(lost.ok());
  EXPECT_EQ(lost->used, 3u);
  EXPECT_TRUE(lost->lease_lost);

  // The worker throws the read away and computes everything.
  std::vector<uint32_t> prompt(prompt_.begin(), prompt_.begin() + 70);
  auto seq = PrepareSequence(*rt_, client_.get(), "", prompt, /*cache_required=*/true);
  ASSERT_TRUE(seq.ok()) << seq.status();
  EXPECT_EQ(seq->cached_blocks, 0u);
  EXPECT_EQ(seq->computed_tokens, 70u);
  EXPECT_EQ(seq->seq->tokens(), 70);
}

TEST_F(CacheClientInPlace, OverlappingSpaceIsRefusedBeforeAnyWrite) {
  std::vector<uint32_t> p = Tokens(50, 9);
  auto seq = *rt_->NewSequence(64);
  ASSERT_TRUE(rt_->Prefill(p, seq.get()).ok());
  std::vector<BlockKey> keys = *ComputeBlockKeys(rt_->spec(), "", p);
  std::fill(tier_.begin(), tier_.end(), 0);
  fake_->allocate = Allocated(keys, {0, 1}, {0, bytes_ / 2}, bytes_);
  auto stored = StoreAsTheWorkerDoes(*client_, *rt_, *seq, keys, 2);
  EXPECT_EQ(stored.status().code(), absl::StatusCode::kInternal) << stored.status();
  EXPECT_TRUE(fake_->committed.empty());
  EXPECT_TRUE(std::all_of(tier_.begin(), tier_.end(), [](uint8_t b) { return b == 0; }));
}

TEST_F(CacheClientInPlace, AllocateAnswersForOtherKeysAreRefused) {
  std::vector<uint32_t> p = Tokens(50, 9);
  auto seq = *rt_->NewSequence(64);
  ASSERT_TRUE(rt_->Prefill(p, seq.get()).ok());
  std::vector<BlockKey> keys = *ComputeBlockKeys(rt_->spec(), "", p);
  fake_->allocate = Allocated(keys, {1, 0}, {0, bytes_}, bytes_);  // Swapped.
  auto stored = StoreAsTheWorkerDoes(*client_, *rt_, *seq, keys, 2);
  EXPECT_EQ(stored.status().code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(fake_->committed.empty());
  fake_->allocate = Allocated(keys, {0}, {0}, bytes_);  // Fewer than asked.
  stored = StoreAsTheWorkerDoes(*client_, *rt_, *seq, keys, 2);
  EXPECT_EQ(stored.status().code(), absl::StatusCode::kInternal);
  // The copying Store refuses them too.
  std::vector<std::string> payloads = {*seq->ExtractBlock(0), *seq->ExtractBlock(1)};
  fake_->allocate = Allocated(keys, {1, 0}, {0, bytes_}, bytes_);
  EXPECT_EQ(client_->Store(rt_->spec(), keys, 0, payloads).status().code(),
            absl::StatusCode::kInternal);
}

TEST_F(CacheClientInPlace, AWriteLeaseAboutToExpireWritesNothing) {
  std::vector<uint32_t> p = Tokens(50, 9);
  auto seq = *rt_->NewSequence(64);
  ASSERT_TRUE(rt_->Prefill(p, seq.get()).ok());
  std::vector<BlockKey> keys = *ComputeBlockKeys(rt_->spec(), "", p);
  std::fill(tier_.begin(), tier_.end(), 0);
  fake_->allocate = Allocated(keys, {0, 1}, {0, bytes_}, bytes_);
  fake_->allocate.set_lease_expires_unix_ms(absl::ToUnixMillis(absl::Now() + absl::Milliseconds(50)));
  auto stored = StoreAsTheWorkerDoes(*client_, *rt_, *seq, keys, 2);
  EXPECT_EQ(stored.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(std::all_of(tier_.begin(), tier_.end(), [](uint8_t b) { return b == 0; }));
}

// GPU locations are read only through a local GPU tier, and only when the client set one;
// the client asks for them (accept_gpu) only then.
TEST_F(CacheClientInPlace, GpuLocationsNeedALocalGpuTier) {
  v1::LookupResponse r = Found(3);
  // Block 2 lies in the GPU tier, at offset bytes_.
  gpu_tier_.assign(4 * bytes_, 0);
  std::memcpy(gpu_tier_.data() + bytes_, tier_.data() + 2 * bytes_, bytes_);
  Patch(r, 2, [&](LookupBlock& b) {
    b.tier = v1::TIER_GPU;
    b.offset = bytes_;
  });
  fake_->lookup = r;
  std::vector<BlockKey> keys = *ComputeBlockKeys(rt_->spec(), "", std::span(prompt_).first(64));
  std::vector<uint8_t> seen_on_gpu;
  std::vector<const void*> seen_data;
  auto use = [&](std::span<const std::span<const PayloadPiece>> b, std::span<const uint64_t> c,
                 std::span<const uint8_t> on_gpu) {
    seen_on_gpu.assign(on_gpu.begin(), on_gpu.end());
    seen_data.clear();
    for (const auto& block : b) seen_data.push_back(block[0].data);
    return IntactPrefix(b, c);
  };
  auto without = client_->UsePrefixInPlace(rt_->spec(), keys, use);
  ASSERT_TRUE(without.ok()) << without.status();
  EXPECT_FALSE(fake_->last_accept_gpu);
  EXPECT_EQ(without->used, 2u);  // The prefix ends before the GPU block.
  EXPECT_EQ(seen_on_gpu, (std::vector<uint8_t>{0, 0}));

  client_->SetLocalGpuTier(std::span<uint8_t>(gpu_tier_));
  ASSERT_TRUE(client_->HasLocalGpuTier());
  auto with = client_->UsePrefixInPlace(rt_->spec(), keys, use);
  ASSERT_TRUE(with.ok()) << with.status();
  EXPECT_TRUE(fake_->last_accept_gpu);
  EXPECT_EQ(with->used, 3u);
  EXPECT_EQ(seen_on_gpu, (std::vector<uint8_t>{0, 0, 1}));
  ASSERT_EQ(seen_data.size(), 3u);
  EXPECT_EQ(seen_data[2], gpu_tier_.data() + bytes_);

  // A GPU extent outside the GPU tier ends the prefix before it.
  Patch(r, 2, [&](LookupBlock& b) { b.offset = 4 * bytes_; });
  fake_->lookup = r;
  auto outside = client_->UsePrefixInPlace(rt_->spec(), keys, use);
  ASSERT_TRUE(outside.ok());
  EXPECT_EQ(outside->used, 2u);
}

TEST_F(CacheClientInPlace, StoreAsksForTheGpuTierAndWritesWhereItLies) {
  gpu_tier_.assign(4 * bytes_, 0);
  std::vector<uint32_t> p = Tokens(50, 9);  // 3 full blocks.
  auto seq = *rt_->NewSequence(64);
  ASSERT_TRUE(rt_->Prefill(p, seq.get()).ok());
  std::vector<BlockKey> pk = *ComputeBlockKeys(rt_->spec(), "", p);
  fake_->allocate = Allocated(pk, {0, 1}, {0, 2 * bytes_}, bytes_);
  auto host_only = StoreAsTheWorkerDoes(*client_, *rt_, *seq, pk, 2);
  ASSERT_TRUE(host_only.ok()) << host_only.status();
  EXPECT_EQ(fake_->last_allocate_tier, v1::TIER_HOST);

  client_->SetLocalGpuTier(std::span<uint8_t>(gpu_tier_));
  // The cache put block 1 on the GPU tier, block 0 in host memory.
  v1::AllocateResponse a = Allocated(pk, {0, 1}, {3 * bytes_, 2 * bytes_}, bytes_);
  a.mutable_blocks(1)->mutable_location()->set_tier(v1::TIER_GPU);
  fake_->allocate = a;
  fake_->committed.clear();
  auto stored = StoreAsTheWorkerDoes(*client_, *rt_, *seq, pk, 2);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(fake_->last_allocate_tier, v1::TIER_GPU);
  EXPECT_EQ(stored->stored, 2u);
  const std::string b1 = *seq->ExtractBlock(1);
  EXPECT_EQ(std::memcmp(gpu_tier_.data() + 2 * bytes_, b1.data(), bytes_), 0);
  const std::string b0 = *seq->ExtractBlock(0);
  EXPECT_EQ(std::memcmp(tier_.data() + 3 * bytes_, b0.data(), bytes_), 0);

  // Space outside the GPU tier is refused before anything is written.
  a.mutable_blocks(1)->mutable_location()->mutable_extents(0)->set_offset(4 * bytes_);
  fake_->allocate = a;
  auto outside = StoreAsTheWorkerDoes(*client_, *rt_, *seq, pk, 2);
  EXPECT_EQ(outside.status().code(), absl::StatusCode::kInternal) << outside.status();
}

}  // namespace
}  // namespace tierkv
