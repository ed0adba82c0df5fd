// CacheService and AdminService over real gRPC on 127.0.0.1, against an in-process server.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstring>
#include <random>
#include <map>
#include <filesystem>
#include <set>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "cache_manager/server.h"
#include "cache_manager/service.h"
#include "core/block_key.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/lookup_blocks.h"
#include "storage/fake_device_tier.h"
#include "tierkv/v1/admin_service.grpc.pb.h"
#include "tierkv/v1/cache_service.grpc.pb.h"

namespace tierkv {
namespace {

using ::testing::HasSubstr;

// What a client sends for a core spec (clients use cache_client's helper; this folder may
// not depend on it).
void SpecToProto(const ModelSpec& spec, v1::ModelSpec* proto) {
  proto->set_model_id(spec.model_id);
  proto->set_weights_digest(spec.weights_digest);
  proto->set_num_layers(spec.num_layers);
  proto->set_num_kv_heads(spec.num_kv_heads);
  proto->set_head_dim(spec.head_dim);
  proto->set_kv_dtype(spec.kv_dtype);
  proto->set_block_tokens(spec.block_tokens);
  proto->set_tp_rank(spec.tp_rank);
  proto->set_tp_size(spec.tp_size);
}

class CacheServiceTest : public ::testing::Test {
 protected:
  // With `data_dir`, an SSD tier of `ssd_capacity` bytes there.
  void StartServer(uint64_t capacity = 4 << 20, uint32_t event_buffer = 4096,
                   const std::string& data_dir = "", uint64_t ssd_capacity = 0,
                   DeviceTier* gpu = nullptr) {
    CacheManagerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.host_capacity_bytes = capacity;
    options.page_bytes = 4096;
    options.event_buffer = event_buffer;
    options.data_dir = data_dir;
    options.ssd_capacity_bytes = ssd_capacity;
    options.ssd_slab_bytes = 1 << 20;
    options.gpu_tier = gpu;
    auto server = CacheManagerServer::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(server).value();
    torn_down_ = false;
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    channel_ = grpc::CreateCustomChannel(server_->address(), grpc::InsecureChannelCredentials(),
                                         args);
    cache_ = v1::CacheService::NewStub(channel_);
    admin_ = v1::AdminService::NewStub(channel_);
  }
  void SetUp() override { StartServer(); }
  // Six clients looking up (with leases), reading, storing, evicting and pinning at random
  // for three seconds, then checks of what they saw.
  void ConcurrentClients();
  void TearDown() override {
    if (server_ && !torn_down_) {
      torn_down_ = true;
      EXPECT_TRUE(server_->CheckInvariants().ok()) << server_->CheckInvariants();
      server_->Shutdown();
    }
  }

  std::unique_ptr<grpc::ClientContext> Ctx() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return ctx;
  }

  std::vector<BlockKey> Chain(size_t n, uint32_t seed = 0) {
    std::vector<uint32_t> tokens(n * 16);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = seed * 7919 + i;
    return *ComputeBlockKeys(BuiltinTinyModelSpec(), "", tokens);
  }

  static std::string Payload(const BlockKey& key, size_t size) {
    std::string data(size, '\0');
    std::mt19937_64 rng(key[0] | key[1] << 8 | key[2] << 16);
    for (auto& c : data) c = static_cast<char>(rng());
    return data;
  }

  grpc::Status Allocate(const std::vector<BlockKey>& chain, size_t from, size_t to, size_t size,
                        v1::AllocateResponse* response, uint32_t ttl_ms = 0) {
    v1::AllocateRequest req;
    SpecToProto(BuiltinTinyModelSpec(), req.mutable_model());
    req.set_lease_ttl_ms(ttl_ms);
    for (size_t i = from; i < to; ++i) {
      auto* b = req.add_blocks();
      b->set_key(std::string(KeyBytes(chain[i])));
      if (i > 0) b->set_parent_key(std::string(KeyBytes(chain[i - 1])));
      b->set_size(size);
    }
    return cache_->Allocate(Ctx().get(), req, response);
  }

