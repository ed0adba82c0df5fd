#include "cli/demo.h"

#include <grpcpp/grpcpp.h>

#include <random>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "core/status.h"
#include "core/units.h"
#include "proto/grpc_status.h"
#include "tierkv/v1/admin_service.grpc.pb.h"
#include "tierkv/v1/decode_service.grpc.pb.h"
#include "tierkv/v1/prefill_service.grpc.pb.h"

namespace tierkv {
namespace {

std::vector<uint32_t> Prompt(size_t n, uint32_t seed, uint32_t vocab) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> tokens(n);
  for (auto& t : tokens) t = rng() % vocab;
  return tokens;
}

std::unique_ptr<grpc::ClientContext> Context() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  return ctx;
}

}  // namespace

absl::Status RunDemo(const std::string& address, uint32_t vocab, std::ostream& out) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto prefill = v1::PrefillService::NewStub(channel);
  auto decode = v1::DecodeService::NewStub(channel);
  auto admin = v1::AdminService::NewStub(channel);

  const std::vector<uint32_t> long_prompt = Prompt(4096 + 7, 1, vocab);
  std::vector<uint32_t> shared(long_prompt.begin(), long_prompt.begin() + 3072);
  const std::vector<uint32_t> tail = Prompt(1024, 2, vocab);
  shared.insert(shared.end(), tail.begin(), tail.end());

  // A salt of its own per run: the first request is cold even when the cache manager kept
  // an earlier run's blocks (on SSD, across restarts).
  const std::string salt = absl::StrCat("demo-", absl::ToUnixNanos(absl::Now()));
  out << "demo tenant salt: " << salt << "\n";
  out << absl::StrFormat("%-30s %7s %7s %8s %7s %10s %10s %10s\n", "prefill request", "tokens",
                         "cached", "computed", "stored", "TTFT ms", "compute ms", "store ms");
  struct Request {
    const char* name;
    const std::vector<uint32_t>* tokens;
  };
  for (const Request& r : {Request{"long prompt (cold)", &long_prompt},
                           Request{"same prompt again (warm)", &long_prompt},
                           Request{"shares its first 3072 tokens", &shared}}) {
    v1::PrefillRequest request;
    request.mutable_tokens()->Add(r.tokens->begin(), r.tokens->end());
    request.set_salt(salt);
    v1::PrefillResponse response;
    const absl::Time t0 = absl::Now();
    auto ctx = Context();
    TIERKV_RETURN_IF_ERROR(FromGrpcStatus(prefill->Prefill(ctx.get(), request, &response)));
    const double ttft = absl::ToDoubleMilliseconds(absl::Now() - t0);
    out << absl::StrFormat("%-30s %7zu %7u %8u %7u %10.1f %10.1f %10.1f\n", r.name,
                           r.tokens->size(), response.cached_tokens(), response.computed_tokens(),
                           response.stored_blocks(), ttft, response.timing().compute_ms(),
                           response.timing().store_ms());
  }

  v1::GenerateRequest generate;
  generate.mutable_tokens()->Add(long_prompt.begin(), long_prompt.end());
  generate.set_salt(salt);
  generate.set_max_new_tokens(16);
  std::vector<uint32_t> generated;
  v1::GenerateResponse message, last;
  const absl::Time t0 = absl::Now();
  double first_token_ms = 0;
  auto ctx = Context();
  auto reader = decode->Generate(ctx.get(), generate);
  while (reader->Read(&message)) {
    if (generated.empty()) first_token_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
    generated.insert(generated.end(), message.tokens().begin(), message.tokens().end());
    last = message;
  }
  TIERKV_RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
  out << absl::StrFormat(
      "generate from the long prompt: %u cached / %u computed tokens, first token after "
      "%.1f ms, %zu tokens in %.1f ms: %s\n",
      last.cached_tokens(), last.computed_tokens(), first_token_ms, generated.size(),
      absl::ToDoubleMilliseconds(absl::Now() - t0), absl::StrJoin(generated, " "));

  auto stats_ctx = Context();
  v1::StatsResponse stats;
  TIERKV_RETURN_IF_ERROR(
      FromGrpcStatus(admin->Stats(stats_ctx.get(), v1::StatsRequest(), &stats)));
  for (const auto& tier : stats.tiers()) {
    out << absl::StrFormat(
        "cache: %s tier holds %u blocks (%s of %s), %u block hits, %u misses, %u evictions\n",
        absl::AsciiStrToLower(v1::Tier_Name(tier.tier()).substr(5)), tier.blocks(),
        FormatBytes(tier.used_bytes()), FormatBytes(tier.capacity_bytes()), tier.hits(),
        tier.misses(), tier.evictions());
  }
  return absl::OkStatus();
}

}  // namespace tierkv
