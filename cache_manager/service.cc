#include "cache_manager/service.h"

#include <algorithm>
#include <charconv>
#include <deque>

#include <google/protobuf/arena.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include "absl/strings/str_cat.h"
#include "cache_manager/lookup_response_encoder.h"
#include "proto/grpc_status.h"

namespace tierkv {
namespace {

constexpr uint64_t kDefaultChunkBytes = 1 << 20;
constexpr uint64_t kMaxChunkBytes = 4 << 20;
constexpr uint32_t kDefaultListPage = 1000;
constexpr uint32_t kMaxListPage = 10000;
constexpr size_t kMaxInspectTokens = 16 << 20;
// Records a Lookup's response reserves room for up front (32 bytes each); a longer prefix
// grows the buffer.
constexpr size_t kLookupRecordsReserved = 16384;

absl::Duration TtlFromMs(uint32_t ms) { return absl::Milliseconds(ms); }

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context, const absl::Status& status) {
  auto* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

std::vector<std::string> Strings(const google::protobuf::RepeatedPtrField<std::string>& in) {
  return std::vector<std::string>(in.begin(), in.end());
}

uint64_t RemoteBase(const ServiceContext& ctx) {
  return ctx.region == nullptr ? 0 : reinterpret_cast<uint64_t>(ctx.region->base());
}

void FillLocation(const ServiceContext& ctx, const PoolAllocation& space,
                  v1::BlockLocation* location, bool on_gpu = false) {
  location->set_tier(on_gpu ? v1::TIER_GPU : v1::TIER_HOST);
  location->set_remote_base(on_gpu ? 0 : RemoteBase(ctx));
  for (const PoolExtent& e : space.extents) {
    auto* extent = location->add_extents();
    extent->set_offset(e.offset);
    extent->set_length(e.length);
  }
}

void FillBlockInfo(const ServiceContext& ctx, const CommittedBlock& block, v1::BlockInfo* info) {
  info->set_key(std::string(KeyBytes(block.key)));
  if (block.parent) info->set_parent_key(std::string(KeyBytes(*block.parent)));
  info->set_size(block.size);
  info->set_checksum(block.checksum);
  info->set_codec(static_cast<v1::Codec>(block.codec));
  info->set_fingerprint(std::string(KeyBytes(block.fingerprint)));
  auto* location = info->mutable_location();
  location->set_node(ctx.node_name());
  if (block.in_gpu) info->add_tiers(v1::TIER_GPU);
  if (block.in_host) {
    FillLocation(ctx, block.space, location);
    info->add_tiers(v1::TIER_HOST);
  } else if (block.in_gpu) {
    FillLocation(ctx, block.gpu_space, location, /*on_gpu=*/true);
  } else {
    location->set_tier(v1::TIER_SSD);
  }
  if (block.ssd) info->add_tiers(v1::TIER_SSD);
  info->set_pinned(block.pinned);
  info->set_readers(block.readers);
  info->set_children(block.children);
  info->set_hits(block.hits());
  info->set_committed_unix_ms(absl::ToUnixMillis(block.committed_at));
  info->set_last_access_unix_ms(absl::ToUnixMillis(block.last_access()));
}

v1::InspectPrefixResponse::State ToProto(InspectState state) {
  switch (state) {
    case InspectState::kFound:
      return v1::InspectPrefixResponse::STATE_FOUND;
    case InspectState::kNeverStored:
      return v1::InspectPrefixResponse::STATE_NEVER_STORED;
    case InspectState::kEvicted:
      return v1::InspectPrefixResponse::STATE_EVICTED;
    case InspectState::kUncommitted:
      return v1::InspectPrefixResponse::STATE_UNCOMMITTED;
    case InspectState::kFingerprintMismatch:
      return v1::InspectPrefixResponse::STATE_FINGERPRINT_MISMATCH;
    case InspectState::kUnreachable:
      return v1::InspectPrefixResponse::STATE_UNREACHABLE;
    case InspectState::kChecksumFailure:
      return v1::InspectPrefixResponse::STATE_CHECKSUM_FAILURE;
  }
  return v1::InspectPrefixResponse::STATE_UNSPECIFIED;
}

// Put: the first message names the allocation and block; every message carries bytes at
// its offset. Bytes go straight from the received message into the pool.
class PutReactor : public grpc::ServerReadReactor<v1::PutRequest> {
 public:
  PutReactor(const ServiceContext& ctx, v1::PutResponse* response)
      : ctx_(ctx), response_(response) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // The client half-closed: all data received.
      if (!started_) {
        Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "Put stream carried no message; send allocation_id and key first"));
        return;
      }
      response_->set_bytes_written(written_);
      Finish(grpc::Status::OK);
      return;
    }
    if (!started_) {
      started_ = true;
      allocation_id_ = request_.allocation_id();
      key_ = request_.key();
    } else if ((request_.allocation_id() != 0 && request_.allocation_id() != allocation_id_) ||
               (!request_.key().empty() && request_.key() != key_)) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "a Put stream writes one block: later messages must repeat the first "
                          "message's allocation_id and key, or leave them empty"));
      return;
    }
    absl::Status status =
        ctx_.index->Write(allocation_id_, key_, request_.offset(), request_.data());
    if (!status.ok()) {
      Finish(ToGrpcStatus(status));
      return;
    }
    written_ += request_.data().size();
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  const ServiceContext& ctx_;
  v1::PutResponse* response_;
  v1::PutRequest request_;
  bool started_ = false;
  uint64_t allocation_id_ = 0;
  std::string key_;
  uint64_t written_ = 0;
};

