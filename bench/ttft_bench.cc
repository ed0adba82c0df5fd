// ttft_bench: time to first token of a prompt computed from scratch (cold) against the same
// prompt with its KV in the cache (warm), through the real prefill worker and cache manager
// (`tierkv up` in this process, on 127.0.0.1). The cold figure is the baseline measured in
// the same run; the ratio is what the cache buys.
//
//   build/bench/ttft_bench [--tokens 4096,16384] [--repeats 3] [--model builtin:tiny]
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <random>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "cli/all_in_one.h"
#include "tierkv/v1/prefill_service.grpc.pb.h"

namespace {

struct Sample {
  double ttft_ms = 0;
  tierkv::v1::PrefillResponse response;
};

absl::StatusOr<Sample> Prefill(tierkv::v1::PrefillService::Stub& stub,
                               const std::vector<uint32_t>& tokens, const std::string& salt) {
  tierkv::v1::PrefillRequest request;
  request.mutable_tokens()->Add(tokens.begin(), tokens.end());
  request.set_salt(salt);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(30));
  Sample s;
  const absl::Time t0 = absl::Now();
  grpc::Status status = stub.Prefill(&ctx, request, &s.response);
  s.ttft_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        status.error_message());
  }
  return s;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ttft_bench: cold vs warm time to first token through tierkv's workers"};
  std::vector<int> lengths = {4096, 16384};
  int repeats = 3;
  tierkv::AllInOneOptions options;
  options.cache.listen_address = "127.0.0.1:0";
  options.cache.host_capacity_bytes = 1ull << 30;
  app.add_option("--tokens", lengths, "prompt lengths")->delimiter(',')->capture_default_str();
  app.add_option("--repeats", repeats, "measurements per figure (median reported)")
      ->capture_default_str();
  app.add_option("--model", options.model, "builtin:tiny or a Hugging Face directory")
      ->capture_default_str();
  app.add_option("--threads", options.model_options.num_threads, "compute threads (0: all)");
  CLI11_PARSE(app, argc, argv);

  auto all = tierkv::AllInOne::Start(options);
  if (!all.ok()) {
    std::cerr << "ttft_bench: " << all.status() << "\n";
    return 1;
  }
  const tierkv::ModelSpec& spec = (*all)->model().spec();
  auto stub = tierkv::v1::PrefillService::NewStub(
      grpc::CreateChannel((*all)->address(), grpc::InsecureChannelCredentials()));
  std::cout << absl::StrFormat(
      "# model %s: %u layers, %u kv heads, head_dim %u, KV %s (%u bytes a token); cache "
      "manager and prefill worker in this process on %s; block bytes over the UCX data plane "
      "(UCX_TLS=%s)\n",
      spec.model_id, spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.kv_dtype,
      static_cast<uint32_t>(spec.RawBlockBytes() / spec.block_tokens), (*all)->address(),
      getenv("UCX_TLS") ? getenv("UCX_TLS") : "unset: UCX picks");
  std::cout << "| tokens | cold TTFT ms (baseline) | warm TTFT ms | cold / warm | target | "
               "warm: cached / computed | warm: lookup / fetch / compute ms | cold: compute / "
               "store ms |\n|---:|---:|---:|---:|---|---|---|---|\n";
  std::mt19937 rng(7);
  bool all_met = true;
  for (int n : lengths) {
    std::vector<double> cold_ms, warm_ms;
    Sample cold, warm;
    for (int r = 0; r < repeats; ++r) {
      std::vector<uint32_t> tokens(n);
      for (auto& t : tokens) t = rng() % (*all)->model().vocab_size();
      // A fresh salt per repeat: the cold run really finds nothing.
      const std::string salt = absl::StrFormat("ttft-%d-%d", n, r);
      auto c = Prefill(*stub, tokens, salt);
      auto w = c.ok() ? Prefill(*stub, tokens, salt) : c;
      if (!c.ok() || !w.ok()) {
        std::cerr << "ttft_bench: prefill failed: " << (c.ok() ? w.status() : c.status()) << "\n";
        return 1;
      }
      if (w->response.cached_tokens() == 0) {
        std::cerr << "ttft_bench: the warm run found nothing cached\n";
        return 1;
      }
      cold_ms.push_back(c->ttft_ms);
      warm_ms.push_back(w->ttft_ms);
      cold = *c;
      warm = *w;
    }
    const double c = Median(cold_ms), w = Median(warm_ms);
    const bool has_target = n >= 16384;
    const bool met = c / w >= 10.0;
    if (has_target) all_met = all_met && met;
    const auto& wt = warm.response.timing();
    std::cout << absl::StrFormat(
        "| %d | %.1f | %.1f | %.1fx | %s | %u / %u | %.1f / %.1f / %.1f | %.1f / %.1f |\n", n,
        c, w, c / w, has_target ? (met ? "warm <= cold/10: met" : "warm <= cold/10: MISSED") : "-",
        warm.response.cached_tokens(), warm.response.computed_tokens(), wt.lookup_ms(),
        wt.fetch_ms(), wt.compute_ms(), cold.response.timing().compute_ms(),
        cold.response.timing().store_ms());
  }
  (*all)->Shutdown();
  return all_met ? 0 : 2;
}