  grpc::Status Put(uint64_t allocation, const BlockKey& key, const std::string& data,
                   size_t chunk = 1000) {
    v1::PutResponse response;
    auto ctx = Ctx();
    auto writer = cache_->Put(ctx.get(), &response);
    for (size_t off = 0; off < data.size(); off += chunk) {
      v1::PutRequest req;
      if (off == 0) {
        req.set_allocation_id(allocation);
        req.set_key(std::string(KeyBytes(key)));
      }
      req.set_offset(off);
      req.set_data(data.substr(off, chunk));
      if (!writer->Write(req)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }

  grpc::Status Commit(uint64_t allocation, const std::vector<std::pair<BlockKey, uint64_t>>& sums) {
    v1::CommitRequest req;
    req.set_allocation_id(allocation);
    for (auto& [key, sum] : sums) {
      auto* b = req.add_blocks();
      b->set_key(std::string(KeyBytes(key)));
      b->set_checksum(sum);
    }
    v1::CommitResponse response;
    return cache_->Commit(Ctx().get(), req, &response);
  }

  // Allocate + Put + Commit of chain[from, to), blocks of `size` bytes.
  grpc::Status Store(const std::vector<BlockKey>& chain, size_t from, size_t to, size_t size) {
    v1::AllocateResponse a;
    grpc::Status s = Allocate(chain, from, to, size, &a);
    if (!s.ok()) return s;
    std::vector<std::pair<BlockKey, uint64_t>> sums;
    for (auto& b : a.blocks()) {
      if (b.state() != v1::AllocateResponse::STATE_ALLOCATED) continue;
      BlockKey key = *BlockKeyFromBytes(b.key());
      std::string data = Payload(key, size);
      s = Put(a.allocation_id(), key, data);
      if (!s.ok()) return s;
      sums.emplace_back(key, BlockChecksum(data.data(), data.size()));
    }
    if (sums.empty()) return grpc::Status::OK;
    return Commit(a.allocation_id(), sums);
  }

  grpc::Status Lookup(const std::vector<BlockKey>& chain, v1::LookupResponse* response,
                      bool lease = false) {
    v1::LookupRequest req;
    for (auto& k : chain) req.mutable_keys()->append(KeyBytes(k));
    req.set_lease(lease);
    return cache_->Lookup(Ctx().get(), req, response);
  }

  grpc::Status Get(const BlockKey& key, std::string* data, v1::BlockInfo* info = nullptr) {
    v1::GetRequest req;
    req.set_key(std::string(KeyBytes(key)));
    req.set_chunk_bytes(3000);
    auto ctx = Ctx();
    auto reader = cache_->Get(ctx.get(), req);
    v1::GetResponse msg;
    data->clear();
    while (reader->Read(&msg)) {
      if (msg.has_info() && info) *info = msg.info();
      EXPECT_EQ(msg.offset(), data->size());
      data->append(msg.data());
    }
    return reader->Finish();
  }

  std::unique_ptr<CacheManagerServer> server_;
  bool torn_down_ = false;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::CacheService::Stub> cache_;
  std::unique_ptr<v1::AdminService::Stub> admin_;
};

TEST_F(CacheServiceTest, PutCommitLookupGetRoundTrip) {
  auto chain = Chain(3);
  ASSERT_TRUE(Store(chain, 0, 3, 10000).ok());
  v1::LookupResponse found;
  ASSERT_TRUE(Lookup(chain, &found).ok());
  ASSERT_EQ(found.found(), 3u);
  // The records pass the client's shape check (pieces cover each block's size).
  auto view = LookupBlocksView::Make(found.blocks(), found.pieces(), found.found());
  ASSERT_TRUE(view.ok()) << view.status();
  ASSERT_EQ(view->size(), 3u);
  EXPECT_EQ(view->block(0).tier, v1::TIER_HOST);
  EXPECT_EQ(view->block(0).codec, v1::CODEC_RAW);
  EXPECT_EQ(view->block(0).size, 10000u);
  EXPECT_EQ(found.node(), server_->address());
  std::string data;
  v1::BlockInfo info;
  ASSERT_TRUE(Get(chain[1], &data, &info).ok());
  EXPECT_EQ(data, Payload(chain[1], 10000));
  EXPECT_EQ(BlockChecksum(data.data(), data.size()), view->block(1).checksum);
  ASSERT_EQ(info.location().extents_size(), static_cast<int>(view->block(1).pieces));
  EXPECT_EQ(info.location().extents(0).offset(), view->block(1).offset);
  EXPECT_EQ(info.parent_key(), std::string(KeyBytes(chain[0])));
  EXPECT_EQ(info.location().node(), server_->address());
}

TEST_F(CacheServiceTest, BadInputGetsSpecificCodesAndChangesNothing) {
  auto chain = Chain(2);
  v1::LookupResponse lr;
  v1::LookupRequest bad_lookup;
  bad_lookup.set_keys(std::string(KeyBytes(chain[0])) + "not-a-key");
  EXPECT_EQ(cache_->Lookup(Ctx().get(), bad_lookup, &lr).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  v1::AllocateRequest no_model;
  no_model.add_blocks()->set_key(std::string(KeyBytes(chain[0])));
  v1::AllocateResponse ar;
  EXPECT_EQ(cache_->Allocate(Ctx().get(), no_model, &ar).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  // Unknown allocation.
  EXPECT_EQ(Commit(12345, {{chain[0], 1}}).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Put(12345, chain[0], "abc").error_code(), grpc::StatusCode::NOT_FOUND);

  // Wrong checksum: DATA_LOSS, block stays invisible.
  v1::AllocateResponse a;
  ASSERT_TRUE(Allocate(chain, 0, 1, 5000, &a).ok());
  std::string data = Payload(chain[0], 5000);
  ASSERT_TRUE(Put(a.allocation_id(), chain[0], data).ok());
  auto s = Commit(a.allocation_id(), {{chain[0], BlockChecksum(data.data(), data.size()) + 1}});
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_THAT(s.error_message(), HasSubstr("checksum"));
  ASSERT_TRUE(Lookup(chain, &lr).ok());
  EXPECT_EQ(lr.found(), 0u);

  // Put beyond the declared size.
  EXPECT_EQ(Put(a.allocation_id(), chain[0], data + "x", 10000).error_code(),
            grpc::StatusCode::OUT_OF_RANGE);

  // Capacity exhausted: a block larger than the tier.
  v1::AllocateResponse big;
  EXPECT_EQ(Allocate(Chain(1, 5), 0, 1, 8 << 20, &big).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);

  // Expired lease.
  v1::AllocateResponse shortlived;
  auto other = Chain(1, 9);
  ASSERT_TRUE(Allocate(other, 0, 1, 100, &shortlived, 50).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  s = Commit(shortlived.allocation_id(), {{other[0], 0}});
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("expired"));

  // Malformed keys for operator calls.
  v1::EvictRequest evict;
  evict.add_keys("zz");
  v1::EvictResponse er;
  EXPECT_EQ(cache_->Evict(Ctx().get(), evict, &er).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::ListBlocksRequest list;
  list.set_page_token("garbage");
  v1::ListBlocksResponse lbr;
  EXPECT_EQ(admin_->ListBlocks(Ctx().get(), list, &lbr).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  v1::StatsResponse stats;
  ASSERT_TRUE(admin_->Stats(Ctx().get(), v1::StatsRequest(), &stats).ok());
  EXPECT_EQ(stats.tiers(0).blocks(), 0u);
  EXPECT_EQ(stats.checksum_failures(), 1u);
  EXPECT_EQ(stats.expired_allocations(), 1u);
  EXPECT_EQ(stats.allocation_failures(), 1u);
}

TEST_F(CacheServiceTest, InspectByTokensExplainsMisses) {
  ModelSpec spec = BuiltinTinyModelSpec();
  std::vector<uint32_t> tokens(16 * 4 + 5);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = 100 + i;
  auto keys = *ComputeBlockKeys(spec, "", tokens);
  ASSERT_TRUE(Store(keys, 0, 2, 4096).ok());
  v1::EvictRequest evict;
  evict.add_keys(std::string(KeyBytes(keys[1])));
  v1::EvictResponse er;
  ASSERT_TRUE(cache_->Evict(Ctx().get(), evict, &er).ok());

  v1::InspectPrefixRequest req;
  SpecToProto(spec, req.mutable_tokens()->mutable_model());
  for (uint32_t t : tokens) req.mutable_tokens()->add_tokens(t);
  v1::InspectPrefixResponse resp;
  ASSERT_TRUE(admin_->InspectPrefix(Ctx().get(), req, &resp).ok());
  ASSERT_EQ(resp.blocks_size(), 4);
  EXPECT_EQ(resp.prefix_blocks(), 1u);
  EXPECT_EQ(resp.tail_tokens(), 5u);
  EXPECT_EQ(resp.blocks(0).state(), v1::InspectPrefixResponse::STATE_FOUND);
  EXPECT_EQ(resp.blocks(1).state(), v1::InspectPrefixResponse::STATE_EVICTED);
  EXPECT_EQ(resp.blocks(2).state(), v1::InspectPrefixResponse::STATE_NEVER_STORED);

  req.mutable_tokens()->mutable_model()->set_block_tokens(12);
  EXPECT_EQ(admin_->InspectPrefix(Ctx().get(), req, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(CacheServiceTest, WatchStreamsStoredAndEvictedEvents) {
  auto chain = Chain(2);
  grpc::ClientContext ctx;
  v1::WatchEventsRequest req;
  req.set_from_sequence(1);
  auto reader = cache_->WatchEvents(&ctx, req);
  ASSERT_TRUE(Store(chain, 0, 2, 100).ok());
  v1::EvictRequest evict;
  evict.add_keys(std::string(KeyBytes(chain[0])));
  v1::EvictResponse er;
  ASSERT_TRUE(cache_->Evict(Ctx().get(), evict, &er).ok());
  std::vector<v1::Event> got;
  v1::Event e;
  while (got.size() < 4 && reader->Read(&e)) got.push_back(e);
  ctx.TryCancel();
  reader->Finish();
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].type(), v1::Event::TYPE_STORED);
  EXPECT_EQ(got[0].sequence(), 1u);
  EXPECT_EQ(got[3].type(), v1::Event::TYPE_EVICTED);
  EXPECT_EQ(got[3].reason(), "requested");
}

TEST_F(CacheServiceTest, WatcherBehindIsToldWhatItMissed) {
  TearDown();
  StartServer(4 << 20, /*event_buffer=*/4);
  for (uint32_t i = 0; i < 10; ++i) ASSERT_TRUE(Store(Chain(1, 100 + i), 0, 1, 100).ok());
  grpc::ClientContext ctx;
  v1::WatchEventsRequest req;
  req.set_from_sequence(1);
  auto reader = cache_->WatchEvents(&ctx, req);
  v1::Event e;
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.type(), v1::Event::TYPE_MISSED);
  EXPECT_EQ(e.missed_from(), 1u);
  EXPECT_EQ(e.missed_to(), 6u);
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.type(), v1::Event::TYPE_STORED);
  EXPECT_EQ(e.sequence(), 7u);
  ctx.TryCancel();
  reader->Finish();
}

TEST_F(CacheServiceTest, HealthAndReflectionAreServed) {
  // Health: the default service answers Check for the empty service name.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  // grpc.health.v1.HealthCheckRequest{service=""} serializes to no bytes; the response
  // {status=SERVING} to 0x08 0x01.
  grpc::GenericStub generic(channel_);
  grpc::ByteBuffer request_buffer;
  grpc::Slice empty("");
  request_buffer = grpc::ByteBuffer(&empty, 1);
  grpc::ByteBuffer response_buffer;
  absl::Notification done;
  grpc::Status status;
  generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request_buffer,
                    &response_buffer, [&](grpc::Status s) {
                      status = s;
                      done.Notify();
                    });
  done.WaitForNotification();
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response_buffer.Dump(&slices).ok());
  std::string bytes;
  for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));

  // Reflection: ServerReflectionInfo with list_services (field 7, "") names our services.
  grpc::ClientContext rctx;
  rctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::CompletionQueue cq;
  auto call = generic.PrepareCall(&rctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag;
  bool ok;
  auto step = [&](intptr_t want) {
    EXPECT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(tag), want);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(step(1));
  grpc::Slice list_services(std::string("\x3a\x00", 2));
  grpc::ByteBuffer list_request(&list_services, 1);
  call->Write(list_request, reinterpret_cast<void*>(2));
  ASSERT_TRUE(step(2));
  grpc::ByteBuffer reply;
  call->Read(&reply, reinterpret_cast<void*>(3));
  ASSERT_TRUE(step(3));
  slices.clear();
  ASSERT_TRUE(reply.Dump(&slices).ok());
  bytes.clear();
  for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_THAT(bytes, HasSubstr("tierkv.v1.CacheService"));
  EXPECT_THAT(bytes, HasSubstr("tierkv.v1.AdminService"));
  EXPECT_THAT(bytes, HasSubstr("grpc.health.v1.Health"));
  call->WritesDone(reinterpret_cast<void*>(4));
  step(4);
  grpc::Status finish;
  call->Finish(&finish, reinterpret_cast<void*>(5));
  step(5);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

// Many clients doing Lookup (with leases) / Allocate / Put / Commit / Evict / Pin against a
// small tier for a bounded time. Afterwards: the server's invariants hold; every block read
// under a lease was intact; every pinned block is still there; and every block whose Commit
// returned OK is either still found or was reported evicted.
TEST_F(CacheServiceTest, ConcurrentClientsKeepInvariants) {
  TearDown();
  StartServer(/*capacity=*/256 * 4096, /*event_buffer=*/1 << 20);
  ConcurrentClients();
}

// The same with an SSD tier: demotions and promotions release the index lock for their
// I/O while the clients go on.
TEST_F(CacheServiceTest, ConcurrentClientsKeepInvariantsWithAnSsdTier) {
  TearDown();
  std::string dir = (std::filesystem::current_path() / "cache-service-ssd-XXXXXX").string();
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  StartServer(/*capacity=*/128 * 4096, /*event_buffer=*/1 << 20, dir, /*ssd_capacity=*/2 << 20);
  ConcurrentClients();
  v1::StatsResponse stats;
  ASSERT_TRUE(admin_->Stats(Ctx().get(), v1::StatsRequest(), &stats).ok());
  ASSERT_EQ(stats.tiers_size(), 2);
  EXPECT_GT(stats.demotions(), 0u);
  EXPECT_GT(stats.promotions(), 0u);
  EXPECT_LE(stats.tiers(1).used_bytes(), stats.tiers(1).capacity_bytes());
  EXPECT_EQ(stats.ssd_read_failures(), 0u);
  TearDown();
  server_.reset();
  std::filesystem::remove_all(dir);
}

void CacheServiceTest::ConcurrentClients() {
  grpc::ClientContext watch_ctx;
  v1::WatchEventsRequest watch_req;
  watch_req.set_from_sequence(1);
  auto watch = cache_->WatchEvents(&watch_ctx, watch_req);
  absl::Mutex mu;
  std::set<BlockKey> committed;
  std::map<BlockKey, std::vector<uint64_t>> evicted;  // Key -> eviction event sequences.
  std::map<BlockKey, uint64_t> pinned;                 // Key -> last event before the pin.
  std::vector<uint64_t> kept_leases;                   // Left to expire.
  std::atomic<int> corrupt{0}, leased_missing{0}, unexpected{0}, stores{0};
  auto report = [&](const char* what, const grpc::Status& status) {
    ++unexpected;
    ADD_FAILURE() << what << ": " << status.error_code() << " " << status.error_message();
  };
  std::atomic<uint64_t> watched{0};  // Latest event sequence the watcher has handled.
  std::thread watcher([&] {
    v1::Event e;
    while (watch->Read(&e)) {
      if (e.type() == v1::Event::TYPE_EVICTED) {
        absl::MutexLock lock(&mu);
        evicted[*BlockKeyFromBytes(e.key())].push_back(e.sequence());
      }
      if (e.type() == v1::Event::TYPE_MISSED) ++unexpected;
      watched.store(e.sequence());
    }
  });
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int t = 0; t < 6; ++t) {
    clients.emplace_back([&, t] {
      std::mt19937 rng(t + 1);
      while (!stop) {
        auto chain = Chain(1 + rng() % 8, rng() % 40);
        const size_t size = 4096 * (1 + rng() % 3);
        v1::LookupResponse found;
        if (!Lookup(chain, &found, /*lease=*/true).ok()) {
          ++unexpected;
          continue;
        }
        // Under the lease every found block must stay readable and intact.
        for (uint32_t i = 0; i < found.found(); ++i) {
          std::string data;
          grpc::Status s = Get(chain[i], &data);
          if (!s.ok()) {
            ++leased_missing;
          } else if (BlockChecksum(data.data(), data.size()) !=
                     DecodeLookupBlock(found.blocks().data() + i * kLookupRecordBytes).checksum) {
            ++corrupt;
          }
        }
        if (found.lease_id() != 0 && rng() % 4 != 0) {
          v1::ReleaseLeaseRequest rel;
          rel.set_lease_id(found.lease_id());
          v1::ReleaseLeaseResponse rr;
          if (grpc::Status r = cache_->ReleaseLease(Ctx().get(), rel, &rr); !r.ok()) {
            report("ReleaseLease", r);
          }
        } else if (found.lease_id() != 0) {
          absl::MutexLock lock(&mu);
          kept_leases.push_back(found.lease_id());
        }
        const size_t have = found.found();
        if (have < chain.size()) {
          // Sizes of a chain must agree between writers; derive from the chain's seed.
          const size_t chain_size = 4096 * (1 + chain[0][0] % 3);
          v1::AllocateResponse a;
          grpc::Status s = Allocate(chain, have, chain.size(), chain_size, &a);
          if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) continue;
          if (!s.ok()) {
            report("Allocate", s);
            continue;
          }
          std::vector<std::pair<BlockKey, uint64_t>> sums;
          for (auto& b : a.blocks()) {
            if (b.state() != v1::AllocateResponse::STATE_ALLOCATED) continue;
            BlockKey key = *BlockKeyFromBytes(b.key());
            std::string data = Payload(key, chain_size);
            if (grpc::Status put = Put(a.allocation_id(), key, data, 4096); !put.ok()) {
              report("Put", put);
            }
            sums.emplace_back(key, BlockChecksum(data.data(), data.size()));
          }
          if (!sums.empty()) {
            grpc::Status commit = Commit(a.allocation_id(), sums);
            if (commit.ok()) {
              absl::MutexLock lock(&mu);
              for (auto& [k, sum] : sums) committed.insert(k);
              ++stores;
            } else {
              report("Commit", commit);
            }
          }
        }
        (void)size;
        if (rng() % 10 == 0 && have > 0) {
          v1::EvictRequest ev;
          ev.add_keys(std::string(KeyBytes(chain[rng() % have])));
          v1::EvictResponse er;
          auto s = cache_->Evict(Ctx().get(), ev, &er);
          // UNAVAILABLE: the block is moving between tiers at that moment (retry).
          if (!s.ok() && s.error_code() != grpc::StatusCode::FAILED_PRECONDITION &&
              s.error_code() != grpc::StatusCode::NOT_FOUND &&
              s.error_code() != grpc::StatusCode::UNAVAILABLE) {
            report("Evict", s);
          }
        }
        if (t == 0 && rng() % 20 == 0 && have > 0) {
          v1::PinRequest pin;
          pin.add_keys(std::string(KeyBytes(chain[0])));
          v1::PinResponse pr;
          v1::StatsResponse after_pin;
          if (cache_->Pin(Ctx().get(), pin, &pr).ok() &&
              admin_->Stats(Ctx().get(), v1::StatsRequest(), &after_pin).ok()) {
            absl::MutexLock lock(&mu);
            if (pinned.size() < 8 || pinned.count(chain[0])) {
              pinned.emplace(chain[0], after_pin.last_event_sequence());
            } else {
              cache_->Unpin(Ctx().get(), pin, &pr);
            }
          }
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::seconds(3));
  stop = true;
  for (auto& c : clients) c.join();
  // Nothing committed is lost except by eviction. (Release the leases left running first: an
  // SSD-only block can only be read once host memory has room for it. Reading it back can
  // itself demote or evict others, so the watcher runs until the end.)
  for (uint64_t id : kept_leases) {
    v1::ReleaseLeaseRequest rel;
    rel.set_lease_id(id);
    v1::ReleaseLeaseResponse rr;
    cache_->ReleaseLease(Ctx().get(), rel, &rr);  // Some expired already.
  }
  std::vector<std::pair<BlockKey, std::string>> unreadable;
  {
    std::set<BlockKey> keys;
    {
      absl::MutexLock lock(&mu);
      keys = committed;
    }
    for (const BlockKey& key : keys) {
      std::string data;
      grpc::Status got = Get(key, &data);
      if (!got.ok()) unreadable.emplace_back(key, got.error_message());
    }
  }
  // Let the watcher drain everything published (a busy machine may delay it), then stop it.
  v1::StatsResponse published;
  ASSERT_TRUE(admin_->Stats(Ctx().get(), v1::StatsRequest(), &published).ok());
  const absl::Time drain_deadline = absl::Now() + absl::Seconds(20);
  while (watched.load() < published.last_event_sequence() && absl::Now() < drain_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GE(watched.load(), published.last_event_sequence()) << "the watcher fell behind";
  watch_ctx.TryCancel();
  watcher.join();
  watch->Finish();

  EXPECT_GT(stores.load(), 20);
  EXPECT_EQ(corrupt.load(), 0);
  EXPECT_EQ(leased_missing.load(), 0);
  EXPECT_EQ(unexpected.load(), 0);
  ASSERT_TRUE(server_->CheckInvariants().ok()) << server_->CheckInvariants();
  v1::StatsResponse stats;
  ASSERT_TRUE(admin_->Stats(Ctx().get(), v1::StatsRequest(), &stats).ok());
  EXPECT_LE(stats.tiers(0).used_bytes(), stats.tiers(0).capacity_bytes());
  EXPECT_GT(stats.tiers(0).evictions(), 0u);
  absl::MutexLock lock(&mu);
  for (const auto& [key, pinned_at] : pinned) {
    v1::LookupResponse r;
    ASSERT_TRUE(Lookup({key}, &r).ok());
    EXPECT_EQ(r.found(), 1u) << "pinned block " << ToHex(key) << " is gone";
    for (uint64_t seq : evicted[key]) {
      EXPECT_LE(seq, pinned_at) << "pinned block " << ToHex(key) << " evicted at event " << seq;
    }
  }
  for (const auto& [key, why] : unreadable) {
    EXPECT_TRUE(evicted.count(key)) << "block " << ToHex(key) << " vanished without eviction: "
                                    << why;
  }
}

// The GPU tier through the API: TIER_GPU allocations, GPU locations only for callers that
// say they share the GPU, host copies for everyone else, Put refused, Stats and BlockInfo.
TEST_F(CacheServiceTest, GpuTierOverGrpc) {
  TearDown();
  auto gpu = FakeDeviceTier::Create(64 * 4096, 4096);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  StartServer(4 << 20, 4096, "", 0, gpu->get());
  auto chain = Chain(3, 5);
  constexpr size_t kSize = 8192;

  v1::AllocateRequest req;
  SpecToProto(BuiltinTinyModelSpec(), req.mutable_model());
  for (size_t i = 0; i < chain.size(); ++i) {
    auto* b = req.add_blocks();
    b->set_key(std::string(KeyBytes(chain[i])));
    if (i > 0) b->set_parent_key(std::string(KeyBytes(chain[i - 1])));
    b->set_size(kSize);
  }
  // SSD is not a place to write new blocks.
  req.set_tier(v1::TIER_SSD);
  v1::AllocateResponse a;
  grpc::Status status = cache_->Allocate(Ctx().get(), req, &a);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("TIER_HOST or TIER_GPU"));

  req.set_tier(v1::TIER_GPU);
  ASSERT_TRUE(cache_->Allocate(Ctx().get(), req, &a).ok());
  ASSERT_EQ(a.blocks_size(), 3);
  std::vector<std::pair<BlockKey, uint64_t>> sums;
  for (const auto& b : a.blocks()) {
    ASSERT_EQ(b.location().tier(), v1::TIER_GPU);
    EXPECT_EQ(b.location().remote_base(), 0u);  // Peers cannot reach it.
    BlockKey key = *BlockKeyFromBytes(b.key());
    std::string data = Payload(key, kSize);
    // Put cannot fill GPU space.
    grpc::Status put = Put(a.allocation_id(), key, data);
    EXPECT_EQ(put.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << put.error_message();
    // The in-process writer writes it in place.
    size_t at = 0;
    for (const auto& e : b.location().extents()) {
      std::memcpy((*gpu)->device_bytes() + e.offset(), data.data() + at, e.length());
      at += e.length();
    }
    sums.emplace_back(key, BlockChecksum(data.data(), data.size()));
  }
  ASSERT_TRUE(Commit(a.allocation_id(), sums).ok());

  // Sharing the GPU: GPU locations, nothing copied.
  v1::LookupRequest lookup;
  for (auto& k : chain) lookup.mutable_keys()->append(KeyBytes(k));
  lookup.set_accept_gpu(true);
  v1::LookupResponse r;
  ASSERT_TRUE(cache_->Lookup(Ctx().get(), lookup, &r).ok());
  ASSERT_EQ(r.found(), 3u);
  for (uint32_t i = 0; i < r.found(); ++i) {
    EXPECT_EQ(DecodeLookupBlock(r.blocks().data() + i * kLookupRecordBytes).tier, v1::TIER_GPU);
  }
  EXPECT_EQ((*gpu)->copies(), 0u);
  // Anyone else: host locations, with the same bytes as a Get returns.
  ASSERT_TRUE(Lookup(chain, &r).ok());
  ASSERT_EQ(r.found(), 3u);
  for (uint32_t i = 0; i < r.found(); ++i) {
    EXPECT_EQ(DecodeLookupBlock(r.blocks().data() + i * kLookupRecordBytes).tier, v1::TIER_HOST);
  }
  std::string got;
  v1::BlockInfo info;
  ASSERT_TRUE(Get(chain[2], &got, &info).ok());
  EXPECT_TRUE(got == Payload(chain[2], kSize));
  EXPECT_THAT(info.tiers(), ::testing::ElementsAre(v1::TIER_GPU, v1::TIER_HOST));

  v1::StatsResponse stats;
  ASSERT_TRUE(admin_->Stats(Ctx().get(), v1::StatsRequest(), &stats).ok());
  ASSERT_EQ(stats.tiers_size(), 2);
  EXPECT_EQ(stats.tiers(0).tier(), v1::TIER_GPU);
  EXPECT_EQ(stats.tiers(0).blocks(), 3u);
  EXPECT_EQ(stats.tiers(0).hits(), 3u);
  EXPECT_EQ(stats.tiers(1).tier(), v1::TIER_HOST);
  EXPECT_EQ(stats.tiers(1).blocks(), 3u);
  EXPECT_EQ(stats.gpu_device(), "fake device");
  EXPECT_EQ(stats.gpu_to_host(), 3u);
  TearDown();
  server_.reset();  // Before the GPU tier it uses.
}

}  // namespace
}  // namespace tierkv
