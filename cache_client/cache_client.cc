#include "cache_client/cache_client.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/status.h"
#include "proto/grpc_status.h"
#include "tierkv/v1/cache_service.grpc.pb.h"

namespace tierkv {

void ModelSpecToProto(const ModelSpec& spec, v1::ModelSpec* proto) {
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

namespace {

constexpr int kMaxMessageBytes = 64 << 20;
constexpr size_t kPutChunkBytes = 1 << 20;

class GrpcCacheClient : public CacheClient {
 public:
  explicit GrpcCacheClient(const CacheClientOptions& options) : options_(options) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(kMaxMessageBytes);
    args.SetMaxSendMessageSize(kMaxMessageBytes);
    stub_ = v1::CacheService::NewStub(
        grpc::CreateCustomChannel(options.address, grpc::InsecureChannelCredentials(), args));
  }

  absl::StatusOr<FetchedPrefix> FetchPrefix(const ModelSpec& spec,
                                            std::span<const BlockKey> keys) override {
    FetchedPrefix out;
    absl::Time t0 = absl::Now();
    v1::LookupResponse found;
    TIERKV_RETURN_IF_ERROR(Lookup(spec, keys, /*lease=*/true, &found));
    out.lookup_time = absl::Now() - t0;
    t0 = absl::Now();
    out.blocks.reserve(found.found());
    for (uint32_t i = 0; i < found.found(); ++i) {
      auto payload = GetBlock(keys[i], found.sizes(i), found.checksums(i),
                              static_cast<int>(i) == options_.fault_corrupt_block);
      if (!payload.ok()) {
        // Missing or corrupt on the way: a miss from here on, never data for the model.
        ++out.checksum_failures;
        break;
      }
      out.blocks.push_back(*std::move(payload));
    }
    if (found.lease_id() != 0) {
      v1::ReleaseLeaseRequest release;
      release.set_lease_id(found.lease_id());
      v1::ReleaseLeaseResponse released;
      auto ctx = Context();
      stub_->ReleaseLease(ctx.get(), release, &released);  // Expiry covers a failure here.
    }
    out.fetch_time = absl::Now() - t0;
    return out;
  }

  absl::StatusOr<size_t> CountCached(const ModelSpec& spec,
                                     std::span<const BlockKey> keys) override {
    v1::LookupResponse found;
    TIERKV_RETURN_IF_ERROR(Lookup(spec, keys, /*lease=*/false, &found));
    return found.found();
  }

  absl::StatusOr<StoreResult> Store(const ModelSpec& spec, std::span<const BlockKey> keys,
                                    size_t first, std::span<const std::string> payloads) override {
    StoreResult result;
    if (payloads.empty()) return result;
    if (first + payloads.size() > keys.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Store of ", payloads.size(), " blocks from ", first, " runs past the ", keys.size(),
          "-key chain"));
    }
    const uint64_t size = spec.RawBlockBytes();
    v1::AllocateRequest alloc;
    ModelSpecToProto(spec, alloc.mutable_model());
    alloc.set_lease_ttl_ms(absl::ToInt64Milliseconds(options_.write_lease));
    for (size_t i = 0; i < payloads.size(); ++i) {
      if (payloads[i].size() != size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "payload ", i, " is ", payloads[i].size(), " bytes; a block of this model is ", size));
      }
      const size_t k = first + i;
      auto* b = alloc.add_blocks();
      b->set_key(std::string(KeyBytes(keys[k])));
      if (k > 0) b->set_parent_key(std::string(KeyBytes(keys[k - 1])));
      b->set_size(size);
      b->set_codec(v1::CODEC_RAW);
    }
    v1::AllocateResponse allocated;
    {
      auto ctx = Context();
      TIERKV_RETURN_IF_ERROR(FromGrpcStatus(stub_->Allocate(ctx.get(), alloc, &allocated)));
    }
    v1::CommitRequest commit;
    commit.set_allocation_id(allocated.allocation_id());
    for (int i = 0; i < allocated.blocks_size(); ++i) {
      const auto& b = allocated.blocks(i);
      switch (b.state()) {
        case v1::AllocateResponse::STATE_ALREADY_COMMITTED:
          ++result.already_cached;
          continue;
        case v1::AllocateResponse::STATE_IN_PROGRESS:
          ++result.in_progress;
          continue;
        default:
          break;
      }
      absl::Status put = PutBlock(allocated.allocation_id(), b.key(), payloads[i]);
      if (!put.ok()) {
        Abort(allocated.allocation_id());
        return put;
      }
      auto* c = commit.add_blocks();
      c->set_key(b.key());
      c->set_checksum(BlockChecksum(payloads[i].data(), payloads[i].size()));
    }
    if (commit.blocks_size() > 0) {
      v1::CommitResponse committed;
      auto ctx = Context();
      absl::Status s = FromGrpcStatus(stub_->Commit(ctx.get(), commit, &committed));
      if (!s.ok()) {
        Abort(allocated.allocation_id());
        return s;
      }
      result.stored = committed.committed();
    }
    return result;
  }

 private:
  std::unique_ptr<grpc::ClientContext> Context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
    return ctx;
  }

  absl::Status Lookup(const ModelSpec& spec, std::span<const BlockKey> keys, bool lease,
                      v1::LookupResponse* found) {
    v1::LookupRequest request;
    std::string* packed = request.mutable_keys();
    packed->reserve(keys.size() * kDigestBytes);
    for (const BlockKey& k : keys) packed->append(KeyBytes(k));
    request.set_fingerprint(std::string(KeyBytes(ModelFingerprint(spec))));
    request.set_lease(lease);
    auto ctx = Context();
    return FromGrpcStatus(stub_->Lookup(ctx.get(), request, found));
  }

  absl::StatusOr<std::string> GetBlock(const BlockKey& key, uint64_t size, uint64_t checksum,
                                       bool corrupt) {
    v1::GetRequest request;
    request.set_key(std::string(KeyBytes(key)));
    auto ctx = Context();
    auto reader = stub_->Get(ctx.get(), request);
    std::string payload;
    payload.reserve(size);
    v1::GetResponse message;
    while (reader->Read(&message)) {
      if (message.offset() != payload.size()) {
        ctx->TryCancel();
        reader->Finish();
        return absl::DataLossError("Get stream out of order");
      }
      payload.append(message.data());
    }
    TIERKV_RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
    if (corrupt && !payload.empty()) payload[payload.size() / 2] ^= 0x40;
    if (payload.size() != size || BlockChecksum(payload.data(), payload.size()) != checksum) {
      return absl::DataLossError(absl::StrCat("block ", ToHex(key), " failed its checksum"));
    }
    return payload;
  }

  absl::Status PutBlock(uint64_t allocation_id, const std::string& key,
                        const std::string& payload) {
    v1::PutResponse response;
    auto ctx = Context();
    auto writer = stub_->Put(ctx.get(), &response);
    for (size_t off = 0; off < payload.size(); off += kPutChunkBytes) {
      v1::PutRequest put;
      if (off == 0) {
        put.set_allocation_id(allocation_id);
        put.set_key(key);
      }
      put.set_offset(off);
      put.set_data(payload.substr(off, kPutChunkBytes));
      if (!writer->Write(put)) break;
    }
    writer->WritesDone();
    return FromGrpcStatus(writer->Finish());
  }

  void Abort(uint64_t allocation_id) {
    v1::AbortRequest abort;
    abort.set_allocation_id(allocation_id);
    v1::AbortResponse aborted;
    auto ctx = Context();
    stub_->Abort(ctx.get(), abort, &aborted);  // The write lease reclaims it otherwise.
  }

  const CacheClientOptions options_;
  std::unique_ptr<v1::CacheService::Stub> stub_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CacheClient>> CacheClient::Create(
    const CacheClientOptions& options) {
  if (options.address.empty()) {
    return absl::InvalidArgumentError("cache client: empty cache manager address");
  }
  return std::unique_ptr<CacheClient>(new GrpcCacheClient(options));
}

}  // namespace tierkv
