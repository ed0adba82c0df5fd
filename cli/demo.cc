#include "cli/demo.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cache_manager/service.h"
#include "core/block_key.h"
#include "core/status.h"
#include "core/units.h"
#include "proto/grpc_status.h"
#include "tierkv/v1/admin_service.grpc.pb.h"
#include "tierkv/v1/cache_service.grpc.pb.h"

namespace tierkv {
namespace {

using Clock = std::chrono::steady_clock;

class DemoClient {
 public:
  explicit DemoClient(const std::string& address) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    channel_ = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
    cache_ = v1::CacheService::NewStub(channel_);
    admin_ = v1::AdminService::NewStub(channel_);
  }

  std::unique_ptr<grpc::ClientContext> Ctx() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return ctx;
  }

  struct Outcome {
    size_t blocks = 0;
    size_t cached = 0;
    size_t stored = 0;
    double lookup_ms = 0;
    double store_ms = 0;
  };

  // What a prefill worker does with a prompt: look up the cached prefix, then store the KV
  // of every block it had to compute. The model runtime is not wired in yet, so the "KV" is
  // deterministic bytes of the block object's size derived from its key.
  absl::StatusOr<Outcome> Serve(const ModelSpec& spec, const std::vector<uint32_t>& tokens) {
    Outcome o;
    TIERKV_ASSIGN_OR_RETURN(std::vector<BlockKey> keys, ComputeBlockKeys(spec, "", tokens));
    o.blocks = keys.size();
    auto t0 = Clock::now();
    v1::LookupRequest lookup;
    for (const BlockKey& k : keys) lookup.mutable_keys()->append(KeyBytes(k));
    lookup.set_fingerprint(std::string(KeyBytes(ModelFingerprint(spec))));
    v1::LookupResponse found;
    TIERKV_RETURN_IF_ERROR(FromGrpcStatus(cache_->Lookup(Ctx().get(), lookup, &found)));
    o.cached = found.found();
    o.lookup_ms = Ms(Clock::now() - t0);
    if (o.cached == keys.size()) return o;

    t0 = Clock::now();
    const uint64_t size = spec.RawBlockBytes();
    v1::AllocateRequest alloc;
    ModelSpecToProto(spec, alloc.mutable_model());
    for (size_t i = o.cached; i < keys.size(); ++i) {
      auto* b = alloc.add_blocks();
      b->set_key(std::string(KeyBytes(keys[i])));
      if (i > 0) b->set_parent_key(std::string(KeyBytes(keys[i - 1])));
      b->set_size(size);
      b->set_codec(v1::CODEC_RAW);
    }
    v1::AllocateResponse allocated;
    TIERKV_RETURN_IF_ERROR(FromGrpcStatus(cache_->Allocate(Ctx().get(), alloc, &allocated)));
    v1::CommitRequest commit;
    commit.set_allocation_id(allocated.allocation_id());
    for (const auto& b : allocated.blocks()) {
      if (b.state() != v1::AllocateResponse::STATE_ALLOCATED) continue;
      std::string payload(size, '\0');
      std::mt19937_64 rng(std::hash<std::string>()(b.key()));
      for (size_t i = 0; i + 8 <= payload.size(); i += 8) {
        uint64_t v = rng();
        std::memcpy(&payload[i], &v, 8);
      }
      v1::PutResponse put_response;
      auto ctx = Ctx();
      auto writer = cache_->Put(ctx.get(), &put_response);
      constexpr size_t kChunk = 1 << 20;
      for (size_t off = 0; off < payload.size(); off += kChunk) {
        v1::PutRequest put;
        if (off == 0) {
          put.set_allocation_id(allocated.allocation_id());
          put.set_key(b.key());
        }
        put.set_offset(off);
        put.set_data(payload.substr(off, kChunk));
        if (!writer->Write(put)) break;
      }
      writer->WritesDone();
      TIERKV_RETURN_IF_ERROR(FromGrpcStatus(writer->Finish()));
      auto* c = commit.add_blocks();
      c->set_key(b.key());
      c->set_checksum(BlockChecksum(payload.data(), payload.size()));
      ++o.stored;
    }
    if (commit.blocks_size() > 0) {
      v1::CommitResponse committed;
      TIERKV_RETURN_IF_ERROR(FromGrpcStatus(cache_->Commit(Ctx().get(), commit, &committed)));
    }
    o.store_ms = Ms(Clock::now() - t0);
    return o;
  }

  absl::StatusOr<v1::StatsResponse> Stats() {
    v1::StatsResponse stats;
    TIERKV_RETURN_IF_ERROR(FromGrpcStatus(admin_->Stats(Ctx().get(), v1::StatsRequest(), &stats)));
    return stats;
  }

 private:
  static double Ms(Clock::duration d) {
    return std::chrono::duration<double, std::milli>(d).count();
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::CacheService::Stub> cache_;
  std::unique_ptr<v1::AdminService::Stub> admin_;
};

std::vector<uint32_t> Prompt(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> tokens(n);
  for (auto& t : tokens) t = rng() % 128000;
  return tokens;
}

}  // namespace

absl::Status RunDemo(const std::string& address, std::ostream& out) {
  DemoClient client(address);
  const ModelSpec spec = BuiltinTinyModelSpec();
  const std::vector<uint32_t> long_prompt = Prompt(4096 + 7, 1);
  std::vector<uint32_t> shared = long_prompt;
  shared.resize(3072);
  const std::vector<uint32_t> tail = Prompt(1024, 2);
  shared.insert(shared.end(), tail.begin(), tail.end());

  out << absl::StrFormat("demo: model %s, %u-token blocks of %s each\n", spec.model_id,
                         spec.block_tokens, FormatBytes(spec.RawBlockBytes()));
  out << absl::StrFormat("%-34s %7s %7s %7s %10s %10s\n", "request", "tokens", "cached",
                         "stored", "lookup ms", "store ms");
  struct Request {
    const char* name;
    const std::vector<uint32_t>* tokens;
  };
  for (const Request& r : {Request{"long prompt (cold)", &long_prompt},
                           Request{"same prompt again (warm)", &long_prompt},
                           Request{"shares its first 3072 tokens", &shared}}) {
    TIERKV_ASSIGN_OR_RETURN(auto o, client.Serve(spec, *r.tokens));
    out << absl::StrFormat("%-34s %7zu %7zu %7zu %10.2f %10.2f\n", r.name, r.tokens->size(),
                           o.cached * spec.block_tokens, o.stored * spec.block_tokens,
                           o.lookup_ms, o.store_ms);
  }
  TIERKV_ASSIGN_OR_RETURN(v1::StatsResponse stats, client.Stats());
  for (const auto& tier : stats.tiers()) {
    out << absl::StrFormat(
        "cache: %s tier holds %u blocks (%s of %s), %u block hits, %u misses\n",
        absl::AsciiStrToLower(v1::Tier_Name(tier.tier()).substr(5)), tier.blocks(), FormatBytes(tier.used_bytes()),
        FormatBytes(tier.capacity_bytes()), tier.hits(), tier.misses());
  }
  out << "note: KV bytes are synthetic until the model runtime lands; keys, leases and "
         "checksums are real.\n";
  return absl::OkStatus();
}

}  // namespace tierkv