// Get: the block is held against eviction for the stream's life, and each message is
// copied straight from the pool, one in flight at a time.
class GetReactor : public grpc::ServerWriteReactor<v1::GetResponse> {
 public:
  GetReactor(const ServiceContext& ctx, const v1::GetRequest* request) : pool_(ctx.pool) {
    chunk_ = request->chunk_bytes() == 0 ? kDefaultChunkBytes : request->chunk_bytes();
    if (chunk_ > kMaxChunkBytes) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("chunk_bytes ", chunk_, " is above the maximum of ",
                                       kMaxChunkBytes)));
      return;
    }
    auto hold = ctx.index->Hold(request->key(), [&](const CommittedBlock& b) {
      FillBlockInfo(ctx, b, message_.mutable_info());
    });
    if (!hold.ok()) {
      Finish(ToGrpcStatus(hold.status()));
      return;
    }
    hold_ = std::move(hold).value();
    NextWrite();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client stopped reading"));
      return;
    }
    message_.clear_info();
    NextWrite();
  }

  void OnDone() override { delete this; }

 private:
  void NextWrite() {
    const uint64_t size = hold_.space().size;
    if (offset_ >= size && offset_ > 0) {
      Finish(grpc::Status::OK);
      return;
    }
    const uint64_t n = std::min(chunk_, size - offset_);
    message_.set_offset(offset_);
    std::string* data = message_.mutable_data();
    data->resize(n);
    pool_->Read(hold_.space(), offset_, data->data(), n);
    offset_ += n;
    StartWrite(&message_);
  }

  HostPool* const pool_;
  uint64_t chunk_ = 0;
  uint64_t offset_ = 0;
  BlockIndex::ReadHold hold_;
  v1::GetResponse message_;
};

