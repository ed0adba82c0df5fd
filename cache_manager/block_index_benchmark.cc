// Micro benchmarks of the block index without gRPC: what a Lookup costs per key.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cache_manager/block_index.h"

namespace tierkv {
namespace {

struct Fixture {
  Fixture(size_t n, BlockIndexOptions::Admission admission) {
    // A 2 GiB tier in 64 KiB pages, as the gRPC benchmark's server has (the admission
    // sketch is sized by pages).
    pool = *HostPool::Create({.capacity_bytes = std::max<uint64_t>((n + 16) << 16, 2ull << 30),
                              .page_bytes = 64 << 10, .prefault = false});
    events = std::make_unique<EventLog>(1 << 16);
    BlockIndexOptions options;
    options.admission = admission;
    index = std::make_unique<BlockIndex>(options, pool.get(), RealClock(), events.get());
    std::vector<uint32_t> tokens(n * 16);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = i;
    chain = *ComputeBlockKeys(BuiltinTinyModelSpec(), "", tokens);
    std::vector<AllocateBlockSpec> specs;
    for (size_t i = 0; i < n; ++i) {
      specs.push_back({std::string(KeyBytes(chain[i])),
                       i == 0 ? "" : std::string(KeyBytes(chain[i - 1])), 4096, 0});  // 1 page.
    }
    auto a = *index->Allocate(BuiltinTinyModelSpec(), specs, absl::ZeroDuration());
    const std::string zeros(4096, '\0');
    std::vector<std::pair<std::string, uint64_t>> commits;
    for (auto& b : a.blocks) commits.emplace_back(std::string(KeyBytes(b.key)), BlockChecksum(zeros.data(), 4096));
    (void)*index->Commit(a.allocation_id, commits);
    for (const BlockKey& k : chain) packed.append(KeyBytes(k));
  }
  std::unique_ptr<HostPool> pool;
  std::unique_ptr<EventLog> events;
  std::unique_ptr<BlockIndex> index;
  std::vector<BlockKey> chain;
  std::string packed;
};

// Arguments: chain length, admission (0 all, 1 second-use, 2 auto). The keys as the
// service passes them: one packed buffer.
void BM_LookupChainPacked(benchmark::State& state) {
  const size_t n = state.range(0);
  Fixture f(n, static_cast<BlockIndexOptions::Admission>(state.range(1)));
  uint64_t sum = 0;
  for (auto _ : state) {
    auto r = f.index->LookupPacked(f.packed, std::nullopt, {}, false, absl::ZeroDuration(),
                                   [&](const CommittedBlock& b) { sum += b.size; });
    benchmark::DoNotOptimize(r);
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_LookupChainPacked)->ArgsProduct({{8192, 65536}, {0, 1, 2}});

// The same with the nearer caches cold, as on the gRPC path, where about 1 MiB of request
// and response copies passes through them between two Lookups; each found block's answer
// (24 of the 32 bytes a LookupResponse record holds) is written out, in batches, as the
// service does.
void BM_LookupChainPackedCold(benchmark::State& state) {
  const size_t n = state.range(0);
  Fixture f(n, static_cast<BlockIndexOptions::Admission>(state.range(1)));
  std::vector<char> scratch(2 << 20);
  std::vector<char> out(n * 32);
  for (auto _ : state) {
    state.PauseTiming();
    for (size_t i = 0; i < scratch.size(); i += 64) ++scratch[i];
    state.ResumeTiming();
    char* p = out.data();
    auto r = f.index->LookupPackedBatches(
        f.packed, std::nullopt, {}, false, absl::ZeroDuration(),
        [&](BlockIndex::BlockBatch blocks) {
          for (const CommittedBlock* b : blocks) {
            std::memcpy(p, &b->checksum, 8);
            std::memcpy(p + 8, &b->size, 8);
            std::memcpy(p + 16, &b->codec, 4);
            p += 32;
          }
        });
    benchmark::DoNotOptimize(r);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_LookupChainPackedCold)->ArgsProduct({{8192}, {0, 2}});

// The service's way: one-piece host blocks are answered by records the walk writes into
// the response buffer itself (LookupRecordSink), the rest through batches. With
// `scribble_bytes`, that much memory is written between two Lookups (untimed).
void LookupChainSink(benchmark::State& state, size_t scribble_bytes) {
  const size_t n = state.range(0);
  Fixture f(n, static_cast<BlockIndexOptions::Admission>(state.range(1)));
  std::vector<char> records(n * 32);
  std::vector<char> scratch(scribble_bytes);
  uint64_t batched = 0;
  for (auto _ : state) {
    if (!scratch.empty()) {
      state.PauseTiming();
      for (size_t i = 0; i < scratch.size(); i += 64) ++scratch[i];
      state.ResumeTiming();
    }
    LookupRecordSink sink{.records = records.data(), .capacity = n, .count = 0, .host_tier = 2};
    auto r = f.index->LookupPackedBatches(
        f.packed, std::nullopt, {}, false, absl::ZeroDuration(),
        [&](BlockIndex::BlockBatch blocks) { batched += blocks.size(); }, false, &sink);
    benchmark::DoNotOptimize(r);
    benchmark::DoNotOptimize(records.data());
  }
  benchmark::DoNotOptimize(batched);
  state.SetItemsProcessed(state.iterations() * n);
}
void BM_LookupChainSink(benchmark::State& state) { LookupChainSink(state, 0); }
BENCHMARK(BM_LookupChainSink)->ArgsProduct({{8192}, {0, 2}});
// With the blocks out of every cache (48 MiB, more than the last-level cache), as on a host
// whose neighbours keep the caches busy.
void BM_LookupChainSinkMemory(benchmark::State& state) { LookupChainSink(state, 48 << 20); }
BENCHMARK(BM_LookupChainSinkMemory)->ArgsProduct({{8192}, {0, 2}});

// The same through the vector-of-keys overload (which packs them first).
void BM_LookupChain(benchmark::State& state) {
  const size_t n = state.range(0);
  Fixture f(n, static_cast<BlockIndexOptions::Admission>(state.range(1)));
  std::vector<std::string_view> keys(n);
  for (size_t i = 0; i < n; ++i) keys[i] = std::string_view(f.packed).substr(i * 32, 32);
  uint64_t sum = 0;
  for (auto _ : state) {
    auto r = f.index->Lookup(keys, std::nullopt, {}, false, absl::ZeroDuration(),
                             [&](const CommittedBlock& b) { sum += b.size; });
    benchmark::DoNotOptimize(r);
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_LookupChain)->ArgsProduct({{8192, 65536}, {0, 1, 2}});

}  // namespace
}  // namespace tierkv

BENCHMARK_MAIN();
