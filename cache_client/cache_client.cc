#include "cache_client/cache_client.h"

#include <algorithm>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "transfer/engine.h"
#include "core/status.h"
#include "proto/grpc_status.h"
#include "proto/lookup_blocks.h"
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
    absl::StatusOr<LookupBlocksView> view = CheckLookupShape(found, keys.size());
    if (!view.ok()) {
      ReleaseLease(found.lease_id());
      return view.status();
    }
    out.lookup_time = absl::Now() - t0;
    t0 = absl::Now();
    out.blocks.reserve(found.found());
    if (found.found() > 0 && DataPlaneReady()) {
      FetchOverUcx(found, *view, out);
    } else {
      for (uint32_t i = 0; i < found.found(); ++i) {
        const LookupBlock block = view->block(i);
        auto payload = GetBlock(keys[i], block.size, block.checksum,
                                static_cast<int>(i) == options_.fault_corrupt_block);
        if (!payload.ok()) {
          // Missing or corrupt on the way: a miss from here on, never data for the model.
          ++out.checksum_failures;
          break;
        }
        out.blocks.push_back(*std::move(payload));
      }
    }
    ReleaseLease(found.lease_id());
    out.fetch_time = absl::Now() - t0;
    return out;
  }

  void SetLocalHostTier(std::span<const uint8_t> region) override {
    absl::MutexLock lock(&plane_mu_);
    local_tier_ = region;
  }
  bool HasLocalHostTier() const override {
    absl::MutexLock lock(&plane_mu_);
    return !local_tier_.empty();
  }
  void SetLocalGpuTier(std::span<uint8_t> region) override {
    absl::MutexLock lock(&plane_mu_);
    local_gpu_tier_ = region;
  }
  bool HasLocalGpuTier() const override {
    absl::MutexLock lock(&plane_mu_);
    return !local_gpu_tier_.empty();
  }

  absl::StatusOr<InPlacePrefix> UsePrefixInPlace(const ModelSpec& spec,
                                                 std::span<const BlockKey> keys,
                                                 InPlaceUse use) override {
    std::span<const uint8_t> tier;
    std::span<uint8_t> gpu_tier;
    {
      absl::MutexLock lock(&plane_mu_);
      tier = local_tier_;
      gpu_tier = local_gpu_tier_;
    }
    if (tier.empty()) {
      return absl::FailedPreconditionError(
          "UsePrefixInPlace: the cache manager's host tier is not in this process");
    }
    InPlacePrefix out;
    absl::Time t0 = absl::Now();
    v1::LookupResponse found;
    TIERKV_RETURN_IF_ERROR(
        Lookup(spec, keys, /*lease=*/true, &found, /*accept_gpu=*/!gpu_tier.empty()));
    out.lookup_time = absl::Now() - t0;
    absl::StatusOr<LookupBlocksView> view = CheckLookupShape(found, keys.size());
    if (!view.ok()) {
      ReleaseLease(found.lease_id());
      return view.status();
    }
    out.found = found.found();
    // Reading in place needs the lease for the whole read: none, or one about to run out,
    // and nothing is read.
    constexpr absl::Duration kLeaseMargin = absl::Seconds(2);
    if (out.found > 0 &&
        (found.lease_id() == 0 ||
         absl::FromUnixMillis(found.lease_expires_unix_ms()) < absl::Now() + kLeaseMargin)) {
      ReleaseLease(found.lease_id());
      return out;
    }
    // Pieces of every block, then one span per block over them (pieces never reallocates
    // after the first loop).
    std::vector<PayloadPiece> pieces;
    std::vector<size_t> first_piece;
    std::vector<uint8_t> on_gpu;
    std::vector<uint64_t> checksums;
    uint32_t usable = 0;
    for (; usable < out.found; ++usable) {
      const LookupBlock block = view->block(usable);
      const bool gpu = block.tier == v1::TIER_GPU && !gpu_tier.empty();
      if ((block.tier != v1::TIER_HOST && !gpu) || block.size != spec.RawBlockBytes()) {
        break;
      }
      const uint8_t* base = gpu ? gpu_tier.data() : tier.data();
      const uint64_t tier_bytes = gpu ? gpu_tier.size() : tier.size();
      first_piece.push_back(pieces.size());
      uint64_t sum = 0;
      bool inside = true;
      for (uint32_t j = 0; j < block.pieces; ++j) {
        const LookupPiece piece = view->piece(block, j);
        const uint64_t off = piece.offset, len = piece.length;
        inside = inside && off <= tier_bytes && len <= tier_bytes - off;
        pieces.push_back({base + (inside ? off : 0), len});
        sum += len;
      }
      if (!inside || sum != block.size) {
        pieces.resize(first_piece.back());
        first_piece.pop_back();
        break;
      }
      on_gpu.push_back(gpu ? 1 : 0);
      checksums.push_back(block.checksum);
    }
    first_piece.push_back(pieces.size());
    std::vector<std::span<const PayloadPiece>> blocks;
    for (uint32_t i = 0; i < usable; ++i) {
      blocks.emplace_back(pieces.data() + first_piece[i], first_piece[i + 1] - first_piece[i]);
    }
    if (options_.fault_corrupt_block >= 0 &&
        static_cast<uint32_t>(options_.fault_corrupt_block) < usable) {
      checksums[options_.fault_corrupt_block] ^= 1;  // As if the bytes had changed.
    }
    t0 = absl::Now();
    out.used = static_cast<uint32_t>(std::min<size_t>(use(blocks, checksums, on_gpu), usable));
    out.use_time = absl::Now() - t0;
    out.lease_lost = !ReleaseLease(found.lease_id()).ok();
    return out;
  }

  absl::StatusOr<size_t> CountCached(const ModelSpec& spec,
                                     std::span<const BlockKey> keys) override {
    v1::LookupResponse found;
    TIERKV_RETURN_IF_ERROR(Lookup(spec, keys, /*lease=*/false, &found));
    return found.found();
  }

  absl::StatusOr<uint32_t> ReportCorrupt(const BlockKey& key) override {
    v1::EvictRequest request;
    request.add_keys(std::string(KeyBytes(key)));
    request.set_corrupt(true);
    v1::EvictResponse response;
    auto ctx = Context();
    TIERKV_RETURN_IF_ERROR(FromGrpcStatus(stub_->Evict(ctx.get(), request, &response)));
    return response.evicted();
  }

  ~GrpcCacheClient() override {
    endpoint_.reset();  // Before the engine that made it.
  }

  // Allocates blocks keys[first, first + count) (each spec.RawBlockBytes(), raw codec).
  absl::Status AllocateBlocks(const ModelSpec& spec, std::span<const BlockKey> keys, size_t first,
                              size_t count, v1::AllocateResponse* allocated,
                              v1::Tier tier = v1::TIER_HOST) {
    if (first + count > keys.size()) {
      return absl::InvalidArgumentError(absl::StrCat("Store of ", count, " blocks from ", first,
                                                     " runs past the ", keys.size(),
                                                     "-key chain"));
    }
    v1::AllocateRequest alloc;
    ModelSpecToProto(spec, alloc.mutable_model());
    alloc.set_lease_ttl_ms(absl::ToInt64Milliseconds(options_.write_lease));
    alloc.set_tier(tier);
    for (size_t k = first; k < first + count; ++k) {
      auto* b = alloc.add_blocks();
      b->set_key(std::string(KeyBytes(keys[k])));
      if (k > 0) b->set_parent_key(std::string(KeyBytes(keys[k - 1])));
      b->set_size(spec.RawBlockBytes());
      b->set_codec(v1::CODEC_RAW);
    }
    auto ctx = Context();
    TIERKV_RETURN_IF_ERROR(FromGrpcStatus(stub_->Allocate(ctx.get(), alloc, allocated)));
    if (absl::Status s = CheckAllocateShape(*allocated, keys, first, count); !s.ok()) {
      Abort(allocated->allocation_id());
      return s;
    }
    return absl::OkStatus();
  }

  // Counts a block Allocate did not hand out for writing; false for one to write.
  static bool Skipped(const v1::AllocateResponse::Block& b, StoreResult* result) {
    switch (b.state()) {
      case v1::AllocateResponse::STATE_ALREADY_COMMITTED:
        ++result->already_cached;
        return true;
      case v1::AllocateResponse::STATE_IN_PROGRESS:
        ++result->in_progress;
        return true;
      case v1::AllocateResponse::STATE_NOT_ADMITTED:
        ++result->not_admitted;
        return true;
      default:
        return false;
    }
  }

  absl::Status CommitBlocks(const v1::CommitRequest& commit, StoreResult* result) {
    v1::CommitResponse committed;
    auto ctx = Context();
    absl::Status s = FromGrpcStatus(stub_->Commit(ctx.get(), commit, &committed));
    if (!s.ok()) {
      Abort(commit.allocation_id());
      return s;
    }
    result->stored = committed.committed();
    return absl::OkStatus();
  }

  absl::StatusOr<StoreResult> StoreInPlace(const ModelSpec& spec, std::span<const BlockKey> keys,
                                           size_t first, size_t count,
                                           InPlaceWrite write) override {
    std::span<const uint8_t> tier;
    std::span<uint8_t> gpu_tier;
    {
      absl::MutexLock lock(&plane_mu_);
      tier = local_tier_;
      gpu_tier = local_gpu_tier_;
    }
    if (tier.empty()) {
      return absl::FailedPreconditionError(
          "StoreInPlace: the cache manager's host tier is not in this process");
    }
    StoreResult result;
    if (count == 0) return result;
    v1::AllocateResponse allocated;
    TIERKV_RETURN_IF_ERROR(AllocateBlocks(spec, keys, first, count, &allocated,
                                          gpu_tier.empty() ? v1::TIER_HOST : v1::TIER_GPU));
    std::vector<size_t> indices;
    std::vector<PayloadTarget> pieces;
    std::vector<size_t> first_piece;
    v1::CommitRequest commit;
    commit.set_allocation_id(allocated.allocation_id());
    for (int i = 0; i < allocated.blocks_size(); ++i) {
      const auto& b = allocated.blocks(i);
      if (Skipped(b, &result)) continue;
      first_piece.push_back(pieces.size());
      uint64_t sum = 0;
      const bool gpu = b.location().tier() == v1::TIER_GPU && !gpu_tier.empty();
      uint8_t* base = gpu ? gpu_tier.data() : const_cast<uint8_t*>(tier.data());
      const uint64_t tier_bytes = gpu ? gpu_tier.size() : tier.size();
      for (const auto& e : b.location().extents()) {
        if ((b.location().tier() != v1::TIER_HOST && !gpu) || e.offset() > tier_bytes ||
            e.length() > tier_bytes - e.offset()) {
          Abort(allocated.allocation_id());
          return absl::InternalError("the cache reserved space outside its host and GPU tiers");
        }
        pieces.push_back({base + e.offset(), e.length()});
        sum += e.length();
      }
      if (sum != spec.RawBlockBytes()) {
        Abort(allocated.allocation_id());
        return absl::InternalError(absl::StrCat("the cache reserved ", sum, " bytes for a ",
                                                spec.RawBlockBytes(), "-byte block"));
      }
      indices.push_back(static_cast<size_t>(i));
      commit.add_blocks()->set_key(b.key());
    }
    if (indices.empty()) return result;
    // Space reserved twice would let one block's bytes pass as another's: refuse overlaps
    // (compared as addresses: the host and GPU regions do not overlap each other).
    std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
    for (const PayloadTarget& p : pieces) {
      const auto at = reinterpret_cast<uintptr_t>(p.data);
      ranges.emplace_back(at, at + p.size);
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t j = 1; j < ranges.size(); ++j) {
      if (ranges[j].first < ranges[j - 1].second) {
        Abort(allocated.allocation_id());
        return absl::InternalError("the cache reserved overlapping space for two blocks");
      }
    }
    // The writes must land while the write lease holds the space.
    if (allocated.lease_expires_unix_ms() != 0 &&
        absl::FromUnixMillis(allocated.lease_expires_unix_ms()) < absl::Now() + absl::Seconds(2)) {
      Abort(allocated.allocation_id());
      return absl::DeadlineExceededError("the write lease runs out before the blocks can land");
    }
    first_piece.push_back(pieces.size());
    std::vector<std::span<const PayloadTarget>> targets;
    for (size_t j = 0; j < indices.size(); ++j) {
      targets.emplace_back(pieces.data() + first_piece[j], first_piece[j + 1] - first_piece[j]);
    }
    std::vector<uint64_t> checksums(indices.size());
    if (absl::Status s = write(indices, targets, checksums); !s.ok()) {
      Abort(allocated.allocation_id());
      return s;
    }
    for (size_t j = 0; j < indices.size(); ++j) commit.mutable_blocks(j)->set_checksum(checksums[j]);
    TIERKV_RETURN_IF_ERROR(CommitBlocks(commit, &result));
    return result;
  }

  absl::StatusOr<StoreResult> Store(const ModelSpec& spec, std::span<const BlockKey> keys,
                                    size_t first, std::span<const std::string> payloads) override {
    StoreResult result;
    if (payloads.empty()) return result;
    for (size_t i = 0; i < payloads.size(); ++i) {
      if (payloads[i].size() != spec.RawBlockBytes()) {
        return absl::InvalidArgumentError(absl::StrCat("payload ", i, " is ", payloads[i].size(),
                                                       " bytes; a block of this model is ",
                                                       spec.RawBlockBytes()));
      }
    }
    v1::AllocateResponse allocated;
    TIERKV_RETURN_IF_ERROR(AllocateBlocks(spec, keys, first, payloads.size(), &allocated));
    v1::CommitRequest commit;
    commit.set_allocation_id(allocated.allocation_id());
    const bool ucx = DataPlaneReady();
    std::vector<transfer::TransferOp> ops;  // Every block's writes, sent as one batch.
    for (int i = 0; i < allocated.blocks_size(); ++i) {
      const auto& b = allocated.blocks(i);
      if (Skipped(b, &result)) continue;
      absl::Status put = ucx ? AppendPutOps(b.location(), payloads[i], &ops)
                             : PutBlock(allocated.allocation_id(), b.key(), payloads[i]);
      if (!put.ok()) {
        Abort(allocated.allocation_id());
        return put;
      }
      auto* c = commit.add_blocks();
      c->set_key(b.key());
      c->set_checksum(BlockChecksum(payloads[i].data(), payloads[i].size()));
    }
    if (!ops.empty()) {
      for (absl::Status& s : engine_->Put(*endpoint_, ops)) {
        if (!s.ok()) {
          Abort(allocated.allocation_id());
          return s;
        }
      }
    }
    if (commit.blocks_size() > 0) TIERKV_RETURN_IF_ERROR(CommitBlocks(commit, &result));
    return result;
  }

  DataPath data_path() const override {
    absl::MutexLock lock(&plane_mu_);
    return path_;
  }

 private:
  // Decides the data path once: UCX when the node offers a data plane and the client may
  // use it (and an engine starts here), else the gRPC streams.
  bool DataPlaneReady() {
    absl::MutexLock lock(&plane_mu_);
    if (path_ != DataPath::kUndecided) return path_ == DataPath::kUcx;
    path_ = DataPath::kGrpcStreams;
    if (!options_.use_data_plane) return false;
    v1::DataPlaneResponse plane;
    {
      auto ctx = Context();
      if (!stub_->DataPlane(ctx.get(), v1::DataPlaneRequest(), &plane).ok()) return false;
    }
    transfer::EngineOptions engine_options;
    engine_options.name = "cache-client";
    engine_options.transports = options_.transports;
    auto engine = transfer::TransferEngine::Create(engine_options);
    if (!engine.ok()) return false;
    auto endpoint = (*engine)->Connect(plane.worker_address());
    if (!endpoint.ok()) return false;
    engine_ = std::move(engine).value();
    endpoint_ = std::move(endpoint).value();
    remote_key_ = plane.remote_key();
    path_ = DataPath::kUcx;
    return true;
  }

  // Reads every found block straight into its payload buffer, all in flight at once, then
  // verifies each against the checksum Lookup reported. The first block that failed ends
  // the prefix.
  void FetchOverUcx(const v1::LookupResponse& found, const LookupBlocksView& view,
                    FetchedPrefix& out) {
    const uint32_t n = found.found();
    std::vector<std::string> payloads(n);
    std::vector<transfer::TransferOp> ops;
    std::vector<uint32_t> op_block;
    for (uint32_t i = 0; i < n; ++i) {
      const LookupBlock block = view.block(i);
      payloads[i].resize(block.size);
      uint64_t filled = 0;
      for (uint32_t j = 0; j < block.pieces; ++j) {
        const LookupPiece piece = view.piece(block, j);
        transfer::TransferOp op;
        op.remote_key = remote_key_;
        op.remote_addr = found.remote_base() + piece.offset;
        op.local = payloads[i].data() + filled;
        op.length = piece.length;
        filled += op.length;
        ops.push_back(op);
        op_block.push_back(i);
      }
    }
    std::vector<absl::Status> statuses = engine_->Get(*endpoint_, ops);
    uint32_t good = n;
    for (size_t k = 0; k < ops.size(); ++k) {
      if (!statuses[k].ok()) good = std::min(good, op_block[k]);
    }
    for (uint32_t i = 0; i < good; ++i) {
      if (static_cast<int>(i) == options_.fault_corrupt_block && !payloads[i].empty()) {
        payloads[i][payloads[i].size() / 2] ^= 0x40;
      }
      if (BlockChecksum(payloads[i].data(), payloads[i].size()) != view.block(i).checksum) {
        good = i;
        break;
      }
    }
    if (good < n) ++out.checksum_failures;
    payloads.resize(good);
    out.blocks = std::move(payloads);
  }

  // The writes that put a payload into the extents Allocate reserved for it.
  absl::Status AppendPutOps(const v1::BlockLocation& location, const std::string& payload,
                            std::vector<transfer::TransferOp>* ops) {
    uint64_t filled = 0;
    for (const auto& e : location.extents()) {
      transfer::TransferOp op;
      op.remote_key = remote_key_;
      op.remote_addr = location.remote_base() + e.offset();
      op.local = const_cast<char*>(payload.data()) + filled;
      op.length = e.length();
      filled += e.length();
      ops->push_back(op);
    }
    if (filled != payload.size()) {
      return absl::InternalError(absl::StrCat("the cache reserved ", filled, " bytes for a ",
                                              payload.size(), "-byte block"));
    }
    return absl::OkStatus();
  }

  // OK when the lease was still held (NOT_FOUND once it expired). A failed release is
  // otherwise harmless: expiry frees what the lease held.
  absl::Status ReleaseLease(uint64_t lease_id) {
    if (lease_id == 0) return absl::OkStatus();
    v1::ReleaseLeaseRequest release;
    release.set_lease_id(lease_id);
    v1::ReleaseLeaseResponse released;
    auto ctx = Context();
    return FromGrpcStatus(stub_->ReleaseLease(ctx.get(), release, &released));
  }

  // The records of a Lookup response: `found` of them, found <= asked, every piece inside
  // the pieces listed (proto/lookup_blocks.h): nothing below reads past them.
  static absl::StatusOr<LookupBlocksView> CheckLookupShape(const v1::LookupResponse& r,
                                                           size_t asked) {
    if (r.found() > asked) {
      return absl::InternalError(absl::StrCat("malformed Lookup response: ", r.found(),
                                              " blocks found for ", asked, " keys"));
    }
    return LookupBlocksView::Make(r.blocks(), r.pieces(), r.found());
  }

  // The blocks of an Allocate response are the ones asked for, in order.
  static absl::Status CheckAllocateShape(const v1::AllocateResponse& r,
                                         std::span<const BlockKey> keys, size_t first,
                                         size_t count) {
    if (static_cast<size_t>(r.blocks_size()) != count) {
      return absl::InternalError(absl::StrCat("malformed Allocate response: ", r.blocks_size(),
                                              " blocks for ", count, " asked"));
    }
    for (size_t i = 0; i < count; ++i) {
      if (r.blocks(static_cast<int>(i)).key() != KeyBytes(keys[first + i])) {
        return absl::InternalError(
            absl::StrCat("malformed Allocate response: block ", i, " has another key"));
      }
    }
    return absl::OkStatus();
  }

  std::unique_ptr<grpc::ClientContext> Context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
    return ctx;
  }

  absl::Status Lookup(const ModelSpec& spec, std::span<const BlockKey> keys, bool lease,
                      v1::LookupResponse* found, bool accept_gpu = false) {
    v1::LookupRequest request;
    std::string* packed = request.mutable_keys();
    packed->reserve(keys.size() * kDigestBytes);
    for (const BlockKey& k : keys) packed->append(KeyBytes(k));
    request.set_fingerprint(std::string(KeyBytes(ModelFingerprint(spec))));
    request.set_lease(lease);
    request.set_accept_gpu(accept_gpu);
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

  mutable absl::Mutex plane_mu_;
  DataPath path_ ABSL_GUARDED_BY(plane_mu_) = DataPath::kUndecided;
  std::span<const uint8_t> local_tier_ ABSL_GUARDED_BY(plane_mu_);
  std::span<uint8_t> local_gpu_tier_ ABSL_GUARDED_BY(plane_mu_);  // Device memory.
  // Set once when path_ becomes kUcx, then read without the lock.
  std::unique_ptr<transfer::TransferEngine> engine_;
  std::shared_ptr<transfer::Endpoint> endpoint_;
  std::string remote_key_;
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
