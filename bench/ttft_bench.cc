// ttft_bench: time to first token of a prompt computed from scratch (cold) against the same
// prompt with its KV in the cache (warm), through the real prefill worker and cache manager
// (`tierkv up` in this process, on 127.0.0.1). The cold figure is the baseline measured in
// the same run; the ratio is what the cache buys.
//
//   build/bench/ttft_bench [--tokens 4096,16384] [--repeats 3] [--model builtin:tiny]
//   ttft_bench --device cuda --model builtin:llama-3-8b-random --tokens 32768 --host-gib 12
//   ttft_bench --device cuda ... --gpu-gib 16   (warm runs read the cache's GPU tier)
//
// On the GPU it also measures block transfers between the host and the device (the
// runtime's own paths: block objects in host memory to a sequence's KV and back) beside
// cudaMemcpy of one large pinned buffer in the same run.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "cli/all_in_one.h"
#include "core/process.h"
#include "core/status.h"
#include "core/units.h"
#include "tierkv/v1/prefill_service.grpc.pb.h"
#if TIERKV_HAVE_CUDA
#include "kernels/cuda/memory.h"
#endif

namespace {

struct Sample {
  double rpc_ms = 0;  // The whole call as the client sees it (a cold call also stores).
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
  s.rpc_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
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

#if TIERKV_HAVE_CUDA
// GB/s of `bytes` moved by `copy` (median of `repeats`).
template <typename F>
absl::StatusOr<double> Bandwidth(size_t bytes, int repeats, F copy) {
  std::vector<double> gbs;
  for (int r = 0; r < repeats + 1; ++r) {
    const absl::Time t0 = absl::Now();
    if (absl::Status s = copy(); !s.ok()) return s;
    const double sec = absl::ToDoubleSeconds(absl::Now() - t0);
    if (r > 0) gbs.push_back(static_cast<double>(bytes) / sec / 1e9);  // First run: warm-up.
  }
  return Median(gbs);
}

// Host <-> device block transfers through the runtime against cudaMemcpy of one pinned buffer.
absl::Status MeasureTransfers(const tierkv::Runtime& runtime, int repeats) {
  namespace cu = tierkv::kernels::cuda;
  const tierkv::ModelSpec& spec = runtime.spec();
  const size_t block = spec.RawBlockBytes();
  const int64_t blocks = std::max<int64_t>(1, (1ll << 30) / static_cast<int64_t>(block));
  const size_t bytes = static_cast<size_t>(blocks) * block;
  TIERKV_ASSIGN_OR_RETURN(cu::PinnedBuffer pinned, cu::PinnedBuffer::Allocate(bytes));
  TIERKV_ASSIGN_OR_RETURN(cu::DeviceBuffer device, cu::DeviceBuffer::Allocate(bytes));
  std::memset(pinned.data(), 0x5a, bytes);
  TIERKV_ASSIGN_OR_RETURN(double h2d, Bandwidth(bytes, repeats, [&] {
    return cu::CopyToDevice(device.data(), pinned.data(), bytes);
  }));
  TIERKV_ASSIGN_OR_RETURN(double d2h, Bandwidth(bytes, repeats, [&] {
    return cu::CopyToHost(pinned.data(), device.data(), bytes);
  }));
  // Block objects as the cache client hands them over: separate host strings.
  std::mt19937_64 rng(11);
  std::vector<std::string> objects(blocks, std::string(block, '\0'));
  for (std::string& o : objects) {
    for (size_t i = 0; i + 8 <= o.size(); i += 8) {
      const uint64_t v = rng();
      std::memcpy(o.data() + i, &v, 8);
    }
  }
  const int64_t tokens = blocks * spec.block_tokens;
  TIERKV_ASSIGN_OR_RETURN(std::unique_ptr<tierkv::Sequence> seq, runtime.NewSequence(tokens));
  TIERKV_ASSIGN_OR_RETURN(double in, Bandwidth(bytes, repeats, [&]() -> absl::Status {
    TIERKV_ASSIGN_OR_RETURN(std::unique_ptr<tierkv::Sequence> s, runtime.NewSequence(tokens));
    seq = std::move(s);
    return seq->AppendBlocks(objects);
  }));
  TIERKV_ASSIGN_OR_RETURN(double out, Bandwidth(bytes, repeats, [&]() -> absl::Status {
    TIERKV_ASSIGN_OR_RETURN(std::vector<std::string> back, seq->ExtractBlocks(0, blocks));
    return back == objects ? absl::OkStatus()
                           : absl::DataLossError("a block came back different");
  }));
  // In place from pinned host memory (as from the registered host tier): the DMA alone, the
  // checksums alone (all CPU threads), and both together as a warm Prefill runs them.
  std::vector<tierkv::PayloadPiece> pieces;
  std::vector<uint64_t> sums;
  for (int64_t i = 0; i < blocks; ++i) {
    const uint8_t* p = static_cast<const uint8_t*>(pinned.data()) + i * block;
    std::memcpy(pinned.as<uint8_t>() + i * block, objects[i].data(), block);
    pieces.push_back({p, block});
    sums.push_back(tierkv::BlockChecksum(p, block));
  }
  std::vector<std::span<const tierkv::PayloadPiece>> spans;
  for (const tierkv::PayloadPiece& p : pieces) spans.emplace_back(&p, 1);
  auto in_place = [&](bool verify) {
    return [&, verify]() -> absl::Status {
      TIERKV_ASSIGN_OR_RETURN(std::unique_ptr<tierkv::Sequence> s, runtime.NewSequence(tokens));
      TIERKV_ASSIGN_OR_RETURN(size_t kept, s->AppendBlocksInPlace(spans, [&](auto bytes) {
        return verify ? tierkv::IntactPrefix(bytes, sums) : spans.size();
      }));
      return kept == spans.size() ? absl::OkStatus() : absl::DataLossError("checksum mismatch");
    };
  };
  TIERKV_ASSIGN_OR_RETURN(double dma, Bandwidth(bytes, repeats, in_place(false)));
  TIERKV_ASSIGN_OR_RETURN(double both, Bandwidth(bytes, repeats, in_place(true)));
  // The store path of tierkv up: KV written as block objects straight into pinned memory.
  std::vector<tierkv::PayloadTarget> targets;
  for (int64_t i = 0; i < blocks; ++i) targets.push_back({pinned.as<uint8_t>() + i * block, block});
  std::vector<std::span<const tierkv::PayloadTarget>> target_spans;
  for (const tierkv::PayloadTarget& t : targets) target_spans.emplace_back(&t, 1);
  std::vector<uint64_t> written_sums(blocks);
  TIERKV_ASSIGN_OR_RETURN(double write_back, Bandwidth(bytes, repeats, [&]() -> absl::Status {
    // As the worker stores: with each block's checksum computed on the device.
    TIERKV_RETURN_IF_ERROR(seq->WriteBlocksInPlace(0, target_spans, written_sums));
    for (int64_t i = 0; i < blocks; ++i) {
      if (written_sums[i] != sums[i]) return absl::DataLossError("device checksum differs");
    }
    return absl::OkStatus();
  }));
  TIERKV_ASSIGN_OR_RETURN(double hash, Bandwidth(bytes, repeats, [&]() -> absl::Status {
    return tierkv::IntactPrefix(spans, sums) == spans.size()
               ? absl::OkStatus()
               : absl::DataLossError("checksum mismatch");
  }));
  // The GPU tier: block objects in device memory (the cache's arena) -> sequence KV, checked
  // on the device as they land; beside one device-to-device cudaMemcpy of the same bytes.
  TIERKV_ASSIGN_OR_RETURN(std::unique_ptr<tierkv::DeviceArena> arena,
                          runtime.AllocateDeviceArena(bytes));
  TIERKV_RETURN_IF_ERROR(cu::CopyToDevice(arena->base(), pinned.data(), bytes));
  std::vector<tierkv::PayloadPiece> device_pieces;
  for (int64_t i = 0; i < blocks; ++i) device_pieces.push_back({arena->base() + i * block, block});
  std::vector<std::span<const tierkv::PayloadPiece>> device_spans;
  for (const tierkv::PayloadPiece& p : device_pieces) device_spans.emplace_back(&p, 1);
  // cudaMemcpy between device buffers returns before the copy ends: wait for it.
  TIERKV_ASSIGN_OR_RETURN(double d2d, Bandwidth(bytes, repeats, [&]() -> absl::Status {
    TIERKV_RETURN_IF_ERROR(cu::CopyDeviceToDevice(device.data(), arena->base(), bytes));
    return cu::SynchronizeDevice();
  }));
  TIERKV_ASSIGN_OR_RETURN(double from_gpu_tier, Bandwidth(bytes, repeats, [&]() -> absl::Status {
    TIERKV_ASSIGN_OR_RETURN(std::unique_ptr<tierkv::Sequence> s, runtime.NewSequence(tokens));
    TIERKV_ASSIGN_OR_RETURN(size_t kept, s->AppendDeviceBlocks(device_spans, sums));
    return kept == device_spans.size() ? absl::OkStatus()
                                       : absl::DataLossError("device checksum mismatch");
  }));
  // What the GPU tier's Commit does: checksums of blocks in the arena, on the device.
  std::vector<uint64_t> arena_sums(blocks);
  TIERKV_ASSIGN_OR_RETURN(double commit_check, Bandwidth(bytes, repeats, [&]() -> absl::Status {
    TIERKV_RETURN_IF_ERROR(arena->Checksums(device_spans, arena_sums));
    return arena_sums == sums ? absl::OkStatus() : absl::DataLossError("arena checksum differs");
  }));
  std::cout << absl::StrFormat(
      "\n# host <-> GPU, %lld blocks of %s (%.2f GiB), median of %d (each includes a new "
      "sequence's allocation)\n"
      "| path | GB/s | baseline: cudaMemcpy of one pinned buffer GB/s | ratio |\n"
      "|---|---:|---:|---:|\n"
      "| block objects in pageable memory -> sequence KV (H2D; a worker fetching over UCX) | "
      "%.1f | %.1f | %.2f |\n"
      "| sequence KV -> block objects in pageable memory (D2H, ExtractBlocks; compared) | %.1f "
      "| %.1f | %.2f |\n"
      "| pinned block objects -> sequence KV in place, DMA only | %.1f | %.1f | %.2f |\n"
      "| pinned block objects -> sequence KV in place, checksums checked meanwhile | %.1f | %.1f "
      "| %.2f |\n"
      "| sequence KV -> pinned block objects in place with device checksums (D2H, the store "
      "path) | %.1f | %.1f | "
      "%.2f |\n"
      "| checksums alone (XXH3 on every CPU thread) | %.1f | - | - |\n"
      "| GPU tier block objects -> sequence KV, checked on the device (warm from the GPU "
      "tier) | %.1f | %.1f (D2D) | %.2f |\n"
      "| GPU tier checksums on the device (its Commit check) | %.1f | %.1f (D2D) | %.2f |\n",
      static_cast<long long>(blocks), tierkv::FormatBytes(block),
      static_cast<double>(bytes) / (1 << 30), repeats, in, h2d, in / h2d, out, d2h, out / d2h,
      dma, h2d, dma / h2d, both, h2d, both / h2d, write_back, d2h, write_back / d2h, hash,
      from_gpu_tier, d2d, from_gpu_tier / d2d, commit_check, d2d, commit_check / d2d);
  return absl::OkStatus();
}
#endif

}  // namespace

int main(int argc, char** argv) {
  tierkv::DisableMutexDeadlockDetection();
  CLI::App app{"ttft_bench: cold vs warm time to first token through tierkv's workers"};
  std::vector<int> lengths = {4096, 16384};
  int repeats = 3;
  tierkv::AllInOneOptions options;
  options.cache.listen_address = "127.0.0.1:0";
  options.cache.host_capacity_bytes = 1ull << 30;
  int host_gib = 1;
  app.add_option("--tokens", lengths, "prompt lengths")->delimiter(',')->capture_default_str();
  app.add_option("--repeats", repeats, "measurements per figure (median reported)")
      ->capture_default_str();
  app.add_option("--model", options.model, "builtin:tiny or a Hugging Face directory")
      ->capture_default_str();
  app.add_option("--threads", options.runtime.num_threads, "CPU compute threads (0: all)");
  app.add_option("--device", options.runtime.device, "auto, cpu or cuda")->capture_default_str();
  app.add_option("--host-gib", host_gib, "the cache manager's host tier, GiB")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  int gpu_gib = 0;
  app.add_option("--gpu-gib", gpu_gib,
                 "the cache manager's GPU tier, GiB (GPU only; 0: none, warm runs read the "
                 "host tier)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  options.cache.host_capacity_bytes = static_cast<uint64_t>(host_gib) << 30;
  options.gpu_capacity_bytes = static_cast<uint64_t>(gpu_gib) << 30;
  options.cache.data_dir.clear();  // Host tier only: the warm run reads host memory.

  auto all = tierkv::AllInOne::Start(options);
  if (!all.ok()) {
    std::cerr << "ttft_bench: " << all.status() << "\n";
    return 1;
  }
  const tierkv::ModelSpec& spec = (*all)->model().spec();
  auto stub = tierkv::v1::PrefillService::NewStub(
      grpc::CreateChannel((*all)->address(), grpc::InsecureChannelCredentials()));
  std::cout << absl::StrFormat(
      "# model %s on %s: %u layers, %u kv heads, head_dim %u, KV %s (%u bytes a token); cache "
      "manager and prefill worker in this process on %s; block bytes over the UCX data plane "
      "(UCX_TLS=%s)\n",
      spec.model_id, tierkv::kernels::DeviceName((*all)->model().device()), spec.num_layers, spec.num_kv_heads, spec.head_dim, spec.kv_dtype,
      static_cast<uint32_t>(spec.RawBlockBytes() / spec.block_tokens), (*all)->address(),
      getenv("UCX_TLS") ? getenv("UCX_TLS") : "unset: UCX picks");
  std::cout << ((*all)->gpu_tier_bytes() > 0
                    ? absl::StrFormat("# GPU tier of %s: new blocks stay on the GPU, warm runs "
                                      "read them there\n",
                                      tierkv::FormatBytes((*all)->gpu_tier_bytes()))
                    : std::string("# no GPU tier: warm runs read the host tier\n"));
  // TTFT is the worker's first_token_ms: from the request's arrival to the sampled first
  // token. A cold call then stores its new blocks before it answers; that shows in the RPC
  // column, not in TTFT.
  std::cout << "| tokens | cold TTFT ms (baseline) | warm TTFT ms | cold / warm | target | "
               "RPC ms cold / warm | warm: cached / computed | warm: lookup / fetch / compute "
               "ms | cold: compute / store ms |\n|---:|---:|---:|---:|---|---|---|---|---|\n";
  std::mt19937 rng(7);
  bool all_met = true;
  for (int n : lengths) {
    std::vector<double> cold_ms, warm_ms, cold_rpc, warm_rpc;
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
      cold_ms.push_back(c->response.timing().first_token_ms());
      warm_ms.push_back(w->response.timing().first_token_ms());
      cold_rpc.push_back(c->rpc_ms);
      warm_rpc.push_back(w->rpc_ms);
      cold = *c;
      warm = *w;
    }
    const double c = Median(cold_ms), w = Median(warm_ms);
    const bool has_target = n >= 16384;
    const bool met = c / w >= 10.0;
    if (has_target) all_met = all_met && met;
    const auto& wt = warm.response.timing();
    std::cout << absl::StrFormat(
        "| %d | %.1f | %.1f | %.1fx | %s | %.0f / %.0f | %u / %u | %.1f / %.1f / %.1f | %.1f / "
        "%.1f |\n",
        n, c, w, c / w,
        has_target ? (met ? "warm <= cold/10: met" : "warm <= cold/10: MISSED") : "-",
        Median(cold_rpc), Median(warm_rpc),
        warm.response.cached_tokens(), warm.response.computed_tokens(), wt.lookup_ms(),
        wt.fetch_ms(), wt.compute_ms(), cold.response.timing().compute_ms(),
        cold.response.timing().store_ms());
  }
#if TIERKV_HAVE_CUDA
  if ((*all)->model().device() == tierkv::kernels::Device::kCuda) {
    if (absl::Status s = MeasureTransfers((*all)->model(), repeats); !s.ok()) {
      std::cerr << "ttft_bench: transfers: " << s << "\n";
      return 1;
    }
  }
#endif
  (*all)->Shutdown();
  return all_met ? 0 : 2;
}