// WatchEvents: one event in flight at a time; a cursor behind the log's window produces a
// TYPE_MISSED event instead of a silent skip.
class WatchReactor : public grpc::ServerWriteReactor<v1::Event> {
 public:
  WatchReactor(const ServiceContext& ctx, const v1::WatchEventsRequest* request)
      : events_(ctx.events) {
    {
      absl::MutexLock lock(&mu_);
      cursor_ = request->from_sequence() != 0 ? request->from_sequence()
                                              : events_->last_sequence() + 1;
    }
    handle_ = events_->Subscribe([this] { TryWrite(); });
    TryWrite();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      FinishOnce("watcher went away");
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
    }
    TryWrite();
  }

  void OnCancel() override { FinishOnce("watch cancelled"); }

  void OnDone() override {
    events_->Unsubscribe(handle_);
    delete this;
  }

 private:
  void TryWrite() {
    absl::MutexLock lock(&mu_);
    if (writing_ || finished_) return;
    EventLog::ReadResult r = events_->Read(cursor_, 1);
    message_.Clear();
    if (r.missed_from != 0) {
      message_.set_type(v1::Event::TYPE_MISSED);
      message_.set_sequence(r.missed_to);
      message_.set_missed_from(r.missed_from);
      message_.set_missed_to(r.missed_to);
      cursor_ = r.missed_to + 1;
    } else if (!r.events.empty()) {
      const CacheEvent& e = r.events.front();
      message_.set_sequence(e.sequence);
      message_.set_type(static_cast<v1::Event::Type>(e.type));
      message_.set_key(std::string(KeyBytes(e.key)));
      if (e.parent) message_.set_parent_key(std::string(KeyBytes(*e.parent)));
      message_.set_tier(static_cast<v1::Tier>(e.tier));
      message_.set_size(e.size);
      message_.set_unix_ms(absl::ToUnixMillis(e.time));
      message_.set_reason(e.reason);
      cursor_ = e.sequence + 1;
    } else {
      return;
    }
    writing_ = true;
    StartWrite(&message_);
  }

  // Finish runs inside a reaction, so OnDone (which deletes this) cannot run before the
  // lock is released.
  void FinishOnce(const char* why) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
    Finish(grpc::Status(grpc::StatusCode::CANCELLED, why));
  }

  EventLog* const events_;
  uint64_t handle_ = 0;
  absl::Mutex mu_;
  uint64_t cursor_ ABSL_GUARDED_BY(mu_) = 0;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  v1::Event message_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

ModelSpec ModelSpecFromProto(const v1::ModelSpec& proto) {
  ModelSpec spec;
  spec.model_id = proto.model_id();
  spec.weights_digest = proto.weights_digest();
  spec.num_layers = proto.num_layers();
  spec.num_kv_heads = proto.num_kv_heads();
  spec.head_dim = proto.head_dim();
  spec.kv_dtype = proto.kv_dtype();
  spec.block_tokens = proto.block_tokens();
  spec.tp_rank = proto.tp_rank();
  spec.tp_size = proto.tp_size();
  return spec;
}


// ---------------------------------------------------------------------------------------
// CacheService

