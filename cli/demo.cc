#include "cli/demo.h"

#include <grpcpp/grpcpp.h>

#include <random>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "cache_client/cache_client.h"
#include "core/block_key.h"
#include "core/status.h"
#include "core/units.h"
#include "proto/grpc_status.h"
#include "tierkv/v1/admin_service.grpc.pb.h"

namespace tierkv {
namespace {

struct Outcome {
  size_t cached_blocks = 0;
  size_t stored_blocks = 0;
  double lookup_ms = 0;
  double store_ms = 0;
};

// What a prefill worker does with a prompt's cache: look up the cached prefix, then store
// every block it had to compute. The "KV" here is deterministic bytes of the block object's
// size derived from the block's position, standing in for the model's output.
absl::StatusOr<Outcome> Serve(CacheClient& cache, const ModelSpec& spec,
                              const std::vector<uint32_t>& tokens) {
  Outcome o;
  TIERKV_ASSIGN_OR_RETURN(std::vector<BlockKey> keys, ComputeBlockKeys(spec, "", tokens));
  absl::Time t0 = absl::Now();
  TIERKV_ASSIGN_OR_RETURN(o.cached_blocks, cache.CountCached(spec, keys));
  o.lookup_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
  if (o.cached_blocks == keys.size()) return o;
  t0 = absl::Now();
  std::vector<std::string> payloads;
  for (size_t i = o.cached_blocks; i < keys.size(); ++i) {
    std::string payload(spec.RawBlockBytes(), '\0');
    std::mt19937_64 rng(keys[i][0] | uint64_t{keys[i][1]} << 8);
    for (size_t j = 0; j + 8 <= payload.size(); j += 8) {
      const uint64_t v = rng();
      std::memcpy(&payload[j], &v, 8);
    }
    payloads.push_back(std::move(payload));
  }
  TIERKV_ASSIGN_OR_RETURN(StoreResult stored, cache.Store(spec, keys, o.cached_blocks, payloads));
  o.stored_blocks = stored.stored;
  o.store_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
  return o;
}

std::vector<uint32_t> Prompt(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> tokens(n);
  for (auto& t : tokens) t = rng() % 32768;
  return tokens;
}

}  // namespace

absl::Status RunDemo(const std::string& address, std::ostream& out) {
  CacheClientOptions options;
  options.address = address;
  TIERKV_ASSIGN_OR_RETURN(std::unique_ptr<CacheClient> cache, CacheClient::Create(options));
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
    TIERKV_ASSIGN_OR_RETURN(Outcome o, Serve(*cache, spec, *r.tokens));
    out << absl::StrFormat("%-34s %7zu %7zu %7zu %10.2f %10.2f\n", r.name, r.tokens->size(),
                           o.cached_blocks * spec.block_tokens,
                           o.stored_blocks * spec.block_tokens, o.lookup_ms, o.store_ms);
  }

  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::StatsResponse stats;
  auto admin = v1::AdminService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  TIERKV_RETURN_IF_ERROR(FromGrpcStatus(admin->Stats(&ctx, v1::StatsRequest(), &stats)));
  for (const auto& tier : stats.tiers()) {
    out << absl::StrFormat(
        "cache: %s tier holds %u blocks (%s of %s), %u block hits, %u misses\n",
        absl::AsciiStrToLower(v1::Tier_Name(tier.tier()).substr(5)), tier.blocks(),
        FormatBytes(tier.used_bytes()), FormatBytes(tier.capacity_bytes()), tier.hits(),
        tier.misses());
  }
  out << "note: KV bytes are synthetic until the model runtime lands; keys, leases and "
         "checksums are real.\n";
  return absl::OkStatus();
}

}  // namespace tierkv