grpc::ServerUnaryReactor* CacheServiceImpl::Lookup(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* raw_request,
                                                   grpc::ByteBuffer* raw_response) {
  // The request is parsed into an arena whose first block is this thread's, kept between
  // calls: a 128K-token prompt's keys are a quarter MiB, and a fresh allocation of that
  // size costs its page faults on every call.
  constexpr size_t kArenaBlock = 1 << 20;
  thread_local std::unique_ptr<char[]> arena_block(new char[kArenaBlock]);
  google::protobuf::ArenaOptions arena_options;
  arena_options.initial_block = arena_block.get();
  arena_options.initial_block_size = kArenaBlock;
  google::protobuf::Arena arena(arena_options);
  v1::LookupRequest& message = *google::protobuf::Arena::CreateMessage<v1::LookupRequest>(&arena);
  {
    grpc::ByteBuffer buffer(*raw_request);  // Shares the slices; parsing consumes them.
    const grpc::Status parsed =
        grpc::GenericDeserialize<grpc::ProtoBufferReader, v1::LookupRequest>(&buffer, &message);
    if (!parsed.ok()) {
      return Done(context, absl::InvalidArgumentError(absl::StrCat(
                               "the request is not a valid LookupRequest: ",
                               parsed.error_message())));
    }
  }
  const v1::LookupRequest* request = &message;
  const std::string& packed = request->keys();
  if (packed.size() % kDigestBytes != 0) {
    return Done(context, absl::InvalidArgumentError(absl::StrCat(
                             "keys is ", packed.size(), " bytes, not a whole number of ",
                             kDigestBytes, "-byte block keys")));
  }
  std::optional<Digest> fingerprint;
  if (!request->fingerprint().empty()) {
    auto fp = BlockKeyFromBytes(request->fingerprint());
    if (!fp.ok()) {
      return Done(context, absl::InvalidArgumentError(
                               absl::StrCat("fingerprint: ", fp.status().message())));
    }
    fingerprint = *fp;
  }
  std::vector<uint32_t> codecs(request->accept_codecs().begin(), request->accept_codecs().end());
  for (uint32_t& c : codecs) {
    if (c == v1::CODEC_UNSPECIFIED) c = v1::CODEC_RAW;
  }
  const size_t n = packed.size() / kDigestBytes;
  LookupResponseEncoder encoder;
  encoder.Reset(std::min(n, kLookupRecordsReserved));
  static_assert(LookupResponseEncoder::kHostTier == v1::TIER_HOST);
  const bool accept_gpu = request->accept_gpu();
  auto result = ctx_.index->LookupPackedBatches(
      packed, fingerprint, codecs, request->lease(), TtlFromMs(request->lease_ttl_ms()),
      [&](BlockIndex::BlockBatch blocks) {
        for (const CommittedBlock* b : blocks) {
          const CommittedBlock& block = *b;
          if (accept_gpu && block.in_gpu) {
            encoder.AddBlock(block.size, block.checksum, block.codec, v1::TIER_GPU,
                             block.gpu_space.extents);
          } else if (block.host_offset != CommittedBlock::kSplitHostCopy) {
            // In one piece: everything the record needs is in the block's first line.
            encoder.AddBlock(block.size, block.checksum, block.codec, v1::TIER_HOST,
                             block.host_offset);
          } else {
            encoder.AddBlock(block.size, block.checksum, block.codec, v1::TIER_HOST,
                             block.space.extents);
          }
        }
      },
      accept_gpu, encoder.sink());
  if (!result.ok()) return Done(context, result.status());
  LookupResponseEncoder::Header header;
  header.found = static_cast<uint32_t>(result->found);
  std::string node;
  if (result->found > 0) {
    node = ctx_.node_name();
    header.node = node;
    header.remote_base = RemoteBase(ctx_);
  }
  header.lease_id = result->lease_id;
  if (result->lease_id != 0) {
    header.lease_expires_unix_ms = absl::ToUnixMillis(result->lease_expires);
  }
  *raw_response = encoder.Finish(header);
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* CacheServiceImpl::Allocate(grpc::CallbackServerContext* context,
                                                     const v1::AllocateRequest* request,
                                                     v1::AllocateResponse* response) {
  if (!request->has_model()) {
    return Done(context, absl::InvalidArgumentError(
                             "Allocate needs the model spec the blocks belong to"));
  }
  const v1::Tier tier = request->tier();
  if (tier != v1::TIER_UNSPECIFIED && tier != v1::TIER_HOST && tier != v1::TIER_GPU) {
    return Done(context, absl::InvalidArgumentError(absl::StrCat(
                             "tier ", static_cast<int>(tier),
                             ": new blocks go to TIER_HOST or TIER_GPU; SSD copies are made "
                             "by demotion")));
  }
  std::vector<AllocateBlockSpec> blocks;
  blocks.reserve(request->blocks_size());
  for (const auto& b : request->blocks()) {
    blocks.push_back({b.key(), b.parent_key(), b.size(), static_cast<uint32_t>(b.codec())});
  }
  auto result = ctx_.index->Allocate(ModelSpecFromProto(request->model()), blocks,
                                     TtlFromMs(request->lease_ttl_ms()),
                                     /*prefer_gpu=*/tier == v1::TIER_GPU);
  if (!result.ok()) return Done(context, result.status());
  response->set_allocation_id(result->allocation_id);
  if (result->allocation_id != 0) {
    response->set_lease_expires_unix_ms(absl::ToUnixMillis(result->lease_expires));
  }
  for (const AllocateResult::Block& b : result->blocks) {
    auto* out = response->add_blocks();
    out->set_key(std::string(KeyBytes(b.key)));
    switch (b.state) {
      case AllocateState::kAllocated:
        out->set_state(v1::AllocateResponse::STATE_ALLOCATED);
        out->mutable_location()->set_node(ctx_.node_name());
        FillLocation(ctx_, b.space, out->mutable_location(), b.on_gpu);
        break;
      case AllocateState::kAlreadyCommitted:
        out->set_state(v1::AllocateResponse::STATE_ALREADY_COMMITTED);
        break;
      case AllocateState::kInProgress:
        out->set_state(v1::AllocateResponse::STATE_IN_PROGRESS);
        break;
      case AllocateState::kNotAdmitted:
        out->set_state(v1::AllocateResponse::STATE_NOT_ADMITTED);
        break;
    }
  }
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* CacheServiceImpl::Commit(grpc::CallbackServerContext* context,
                                                   const v1::CommitRequest* request,
                                                   v1::CommitResponse* response) {
  std::vector<std::pair<std::string, uint64_t>> blocks;
  blocks.reserve(request->blocks_size());
  for (const auto& b : request->blocks()) blocks.emplace_back(b.key(), b.checksum());
  auto committed = ctx_.index->Commit(request->allocation_id(), blocks);
  if (committed.ok()) response->set_committed(*committed);
  return Done(context, committed.status());
}

grpc::ServerUnaryReactor* CacheServiceImpl::Abort(grpc::CallbackServerContext* context,
                                                  const v1::AbortRequest* request,
                                                  v1::AbortResponse* response) {
  auto aborted = ctx_.index->Abort(request->allocation_id(), Strings(request->keys()));
  if (aborted.ok()) response->set_aborted(*aborted);
  return Done(context, aborted.status());
}

grpc::ServerUnaryReactor* CacheServiceImpl::ReleaseLease(grpc::CallbackServerContext* context,
                                                         const v1::ReleaseLeaseRequest* request,
                                                         v1::ReleaseLeaseResponse* response) {
  return Done(context, ctx_.index->ReleaseLease(request->lease_id()));
}

grpc::ServerUnaryReactor* CacheServiceImpl::Pin(grpc::CallbackServerContext* context,
                                                const v1::PinRequest* request,
                                                v1::PinResponse* response) {
  auto changed = ctx_.index->SetPinned(Strings(request->keys()), true);
  if (changed.ok()) response->set_changed(*changed);
  return Done(context, changed.status());
}

grpc::ServerUnaryReactor* CacheServiceImpl::Unpin(grpc::CallbackServerContext* context,
                                                  const v1::PinRequest* request,
                                                  v1::PinResponse* response) {
  auto changed = ctx_.index->SetPinned(Strings(request->keys()), false);
  if (changed.ok()) response->set_changed(*changed);
  return Done(context, changed.status());
}

grpc::ServerUnaryReactor* CacheServiceImpl::Evict(grpc::CallbackServerContext* context,
                                                  const v1::EvictRequest* request,
                                                  v1::EvictResponse* response) {
  auto result = request->corrupt() ? ctx_.index->DropCorrupt(Strings(request->keys()))
                                   : ctx_.index->Evict(Strings(request->keys()));
  if (result.ok()) {
    response->set_evicted(result->evicted);
    response->set_bytes_freed(result->bytes_freed);
  }
  return Done(context, result.status());
}

grpc::ServerReadReactor<v1::PutRequest>* CacheServiceImpl::Put(grpc::CallbackServerContext*,
                                                               v1::PutResponse* response) {
  return new PutReactor(ctx_, response);
}

grpc::ServerWriteReactor<v1::GetResponse>* CacheServiceImpl::Get(
    grpc::CallbackServerContext*, const v1::GetRequest* request) {
  return new GetReactor(ctx_, request);
}

grpc::ServerWriteReactor<v1::Event>* CacheServiceImpl::WatchEvents(
    grpc::CallbackServerContext*, const v1::WatchEventsRequest* request) {
  return new WatchReactor(ctx_, request);
}

grpc::ServerUnaryReactor* CacheServiceImpl::DataPlane(grpc::CallbackServerContext* context,
                                                      const v1::DataPlaneRequest*,
                                                      v1::DataPlaneResponse* response) {
  if (ctx_.engine == nullptr || ctx_.region == nullptr) {
    return Done(context, absl::UnavailableError(
                             "this node runs without a UCX data plane; move block bytes with "
                             "the Put and Get streams"));
  }
  response->set_worker_address(ctx_.engine->worker_address());
  response->set_remote_key(ctx_.region->remote_key());
  response->set_remote_base(RemoteBase(ctx_));
  response->set_region_bytes(ctx_.region->length());
  response->set_transports(ctx_.transports);
  return Done(context, absl::OkStatus());
}

// ---------------------------------------------------------------------------------------
// AdminService

grpc::ServerUnaryReactor* AdminServiceImpl::Stats(grpc::CallbackServerContext* context,
                                                  const v1::StatsRequest*,
                                                  v1::StatsResponse* response) {
  IndexStats s = ctx_.index->Stats();
  response->set_node(ctx_.node_name());
  v1::TierStats* host = response->add_tiers();
  host->set_tier(v1::TIER_HOST);
  host->set_blocks(s.host_blocks);
  host->set_bytes(s.host_bytes);
  host->set_used_bytes(s.used_bytes);
  host->set_capacity_bytes(s.capacity_bytes);
  host->set_hits(s.hits - s.ssd_hits - s.gpu_hits);
  host->set_misses(s.misses);
  host->set_evictions(s.evictions);
  if (s.has_ssd) {
    v1::TierStats* ssd = response->add_tiers();
    ssd->set_tier(v1::TIER_SSD);
    ssd->set_blocks(s.ssd_blocks);
    ssd->set_bytes(s.ssd_bytes);
    ssd->set_used_bytes(s.ssd_used_bytes);
    ssd->set_capacity_bytes(s.ssd_capacity_bytes);
    ssd->set_hits(s.ssd_hits);
    ssd->set_misses(s.misses);
    ssd->set_evictions(s.ssd_evictions);
    response->set_ssd_mode(s.ssd_write_through ? "write-through" : "write-back");
  }
  if (s.has_gpu) {
    // Fastest first: the GPU tier leads the list.
    v1::TierStats* gpu = response->add_tiers();
    gpu->set_tier(v1::TIER_GPU);
    gpu->set_blocks(s.gpu_blocks);
    gpu->set_bytes(s.gpu_bytes);
    gpu->set_used_bytes(s.gpu_used_bytes);
    gpu->set_capacity_bytes(s.gpu_capacity_bytes);
    gpu->set_hits(s.gpu_hits);
    gpu->set_misses(s.misses);
    gpu->set_evictions(s.gpu_demotions + s.gpu_drops + s.gpu_evictions);
    auto* tiers = response->mutable_tiers();
    for (int i = tiers->size() - 1; i > 0; --i) tiers->SwapElements(i, i - 1);
    response->set_gpu_device(s.gpu_device);
    response->set_gpu_demotions(s.gpu_demotions);
    response->set_gpu_drops(s.gpu_drops);
    response->set_gpu_to_host(s.gpu_to_host);
    response->set_gpu_copy_failures(s.gpu_copy_failures);
    response->set_gpu_fallbacks(s.gpu_fallbacks);
  }
  response->set_demotions(s.demotions);
  response->set_promotions(s.promotions);
  response->set_host_drops(s.host_drops);
  response->set_admissions_refused(s.admissions_refused);
  response->set_ssd_write_failures(s.ssd_write_failures);
  response->set_ssd_read_failures(s.ssd_read_failures);
  response->set_ssd_recovered_blocks(s.ssd_recovered_blocks);
  response->set_admission(s.admission);
  response->set_admission_switches(s.admission_switches);
  response->set_not_admitted(s.admissions_not_admitted);
  response->set_evicted_capacity(s.evicted_capacity);
  response->set_evicted_requested(s.evicted_requested);
  response->set_evicted_ssd_capacity(s.evicted_ssd_capacity);
  response->set_dropped_checksum(s.dropped_corrupt);
  response->set_pending_allocations(s.pending_allocations);
  response->set_pending_blocks(s.pending_blocks);
  response->set_read_leases(s.read_leases);
  response->set_pinned_blocks(s.pinned_blocks);
  response->set_lookups(s.lookups);
  response->set_commits(s.commits);
  response->set_aborts(s.aborts);
  response->set_expired_allocations(s.expired_allocations);
  response->set_checksum_failures(s.checksum_failures);
  response->set_allocation_failures(s.allocation_failures);
  response->set_last_event_sequence(ctx_.events->last_sequence());
  response->set_draining(s.draining);
  response->set_uptime_ms(absl::ToInt64Milliseconds(ctx_.clock->Now() - ctx_.started));
  response->set_page_bytes(s.page_bytes);
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* AdminServiceImpl::ListBlocks(grpc::CallbackServerContext* context,
                                                       const v1::ListBlocksRequest* request,
                                                       v1::ListBlocksResponse* response) {
  uint32_t page = request->page_size() == 0 ? kDefaultListPage : request->page_size();
  if (page > kMaxListPage) {
    return Done(context, absl::InvalidArgumentError(absl::StrCat(
                             "page_size ", page, " is above the maximum of ", kMaxListPage)));
  }
  uint64_t after = 0;
  const std::string& token = request->page_token();
  if (!token.empty()) {
    auto [ptr, ec] = std::from_chars(token.data(), token.data() + token.size(), after);
    if (ec != std::errc() || ptr != token.data() + token.size()) {
      return Done(context, absl::InvalidArgumentError(
                               absl::StrCat("page_token '", token,
                                            "' was not returned by ListBlocks")));
    }
  }
  uint64_t last = ctx_.index->List(after, page, [&](const CommittedBlock& block) {
    FillBlockInfo(ctx_, block, response->add_blocks());
  });
  if (response->blocks_size() == static_cast<int>(page)) {
    response->set_next_page_token(absl::StrCat(last));
  }
  response->set_total_blocks(ctx_.index->Stats().blocks);
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* AdminServiceImpl::InspectPrefix(
    grpc::CallbackServerContext* context, const v1::InspectPrefixRequest* request,
    v1::InspectPrefixResponse* response) {
  std::vector<std::string> keys;
  std::optional<BlockIndex::TokenQuery> token_query;
  if (request->has_tokens()) {
    const auto& q = request->tokens();
    if (!q.has_model()) {
      return Done(context, absl::InvalidArgumentError(
                               "a token query needs the model spec the prompt is for"));
    }
    if (static_cast<size_t>(q.tokens_size()) > kMaxInspectTokens) {
      return Done(context, absl::InvalidArgumentError(absl::StrCat(
                               q.tokens_size(), " tokens; at most ", kMaxInspectTokens)));
    }
    BlockIndex::TokenQuery tq{ModelSpecFromProto(q.model()), q.salt(),
                              std::vector<uint32_t>(q.tokens().begin(), q.tokens().end())};
    if (absl::Status s = tq.model.Validate(); !s.ok()) return Done(context, s);
    const Digest fingerprint = ModelFingerprint(tq.model);
    const Digest root = RootKey(fingerprint, tq.salt);
    for (const BlockKey& k : BlockKeyChain(root, tq.tokens, tq.model.block_tokens)) {
      keys.emplace_back(KeyBytes(k));
    }
    response->set_fingerprint(std::string(KeyBytes(fingerprint)));
    response->set_root(std::string(KeyBytes(root)));
    response->set_tail_tokens(tq.tokens.size() % tq.model.block_tokens);
    token_query = std::move(tq);
  } else if (request->has_keys()) {
    keys = Strings(request->keys().keys());
  } else {
    return Done(context, absl::InvalidArgumentError(
                             "InspectPrefix needs either tokens (with a model spec) or keys"));
  }
  std::vector<v1::BlockInfo> infos(keys.size());
  std::vector<bool> has_info(keys.size(), false);
  auto entries = ctx_.index->Inspect(keys, token_query, [&](size_t i, const CommittedBlock& b) {
    FillBlockInfo(ctx_, b, &infos[i]);
    has_info[i] = true;
  });
  if (!entries.ok()) return Done(context, entries.status());
  uint32_t prefix = 0;
  for (size_t i = 0; i < entries->size(); ++i) {
    const InspectEntry& e = (*entries)[i];
    auto* out = response->add_blocks();
    out->set_index(i);
    out->set_key(std::string(KeyBytes(e.key)));
    out->set_state(ToProto(e.state));
    out->set_detail(e.detail);
    if (has_info[i]) *out->mutable_info() = std::move(infos[i]);
    if (e.state == InspectState::kFound) ++prefix;
  }
  response->set_prefix_blocks(prefix);
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* AdminServiceImpl::ListNodes(grpc::CallbackServerContext* context,
                                                      const v1::ListNodesRequest*,
                                                      v1::ListNodesResponse* response) {
  IndexStats s = ctx_.index->Stats();
  v1::NodeInfo* node = response->add_nodes();
  node->set_address(ctx_.node_name());
  node->set_draining(s.draining);
  node->set_capacity_bytes(s.capacity_bytes);
  node->set_used_bytes(s.used_bytes);
  node->set_uptime_ms(absl::ToInt64Milliseconds(ctx_.clock->Now() - ctx_.started));
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* AdminServiceImpl::Drain(grpc::CallbackServerContext* context,
                                                  const v1::DrainRequest* request,
                                                  v1::DrainResponse* response) {
  ctx_.index->SetDraining(request->drain());
  response->set_draining(request->drain());
  return Done(context, absl::OkStatus());
}

}  // namespace tierkv
