// trace_replay: replays a request trace against a real tierkv-cache-manager over gRPC and
// prints the hit rate it got beside offline simulations of the same trace at the same
// capacity (plain LRU, the server's prefix-aware LRU, Belady, an infinite cache), measured
// in the same run.
//
//   trace_replay [--trace PATH] [--capacities 1000,4000,16000] [--server-arg=--flag=value]...
//   trace_replay --server 127.0.0.1:PORT --capacities 4000
//   trace_replay --simulate-only [--capacities ...] [--admission-bounds]
//   trace_replay --generate-trace PATH [--seed 1] [--describe-trace]
//   trace_replay --describe-trace [--trace PATH]
//
// Trace format (JSONL), one request a line: `timestamp` (ms since the start), `input_length`
// and `output_length` (tokens), `hash_ids` (one id per 512-token block of the prompt; equal
// ids are the same prefix block, so an id always follows the same parent id).
//
// Per request, in trace order: the key of hash id h is SHA-256("tierkv.trace" || u64le(h)).
// One Lookup of the request's key chain (no lease) gives the hit: the longest cached prefix.
// The blocks after it are allocated in one Allocate (parent keys set, raw codec, size
// --bytes-per-token x 512), each block the server answers ALLOCATED is written over its own
// Put stream (a deterministic payload derived from its hash id; up to --put-window streams
// in flight) and all of them are committed with their XXH3 checksums. Any other state
// (ALREADY_COMMITTED, IN_PROGRESS, or a block a policy declined to store) is counted and not
// written; RESOURCE_EXHAUSTED from Allocate is counted and the replay goes on.
//
// What is counted:
//   block references  every hash id of every request;
//   hit rate          blocks found by Lookup (the prefix) over block references;
//   token hit rate    tokens of the hit blocks over the input tokens: a block holds 512
//                     tokens except a request's last one, which holds the rest of its
//                     input_length (1 to 512);
//   bytes written     payload bytes sent over Put streams that the server acknowledged;
//   bytes read        hit blocks x block bytes: what a reader of the hits would fetch.
// The offline simulations use the same prefix semantics (a request hits only its longest
// cached prefix; then every block of the request is touched or inserted, in order):
//   LRU       plain LRU over blocks, any block may be evicted;
//   leaf LRU  the server's policy today: hits are touched at Lookup, only blocks without
//             cached children are evicted (least recently used first), the request's hit
//             prefix is held while its new blocks are allocated, and a request with more
//             new blocks than fit stores nothing;
//   Belady    evicts the cached block whose next reference is furthest in the future
//             (never referenced again first), admits every block;
//   infinite  nothing is ever evicted.
// With --admission-bounds also LRU behind admission rules that know more than a server can
// (exact second use, a rule fitted to the trace itself, a reuse oracle; see
// SimulateAdmissionBounds): how far admission alone could take the trace.
//
// Server. By default each capacity gets a fresh tierkv-cache-manager started by this
// program, bound to 127.0.0.1 on a port of its choosing (--port-file), without a data
// plane, with --host-capacity = capacity x page size and --page-size = block bytes rounded
// up to a power of two of at least 4 KiB (choose --bytes-per-token so that they are equal:
// each block then takes exactly one page), plus every --server-arg. It is stopped by its PID
// at the end. --server HOST:PORT uses a running server instead (127.0.0.1 or localhost
// only; one capacity, which only sizes the simulations).
//
// Every RPC has a deadline (--rpc-timeout) and the whole program a time limit (--timeout):
// when it runs out, the replay stops issuing requests and reports what ran.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/block_key.h"
#include "core/process.h"
#include "core/sha256.h"
#include "core/status.h"
#include "core/units.h"
#include "proto/grpc_status.h"
#include "tierkv/v1/admin_service.grpc.pb.h"
#include "tierkv/v1/cache_service.grpc.pb.h"


namespace tierkv::bench {
namespace {

namespace v1 = ::tierkv::v1;
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

constexpr uint32_t kBlockTokens = 512;
constexpr uint64_t kPutChunkBytes = 1 << 20;

struct Flags {
  std::string trace = "/work/shared/traces/conversation_trace.jsonl";
  size_t limit = 0;
  std::vector<uint64_t> capacities = {1000, 4000, 16000};
  uint32_t bytes_per_token = 64;
  double speedup = 0;
  int concurrency = 1;
  uint32_t put_window = 16;
  std::string server;
  std::string cache_manager = TIERKV_CACHE_MANAGER_BINARY;
  std::vector<std::string> server_args;
  std::string work_dir;
  bool keep_work_dir = false;
  double rpc_timeout_s = 30;
  double timeout_s = 3600;
  uint64_t max_errors = 100;
  std::string json_path;
  bool simulate_only = false;
  bool admission_bounds = false;
  // Trace generation and description.
  std::string generate_trace;
  bool describe_trace = false;
  uint64_t seed = 1;
  uint32_t gen_sessions = 700;
  uint32_t gen_documents = 3000;
  double gen_duration_s = 1800;
};

// ---------------------------------------------------------------------------------------
// Traces.

struct Request {
  int64_t timestamp_ms = 0;
  uint32_t input_length = 0;
  uint32_t output_length = 0;
  std::vector<uint64_t> ids;
};
using Trace = std::vector<Request>;

// Tokens of block `i` of `r`: 512, except the last block, which holds the rest of the
// input (clamped to [1, 512] when input_length disagrees with the number of ids).
uint32_t BlockTokensOf(const Request& r, size_t i) {
  if (i + 1 < r.ids.size()) return kBlockTokens;
  const int64_t rest = int64_t{r.input_length} - int64_t{kBlockTokens} * (r.ids.size() - 1);
  return static_cast<uint32_t>(std::clamp<int64_t>(rest, 1, kBlockTokens));
}

absl::StatusOr<Trace> LoadTrace(const std::string& path, size_t limit) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open trace ", path));
  Trace trace;
  std::string line;
  for (size_t line_no = 1; std::getline(in, line); ++line_no) {
    if (limit > 0 && trace.size() >= limit) break;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      const json j = json::parse(line);
      Request r;
      r.timestamp_ms = j.at("timestamp").get<int64_t>();
      r.input_length = j.at("input_length").get<uint32_t>();
      r.output_length = j.value("output_length", 0u);
      r.ids = j.at("hash_ids").get<std::vector<uint64_t>>();
      trace.push_back(std::move(r));
    } catch (const json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", line_no, ": ", e.what()));
    }
  }
  if (trace.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no requests"));
  return trace;
}

absl::Status WriteTrace(const Trace& trace, const std::string& path) {
  std::ofstream out(path, std::ios::trunc);
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  for (const Request& r : trace) {
    out << "{\"timestamp\": " << r.timestamp_ms << ", \"input_length\": " << r.input_length
        << ", \"output_length\": " << r.output_length << ", \"hash_ids\": ["
        << absl::StrJoin(r.ids, ", ") << "]}\n";
  }
  out.close();
  if (!out) return absl::UnavailableError(absl::StrCat("write to ", path, " failed"));
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------
// Hit accounting, shared by the replay and the simulations: each produces the blocks found
// per request.

using Hits = std::vector<uint32_t>;

struct Rates {
  uint64_t requests = 0;
  uint64_t block_refs = 0;
  uint64_t hit_blocks = 0;
  uint64_t tokens = 0;
  uint64_t hit_tokens = 0;

  double HitRate() const { return block_refs ? double(hit_blocks) / block_refs : 0; }
  double TokenHitRate() const { return tokens ? double(hit_tokens) / tokens : 0; }
};

// Rates over the requests whose `ran` entry is set (all of them when `ran` is empty).
Rates RatesOf(const Trace& trace, const Hits& hits, const std::vector<uint8_t>& ran = {}) {
  Rates rates;
  for (size_t i = 0; i < hits.size() && i < trace.size(); ++i) {
    if (!ran.empty() && !ran[i]) continue;
    const Request& r = trace[i];
    ++rates.requests;
    rates.block_refs += r.ids.size();
    rates.hit_blocks += hits[i];
    for (size_t b = 0; b < r.ids.size(); ++b) {
      const uint32_t t = BlockTokensOf(r, b);
      rates.tokens += t;
      if (b < hits[i]) rates.hit_tokens += t;
    }
  }
  return rates;
}

// ---------------------------------------------------------------------------------------
// Offline simulations over the first `n` requests. Capacities are in blocks.

template <typename Contains>
uint32_t PrefixHits(const Request& r, const Contains& contains) {
  uint32_t k = 0;
  while (k < r.ids.size() && contains(r.ids[k])) ++k;
  return k;
}

// The cache manager's host-tier policy today (cache_manager/block_index.cc): Lookup touches
// the hit prefix in order; Allocate evicts the least recently used blocks without cached
// children (never the request's hit prefix, which the allocation holds) until the new
// blocks fit, or stores nothing if they cannot; Commit inserts the new blocks in order.
Hits SimulateLeafLru(const Trace& trace, size_t n, uint64_t capacity) {
  struct Block {
    uint64_t seq = 0;
    uint32_t children = 0;
    std::optional<uint64_t> parent;
  };
  Hits hits(n, 0);
  absl::flat_hash_map<uint64_t, Block> cached;
  std::set<std::pair<uint64_t, uint64_t>> leaves;  // (seq, id) of blocks without children.
  uint64_t clock = 0;
  auto touch = [&](uint64_t id, Block& b) {
    if (b.children == 0) leaves.erase({b.seq, id});
    b.seq = ++clock;
    if (b.children == 0) leaves.emplace(b.seq, id);
  };
  for (size_t i = 0; i < n; ++i) {
    const Request& r = trace[i];
    const uint32_t k = PrefixHits(r, [&](uint64_t id) { return cached.contains(id); });
    hits[i] = k;
    for (uint32_t j = 0; j < k; ++j) touch(r.ids[j], cached[r.ids[j]]);
    const uint64_t need = r.ids.size() - k;
    if (need == 0 || need > capacity - std::min<uint64_t>(capacity, k)) continue;
    absl::flat_hash_set<uint64_t> held(r.ids.begin(), r.ids.begin() + k);
    while (cached.size() + need > capacity) {
      auto it = leaves.begin();
      while (held.contains(it->second)) ++it;  // Enough unheld blocks exist (checked above).
      const uint64_t id = it->second;
      leaves.erase(it);
      const std::optional<uint64_t> parent = cached[id].parent;
      cached.erase(id);
      if (parent) {
        auto p = cached.find(*parent);
        if (p != cached.end() && --p->second.children == 0) leaves.emplace(p->second.seq, *parent);
      }
    }
    for (size_t j = k; j < r.ids.size(); ++j) {
      Block& b = cached[r.ids[j]];
      if (j > 0) {
        b.parent = r.ids[j - 1];
        Block& p = cached.at(r.ids[j - 1]);
        if (p.children++ == 0) leaves.erase({p.seq, r.ids[j - 1]});
      }
      b.seq = ++clock;
      leaves.emplace(b.seq, r.ids[j]);
    }
  }
  return hits;
}

Hits SimulateBelady(const Trace& trace, size_t n, uint64_t capacity) {
  constexpr uint64_t kNever = UINT64_MAX;
  // Next reference of each reference, by global reference position.
  std::vector<uint64_t> next_use;
  {
    size_t refs = 0;
    for (size_t i = 0; i < n; ++i) refs += trace[i].ids.size();
    next_use.assign(refs, kNever);
    absl::flat_hash_map<uint64_t, uint64_t> later;
    size_t pos = refs;
    for (size_t i = n; i-- > 0;) {
      const auto& ids = trace[i].ids;
      for (size_t j = ids.size(); j-- > 0;) {
        --pos;
        auto [it, inserted] = later.try_emplace(ids[j], pos);
        if (!inserted) {
          next_use[pos] = it->second;
          it->second = pos;
        }
      }
    }
  }
  Hits hits(n, 0);
  absl::flat_hash_map<uint64_t, uint64_t> cached;   // id -> next use.
  std::set<std::pair<uint64_t, uint64_t>> by_next;  // (next use, id); evict the largest.
  size_t pos = 0;
  for (size_t i = 0; i < n; ++i) {
    const Request& r = trace[i];
    hits[i] = PrefixHits(r, [&](uint64_t id) { return cached.contains(id); });
    for (uint64_t id : r.ids) {
      const uint64_t next = next_use[pos++];
      if (capacity == 0) continue;
      auto it = cached.find(id);
      if (it != cached.end()) {
        by_next.erase({it->second, id});
      } else {
        if (cached.size() >= capacity) {
          auto victim = std::prev(by_next.end());
          cached.erase(victim->second);
          by_next.erase(victim);
        }
        it = cached.emplace(id, 0).first;
      }
      it->second = next;
      by_next.emplace(next, id);
    }
  }
  return hits;
}

Hits SimulateInfinite(const Trace& trace, size_t n) {
  Hits hits(n, 0);
  absl::flat_hash_set<uint64_t> seen;
  for (size_t i = 0; i < n; ++i) {
    hits[i] = PrefixHits(trace[i], [&](uint64_t id) { return seen.contains(id); });
    seen.insert(trace[i].ids.begin(), trace[i].ids.end());
  }
  return hits;
}

// ---------------------------------------------------------------------------------------
// Admission bounds (--admission-bounds): how far admission alone, in front of plain LRU,
// can take a trace, from rules that know more than any server can. They answer whether a
// target relative to Belady is reachable by an online policy on the trace at all.
//
//   second use (exact)  admits a new block into a full cache when it has been asked for at
//                       least twice so far, this request included (the server's
//                       `second-use` with an exact count instead of a decaying sketch);
//   fitted admission    admits a new block when the class of its position (log2 buckets of
//                       its request's blocks not seen before, its place among them and the
//                       request's prefix seen before, plus whether it is the request's last
//                       block) came back within H seconds at least a fraction theta of the
//                       time, measured over this very trace, alone or together with the
//                       exact second use; the best H, theta and combination are kept. Fitted
//                       in sample, it is an optimistic bound for a rule that predicts reuse
//                       from where a block sits in its request;
//   reuse oracle        admits exactly the blocks the trace references again (future
//                       knowledge).
// A block not admitted ends its request's admissions: the rest of the chain would be
// unreachable.

struct AdmissionContext {
  size_t request = 0;
  size_t block = 0;     // Position in the request.
  uint64_t asked = 0;   // Requests so far whose chain holds the block, this one included.
};

template <typename Admit>
Hits SimulateAdmittingLru(const Trace& trace, size_t n, uint64_t capacity, const Admit& admit) {
  Hits hits(n, 0);
  std::list<uint64_t> order;  // Front: most recently used.
  absl::flat_hash_map<uint64_t, std::list<uint64_t>::iterator> where;
  absl::flat_hash_map<uint64_t, uint64_t> asked;
  for (size_t i = 0; i < n; ++i) {
    const Request& r = trace[i];
    hits[i] = PrefixHits(r, [&](uint64_t id) { return where.contains(id); });
    bool admitting = true;
    for (size_t j = 0; j < r.ids.size(); ++j) {
      const uint64_t id = r.ids[j];
      const uint64_t count = ++asked[id];
      auto it = where.find(id);
      if (it != where.end()) {
        order.splice(order.begin(), order, it->second);
        continue;
      }
      if (!admitting || capacity == 0) continue;
      if (where.size() >= capacity) {
        if (!admit(AdmissionContext{.request = i, .block = j, .asked = count})) {
          admitting = false;
          continue;
        }
        where.erase(order.back());
        order.pop_back();
      }
      order.push_front(id);
      where.emplace(id, order.begin());
    }
  }
  return hits;
}

Hits SimulateLru(const Trace& trace, size_t n, uint64_t capacity) {
  return SimulateAdmittingLru(trace, n, capacity, [](const AdmissionContext&) { return true; });
}

// Per-position facts the admission bounds need, computed once per trace.
struct TraceFacts {
  // For request i, block j at offsets[i] + j: the class of the position and the seconds to
  // the block's next reference by a later request (infinity when there is none).
  std::vector<size_t> offsets;
  std::vector<uint16_t> position_class;
  std::vector<double> next_reference_s;
  // Whether the position is the block's first reference in the trace.
  std::vector<uint8_t> first_reference;
  static constexpr uint16_t kClasses = 9 * 9 * 9 * 2;
};

uint16_t Log2Bucket(uint64_t x) {
  return x == 0 ? 0 : static_cast<uint16_t>(std::min<int>(std::bit_width(x), 8));
}

TraceFacts FactsOf(const Trace& trace, size_t n) {
  TraceFacts f;
  f.offsets.resize(n + 1, 0);
  for (size_t i = 0; i < n; ++i) f.offsets[i + 1] = f.offsets[i] + trace[i].ids.size();
  const size_t refs = f.offsets[n];
  f.position_class.assign(refs, 0);
  f.next_reference_s.assign(refs, std::numeric_limits<double>::infinity());
  f.first_reference.assign(refs, 0);
  absl::flat_hash_set<uint64_t> seen;
  for (size_t i = 0; i < n; ++i) {
    const Request& r = trace[i];
    size_t seen_prefix = 0;
    while (seen_prefix < r.ids.size() && seen.contains(r.ids[seen_prefix])) ++seen_prefix;
    const size_t fresh = r.ids.size() - seen_prefix;
    for (size_t j = 0; j < r.ids.size(); ++j) {
      const uint16_t place = j < seen_prefix ? 0 : Log2Bucket(j - seen_prefix + 1);
      f.position_class[f.offsets[i] + j] = static_cast<uint16_t>(
          ((Log2Bucket(fresh) * 9 + place) * 9 + Log2Bucket(seen_prefix)) * 2 +
          (j + 1 == r.ids.size()));
      f.first_reference[f.offsets[i] + j] = seen.insert(r.ids[j]).second;
    }
  }
  absl::flat_hash_map<uint64_t, size_t> later;  // id -> next request referencing it.
  for (size_t i = n; i-- > 0;) {
    const Request& r = trace[i];
    for (size_t j = 0; j < r.ids.size(); ++j) {
      auto it = later.find(r.ids[j]);
      if (it != later.end() && it->second != i) {
        f.next_reference_s[f.offsets[i] + j] =
            (trace[it->second].timestamp_ms - r.timestamp_ms) / 1000.0;
      }
    }
    for (uint64_t id : r.ids) later[id] = i;
  }
  return f;
}

struct AdmissionBounds {
  Hits second_use, fitted, oracle;
  std::string fitted_rule;  // The H, theta and combination that did best.
};

AdmissionBounds SimulateAdmissionBounds(const Trace& trace, size_t n, uint64_t capacity,
                                        const TraceFacts& f) {
  AdmissionBounds b;
  b.second_use = SimulateAdmittingLru(trace, n, capacity,
                                      [](const AdmissionContext& c) { return c.asked >= 2; });
  b.oracle = SimulateAdmittingLru(trace, n, capacity, [&](const AdmissionContext& c) {
    return std::isfinite(f.next_reference_s[f.offsets[c.request] + c.block]);
  });
  const auto total = [](const Hits& h) { return std::accumulate(h.begin(), h.end(), uint64_t{0}); };
  uint64_t best = 0;
  for (double horizon : {30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                         std::numeric_limits<double>::infinity()}) {
    std::vector<double> came_back(TraceFacts::kClasses, 0), inserted(TraceFacts::kClasses, 0);
    for (size_t pos = 0; pos < f.position_class.size(); ++pos) {
      if (!f.first_reference[pos]) continue;
      inserted[f.position_class[pos]] += 1;
      came_back[f.position_class[pos]] += f.next_reference_s[pos] <= horizon;
    }
    std::vector<double> p(TraceFacts::kClasses, 0);
    for (size_t c = 0; c < p.size(); ++c) p[c] = inserted[c] > 0 ? came_back[c] / inserted[c] : 0;
    for (double theta = 0.05; theta < 0.66; theta += 0.05) {
      for (bool with_second_use : {false, true}) {
        Hits h = SimulateAdmittingLru(trace, n, capacity, [&](const AdmissionContext& c) {
          return (with_second_use && c.asked >= 2) ||
                 p[f.position_class[f.offsets[c.request] + c.block]] >= theta;
        });
        const uint64_t t = total(h);
        if (t > best || b.fitted.empty()) {
          best = t;
          b.fitted = std::move(h);
          b.fitted_rule = absl::StrFormat("reuse within %s s >= %.2f%s",
                                          std::isfinite(horizon) ? absl::StrCat(horizon) : "inf",
                                          theta, with_second_use ? ", or second use" : "");
        }
      }
    }
  }
  return b;
}

struct Simulations {
  Hits lru, leaf_lru, belady, infinite;
};

Simulations Simulate(const Trace& trace, size_t n, uint64_t capacity) {
  return Simulations{.lru = SimulateLru(trace, n, capacity),
                     .leaf_lru = SimulateLeafLru(trace, n, capacity),
                     .belady = SimulateBelady(trace, n, capacity),
                     .infinite = SimulateInfinite(trace, n)};
}

// ---------------------------------------------------------------------------------------
// Synthetic trace: multi-turn chat sessions over shared system prompts, plus one-off long
// documents. Its own generator and distributions, so a seed gives the same file with any
// standard library.

class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (uint64_t& s : s_) s = SplitMix(seed);
  }
  uint64_t Next() {  // xoshiro256**
    const uint64_t result = std::rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = std::rotl(s_[3], 45);
    return result;
  }
  double Uniform() { return (Next() >> 11) * 0x1.0p-53; }  // [0, 1)
  uint64_t Between(uint64_t lo, uint64_t hi) { return lo + Next() % (hi - lo + 1); }
  double Normal() {  // Box-Muller.
    const double u = 1.0 - Uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(2 * M_PI * Uniform());
  }
  double LogNormal(double median, double sigma) { return median * std::exp(sigma * Normal()); }
  // Pareto with scale `xm` and shape `alpha` (heavy tailed for small alpha).
  double Pareto(double xm, double alpha) { return xm / std::pow(1.0 - Uniform(), 1.0 / alpha); }

 private:
  static uint64_t SplitMix(uint64_t& x) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t s_[4];
};

// The shape of the synthetic workload. Sessions start uniformly over the duration; each
// opens with one of the system prompts (Zipf-popular), and each turn's prompt is the system
// prompt, the conversation so far, and 1-4 new blocks (the previous answer and the new
// message; the last block is partial, so the next turn recomputes it under a new id). Think
// times between turns are Pareto (heavy tailed). Documents are one-off prompts of 20-100
// fresh blocks arriving uniformly, never reused.
struct GeneratorShape {
  uint32_t system_prompts = 20;
  uint32_t system_min_blocks = 2, system_max_blocks = 8;
  double zipf_s = 1.0;
  double turns_median = 10, turns_sigma = 0.9;  // Turns per session: 1 + lognormal.
  uint32_t max_turns = 80;
  uint32_t turn_min_blocks = 1, turn_max_blocks = 4;
  uint32_t max_context_blocks = 240;  // A session ends at ~120K tokens.
  double think_xm_s = 8, think_alpha = 1.3, think_cap_s = 1800;
  double decode_tokens_per_s = 30;
  uint32_t output_min = 30, output_max = 800;
  uint32_t document_min_blocks = 20, document_max_blocks = 100;
};

Trace GenerateTrace(const Flags& flags, const GeneratorShape& shape = {}) {
  Rng rng(flags.seed);
  const double duration_ms = flags.gen_duration_s * 1e3;
  uint64_t next_id = 0;
  auto fresh = [&](std::vector<uint64_t>& out, uint64_t count) {
    for (uint64_t i = 0; i < count; ++i) out.push_back(next_id++);
  };
  auto finish = [&](Request& r) {
    r.input_length =
        static_cast<uint32_t>((r.ids.size() - 1) * kBlockTokens + rng.Between(1, kBlockTokens));
    r.output_length = static_cast<uint32_t>(rng.Between(shape.output_min, shape.output_max));
  };

  std::vector<std::vector<uint64_t>> prompts(shape.system_prompts);
  std::vector<double> cumulative;
  double total_weight = 0;
  for (uint32_t p = 0; p < shape.system_prompts; ++p) {
    fresh(prompts[p], rng.Between(shape.system_min_blocks, shape.system_max_blocks));
    total_weight += 1.0 / std::pow(p + 1, shape.zipf_s);
    cumulative.push_back(total_weight);
  }

  Trace trace;
  for (uint32_t s = 0; s < flags.gen_sessions; ++s) {
    const double pick = rng.Uniform() * total_weight;
    const size_t prompt = std::min<size_t>(
        std::upper_bound(cumulative.begin(), cumulative.end(), pick) - cumulative.begin(),
        prompts.size() - 1);
    const uint32_t turns = std::min<uint32_t>(
        shape.max_turns,
        1 + static_cast<uint32_t>(rng.LogNormal(shape.turns_median, shape.turns_sigma)));
    std::vector<uint64_t> history = prompts[prompt];  // Full blocks reused by the next turn.
    double t = rng.Uniform() * duration_ms;
    for (uint32_t turn = 0; turn < turns; ++turn) {
      Request r;
      r.timestamp_ms = static_cast<int64_t>(t);
      r.ids = history;
      fresh(r.ids, rng.Between(shape.turn_min_blocks, shape.turn_max_blocks));
      if (r.ids.size() > shape.max_context_blocks) break;
      finish(r);
      history.assign(r.ids.begin(), r.ids.end() - 1);
      const double think_s =
          std::min(shape.think_cap_s, rng.Pareto(shape.think_xm_s, shape.think_alpha));
      t += (r.output_length / shape.decode_tokens_per_s + think_s) * 1e3;
      trace.push_back(std::move(r));
    }
  }
  for (uint32_t d = 0; d < flags.gen_documents; ++d) {
    Request r;
    r.timestamp_ms = static_cast<int64_t>(rng.Uniform() * duration_ms);
    fresh(r.ids, rng.Between(shape.document_min_blocks, shape.document_max_blocks));
    finish(r);
    trace.push_back(std::move(r));
  }
  std::stable_sort(trace.begin(), trace.end(), [](const Request& a, const Request& b) {
    return a.timestamp_ms < b.timestamp_ms;
  });
  return trace;
}

void DescribeTrace(const Trace& trace, const std::string& name) {
  absl::flat_hash_set<uint64_t> unique;
  absl::flat_hash_map<uint64_t, int64_t> parent_of;  // -1: a first block.
  uint64_t refs = 0, tokens = 0, parent_conflicts = 0, max_blocks = 0;
  for (const Request& r : trace) {
    refs += r.ids.size();
    max_blocks = std::max<uint64_t>(max_blocks, r.ids.size());
    tokens += r.input_length;
    for (size_t j = 0; j < r.ids.size(); ++j) {
      unique.insert(r.ids[j]);
      const int64_t parent = j == 0 ? -1 : static_cast<int64_t>(r.ids[j - 1]);
      auto [it, inserted] = parent_of.try_emplace(r.ids[j], parent);
      if (!inserted && it->second != parent) ++parent_conflicts;
    }
  }
  const Rates infinite = RatesOf(trace, SimulateInfinite(trace, trace.size()));
  absl::PrintF("trace %s\n", name.c_str());
  absl::PrintF("  requests                 %d\n", trace.size());
  absl::PrintF("  span                     %.1f s\n",
               (trace.back().timestamp_ms - trace.front().timestamp_ms) / 1e3);
  absl::PrintF("  block references         %d (%.1f a request, at most %d)\n", refs,
               double(refs) / trace.size(), max_blocks);
  absl::PrintF("  unique blocks            %d\n", unique.size());
  absl::PrintF("  input tokens             %d\n", tokens);
  absl::PrintF("  infinite-cache hit rate  %.2f%% of block references, %.2f%% of tokens\n",
               100 * infinite.HitRate(), 100 * infinite.TokenHitRate());
  absl::PrintF("  ids with two parents     %d%s\n", parent_conflicts,
               parent_conflicts ? " (the trace breaks the prefix property)" : "");
}

// ---------------------------------------------------------------------------------------
// A tierkv-cache-manager child process, stopped by its PID.

// The running child, for the signal handler: an interrupted driver stops its server too.
std::atomic<pid_t> g_child{0};

void OnFatalSignal(int sig) {
  const pid_t child = g_child.load();
  if (child > 0) kill(child, SIGTERM);
  signal(sig, SIG_DFL);
  raise(sig);
}

// Not thread-safe; one owner.
class CacheManagerProcess {
 public:
  // Starts `binary` with `args` (after --listen/--port-file), its output in
  // `work_dir`/`name`.log, and waits until it has published its port (at most until
  // `deadline`). UNAVAILABLE with the log's tail when it exits or does not come up.
  static absl::StatusOr<std::unique_ptr<CacheManagerProcess>> Start(
      const std::string& binary, const std::vector<std::string>& args, const fs::path& work_dir,
      const std::string& name, absl::Time deadline) {
    auto p = std::unique_ptr<CacheManagerProcess>(new CacheManagerProcess());
    p->log_ = work_dir / (name + ".log");
    const fs::path port_file = work_dir / (name + ".port");
    std::error_code ec;
    fs::remove(port_file, ec);
    std::vector<std::string> argv_s = {binary, "--listen", "127.0.0.1:0", "--port-file",
                                       port_file.string()};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    p->command_ = absl::StrJoin(argv_s, " ");
    TIERKV_ASSIGN_OR_RETURN(p->pid_, SpawnLogged(argv_s, p->log_.string(), /*truncate_log=*/true));
    g_child.store(p->pid_);
    auto port = WaitForPortFile(p->pid_, port_file.string(),
                                std::max(absl::ZeroDuration(), deadline - absl::Now()));
    if (!port.ok()) {
      if (port.status().code() == absl::StatusCode::kUnavailable) {
        p->pid_ = 0;  // Exited and reaped.
        g_child.store(0);
      }
      return absl::Status(port.status().code(),
                          absl::StrCat("cache manager: ", port.status().message(), ":\n",
                                       p->LogTail()));
    }
    p->address_ = absl::StrCat("127.0.0.1:", *port);
    return p;
  }

  ~CacheManagerProcess() { Stop(); }
  CacheManagerProcess(const CacheManagerProcess&) = delete;
  CacheManagerProcess& operator=(const CacheManagerProcess&) = delete;

  // SIGTERM, then SIGKILL if it has not exited within 10 s. Idempotent.
  void Stop() {
    if (pid_ <= 0) return;
    StopProcess(pid_, SIGTERM, absl::Seconds(10));
    pid_ = 0;
    g_child.store(0);
  }

  std::string LogTail(size_t bytes = 4000) const {
    std::ifstream in(log_);
    std::string text((std::istreambuf_iterator<char>(in)), {});
    return text.size() > bytes ? text.substr(text.size() - bytes) : text;
  }
  const std::string& address() const { return address_; }
  const std::string& command() const { return command_; }
  pid_t pid() const { return pid_; }

 private:
  CacheManagerProcess() = default;

  pid_t pid_ = 0;
  fs::path log_;
  std::string address_;
  std::string command_;
};

// ---------------------------------------------------------------------------------------
// Replay.

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Nearest-rank percentile of `samples` (which it reorders), q in [0, 1].
double PercentileMs(std::vector<int64_t>& samples, double q) {
  if (samples.empty()) return 0;
  const size_t rank = static_cast<size_t>(std::ceil(q * samples.size()));
  const size_t i = std::min(samples.size() - 1, rank == 0 ? 0 : rank - 1);
  std::nth_element(samples.begin(), samples.begin() + i, samples.end());
  return samples[i] * 1e-6;
}

BlockKey TraceKey(uint64_t hash_id) {
  Sha256 sha;
  sha.Update("tierkv.trace");
  sha.UpdateU64(hash_id);
  return sha.Finish();
}

// A block's payload follows from its hash id alone, so any writer stores the same bytes.
void FillPayload(uint64_t hash_id, std::string& out) {
  uint64_t x = hash_id * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(&out[i], &x, 8);
  }
  for (; i < out.size(); ++i) out[i] = static_cast<char>(x >> (8 * (i % 8)));
}

// The model the blocks are stored under: one layer, one KV head, bf16, so that a 512-token
// block of it is exactly the block size (bytes per token = 2 x head_dim x 2 bytes).
v1::ModelSpec TraceModel(uint32_t bytes_per_token) {
  v1::ModelSpec m;
  m.set_model_id("trace-replay");
  m.set_weights_digest("synthetic");
  m.set_num_layers(1);
  m.set_num_kv_heads(1);
  m.set_head_dim(bytes_per_token / 4);
  m.set_kv_dtype("bf16");
  m.set_block_tokens(kBlockTokens);
  m.set_tp_rank(0);
  m.set_tp_size(1);
  return m;
}

// Outcomes of one replay, summed over workers.
struct Counters {
  uint64_t requests = 0;         // Requests whose Lookup answered.
  uint64_t failed_requests = 0;  // Requests whose Lookup failed.
  uint64_t blocks_to_store = 0;  // Blocks after the hit prefix, asked of Allocate.
  uint64_t allocated = 0;
  uint64_t already_committed = 0;
  uint64_t in_progress = 0;
  uint64_t declined = 0;            // Any other state: the server chose not to store the block.
  uint64_t exhausted_requests = 0;  // Allocate answered RESOURCE_EXHAUSTED ...
  uint64_t exhausted_blocks = 0;    // ... for this many blocks.
  uint64_t blocks_written = 0;      // Put streams acknowledged.
  uint64_t bytes_written = 0;
  uint64_t blocks_committed = 0;

  void Add(const Counters& o) {
    requests += o.requests;
    failed_requests += o.failed_requests;
    blocks_to_store += o.blocks_to_store;
    allocated += o.allocated;
    already_committed += o.already_committed;
    in_progress += o.in_progress;
    declined += o.declined;
    exhausted_requests += o.exhausted_requests;
    exhausted_blocks += o.exhausted_blocks;
    blocks_written += o.blocks_written;
    bytes_written += o.bytes_written;
    blocks_committed += o.blocks_committed;
  }
};

struct ReplayResult {
  Hits hits;
  std::vector<uint8_t> ran;  // Requests whose Lookup answered.
  Counters counters;
  std::map<std::string, uint64_t> errors;  // "Call: CODE: first message" -> count.
  std::vector<int64_t> lookup_ns;
  double seconds = 0;
  bool timed_out = false;
  bool aborted = false;  // Too many errors.
  std::optional<v1::StatsResponse> stats;
};

// Replays a trace with `concurrency` workers, each with its own connection, taking requests
// in trace order. Thread-safe as documented per member; Run() once.
class Replayer {
 public:
  Replayer(const Flags& flags, const Trace& trace, size_t n, absl::Time deadline, std::string label)
      : flags_(flags),
        trace_(trace),
        n_(n),
        deadline_(deadline),
        label_(std::move(label)),
        block_bytes_(uint64_t{flags.bytes_per_token} * kBlockTokens),
        model_(TraceModel(flags.bytes_per_token)) {}

  absl::StatusOr<ReplayResult> Run(const std::string& address) {
    ReplayResult result;
    result.hits.assign(n_, 0);
    result.ran.assign(n_, false);
    std::vector<std::unique_ptr<Worker>> workers;
    for (int w = 0; w < std::max(1, flags_.concurrency); ++w) {
      auto worker = std::make_unique<Worker>();
      grpc::ChannelArguments args;
      args.SetMaxReceiveMessageSize(64 << 20);
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // A connection per worker.
      worker->channel =
          grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
      if (!worker->channel->WaitForConnected(std::chrono::system_clock::now() +
                                             std::chrono::seconds(10))) {
        return absl::UnavailableError(absl::StrCat("cannot connect to ", address));
      }
      worker->stub = v1::CacheService::NewStub(worker->channel);
      worker->payload.resize(block_bytes_);
      workers.push_back(std::move(worker));
    }

    start_ns_ = NowNs();
    std::vector<std::thread> threads;
    for (auto& w : workers) {
      threads.emplace_back([this, &result, worker = w.get()] { WorkerLoop(*worker, result); });
    }
    for (std::thread& t : threads) t.join();
    result.seconds = (NowNs() - start_ns_) * 1e-9;
    result.timed_out = timed_out_.load();
    result.aborted = aborted_.load();
    for (auto& w : workers) {
      result.counters.Add(w->counters);
      result.lookup_ns.insert(result.lookup_ns.end(), w->lookup_ns.begin(), w->lookup_ns.end());
    }
    absl::MutexLock lock(&mu_);
    result.errors = errors_;

    auto admin = v1::AdminService::NewStub(workers[0]->channel);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::StatsResponse stats;
    if (grpc::Status s = admin->Stats(&context, v1::StatsRequest(), &stats); s.ok()) {
      result.stats = std::move(stats);
    } else {
      ++result.errors[absl::StrCat("Stats: ", FromGrpcStatus(s).ToString())];
    }
    return result;
  }

 private:
  struct Worker {
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<v1::CacheService::Stub> stub;
    std::string payload;  // Scratch for one block's bytes.
    Counters counters;
    std::vector<int64_t> lookup_ns;
  };

  // Deadline of an RPC started now: the per-call limit, or the run's end if sooner.
  std::chrono::system_clock::time_point CallDeadline() const {
    const absl::Time end = std::min(absl::Now() + absl::Seconds(flags_.rpc_timeout_s), deadline_);
    return absl::ToChronoTime(end);
  }

  // Records a failed call. The run stops once more than --max-errors calls failed.
  void Error(const std::string& call, const grpc::Status& status) {
    absl::MutexLock lock(&mu_);
    const std::string key = absl::StrCat(call, ": ", FromGrpcStatus(status).ToString());
    // Messages may name keys or allocations: group by call and code, keep the first message.
    const std::string group =
        absl::StrCat(call, ": ", absl::StatusCodeToString(FromGrpcStatus(status).code()));
    auto it = error_groups_.find(group);
    if (it == error_groups_.end()) it = error_groups_.emplace(group, key).first;
    ++errors_[it->second];
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && absl::Now() >= deadline_) {
      timed_out_.store(true);
      return;
    }
    if (++error_count_ > flags_.max_errors) aborted_.store(true);
  }

  void WorkerLoop(Worker& w, ReplayResult& result) {
    while (!aborted_.load() && !timed_out_.load()) {
      const size_t i = next_.fetch_add(1);
      if (i >= n_) return;
      const Request& r = trace_[i];
      if (flags_.speedup > 0) {
        const int64_t due =
            start_ns_ +
            static_cast<int64_t>((r.timestamp_ms - trace_[0].timestamp_ms) * 1e6 / flags_.speedup);
        const absl::Duration wait = absl::Nanoseconds(due - NowNs());
        if (absl::Now() + wait > deadline_) {
          timed_out_.store(true);
          return;
        }
        absl::SleepFor(wait);
      }
      if (absl::Now() >= deadline_) {
        timed_out_.store(true);
        return;
      }
      std::optional<uint32_t> found = ReplayOne(w, r);
      if (found) {
        result.hits[i] = *found;  // Each index is written by one worker only.
        result.ran[i] = true;
      }
      Progress();
    }
  }

  void Progress() {
    const size_t done = completed_.fetch_add(1) + 1;
    const size_t step = std::max<size_t>(1, n_ / 10);
    if (done % step != 0 && done != n_) return;
    const double s = (NowNs() - start_ns_) * 1e-9;
    absl::MutexLock lock(&mu_);
    absl::FPrintF(stderr, "  [%s] %3.0f%%  %d/%d requests  %.1f s  %.0f req/s\n", label_.c_str(),
                  100.0 * done / n_, done, n_, s, done / std::max(s, 1e-9));
  }

  // One request; the blocks Lookup found, or nullopt when the Lookup failed.
  std::optional<uint32_t> ReplayOne(Worker& w, const Request& r) {
    std::vector<BlockKey> keys;
    keys.reserve(r.ids.size());
    std::string packed;
    packed.reserve(r.ids.size() * kDigestBytes);
    for (uint64_t id : r.ids) {
      keys.push_back(TraceKey(id));
      packed.append(KeyBytes(keys.back()));
    }

    v1::LookupRequest lookup;
    lookup.set_keys(std::move(packed));
    v1::LookupResponse found_response;
    {
      grpc::ClientContext context;
      context.set_deadline(CallDeadline());
      const int64_t t0 = NowNs();
      grpc::Status s = w.stub->Lookup(&context, lookup, &found_response);
      const int64_t t1 = NowNs();
      if (!s.ok()) {
        ++w.counters.failed_requests;
        Error("Lookup", s);
        return std::nullopt;
      }
      w.lookup_ns.push_back(t1 - t0);
    }
    const uint32_t found = std::min<uint32_t>(found_response.found(), keys.size());
    ++w.counters.requests;
    if (found == keys.size()) return found;
    Store(w, r, keys, found);
    return found;
  }

  // Allocates, writes and commits blocks [first, end) of the request.
  void Store(Worker& w, const Request& r, const std::vector<BlockKey>& keys, uint32_t first) {
    v1::AllocateRequest alloc;
    *alloc.mutable_model() = model_;
    for (size_t j = first; j < keys.size(); ++j) {
      auto* b = alloc.add_blocks();
      b->set_key(std::string(KeyBytes(keys[j])));
      if (j > 0) b->set_parent_key(std::string(KeyBytes(keys[j - 1])));
      b->set_size(block_bytes_);
      b->set_codec(v1::CODEC_RAW);
    }
    w.counters.blocks_to_store += alloc.blocks_size();
    v1::AllocateResponse allocated;
    {
      grpc::ClientContext context;
      context.set_deadline(CallDeadline());
      grpc::Status s = w.stub->Allocate(&context, alloc, &allocated);
      if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        ++w.counters.exhausted_requests;
        w.counters.exhausted_blocks += alloc.blocks_size();
        return;
      }
      if (!s.ok()) {
        Error("Allocate", s);
        return;
      }
    }
    // Blocks to write, as indices into `keys`.
    std::vector<size_t> to_write;
    for (int b = 0; b < allocated.blocks_size(); ++b) {
      switch (allocated.blocks(b).state()) {
        case v1::AllocateResponse::STATE_ALLOCATED:
          ++w.counters.allocated;
          to_write.push_back(first + b);
          break;
        case v1::AllocateResponse::STATE_ALREADY_COMMITTED:
          ++w.counters.already_committed;
          break;
        case v1::AllocateResponse::STATE_IN_PROGRESS:
          ++w.counters.in_progress;
          break;
        default:
          ++w.counters.declined;
          break;
      }
    }
    const uint64_t allocation = allocated.allocation_id();
    if (to_write.empty() || allocation == 0) return;

    v1::CommitRequest commit;
    commit.set_allocation_id(allocation);
    bool all_written = true;
    for (size_t begin = 0; begin < to_write.size(); begin += flags_.put_window) {
      const size_t end = std::min<size_t>(to_write.size(), begin + flags_.put_window);
      if (!PutWindow(w, r, keys, allocation, to_write, begin, end, commit)) all_written = false;
    }
    if (commit.blocks_size() > 0) {
      grpc::ClientContext context;
      context.set_deadline(CallDeadline());
      v1::CommitResponse committed;
      grpc::Status s = w.stub->Commit(&context, commit, &committed);
      if (s.ok()) {
        w.counters.blocks_committed += committed.committed();
      } else {
        Error("Commit", s);
        all_written = false;
      }
    }
    if (!all_written) {
      // Not bounded by the run's end: an allocation left behind would hold its space until
      // its write lease expired.
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      v1::AbortRequest abort;
      abort.set_allocation_id(allocation);
      v1::AbortResponse aborted;
      if (grpc::Status s = w.stub->Abort(&context, abort, &aborted); !s.ok()) Error("Abort", s);
    }
  }

  // Writes blocks to_write[begin, end) over one Put stream each, all streams open at once
  // (their round trips overlap); adds the acknowledged ones to `commit`. False if any failed.
  bool PutWindow(Worker& w, const Request& r, const std::vector<BlockKey>& keys,
                 uint64_t allocation, const std::vector<size_t>& to_write, size_t begin, size_t end,
                 v1::CommitRequest& commit) {
    struct Stream {
      size_t block;
      uint64_t checksum;
      grpc::ClientContext context;
      v1::PutResponse response;
      std::unique_ptr<grpc::ClientWriter<v1::PutRequest>> writer;
    };
    std::vector<std::unique_ptr<Stream>> streams;
    for (size_t t = begin; t < end; ++t) {
      auto stream = std::make_unique<Stream>();
      stream->block = to_write[t];
      FillPayload(r.ids[stream->block], w.payload);
      stream->checksum = BlockChecksum(w.payload.data(), w.payload.size());
      stream->context.set_deadline(CallDeadline());
      stream->writer = w.stub->Put(&stream->context, &stream->response);
      for (uint64_t off = 0; off < block_bytes_; off += kPutChunkBytes) {
        v1::PutRequest chunk;
        if (off == 0) {
          chunk.set_allocation_id(allocation);
          chunk.set_key(std::string(KeyBytes(keys[stream->block])));
        }
        chunk.set_offset(off);
        chunk.set_data(w.payload.substr(off, kPutChunkBytes));
        const bool last = off + kPutChunkBytes >= block_bytes_;
        const bool ok = last ? stream->writer->Write(chunk, grpc::WriteOptions().set_last_message())
                             : stream->writer->Write(chunk);
        if (!ok) break;  // The stream failed; Finish says why.
      }
      streams.push_back(std::move(stream));
    }
    bool ok = true;
    for (auto& stream : streams) {
      grpc::Status s = stream->writer->Finish();
      if (s.ok() && stream->response.bytes_written() != block_bytes_) {
        s = grpc::Status(grpc::StatusCode::INTERNAL,
                         absl::StrCat("Put acknowledged ", stream->response.bytes_written(), " of ",
                                      block_bytes_, " bytes"));
      }
      if (!s.ok()) {
        Error("Put", s);
        ok = false;
        continue;
      }
      ++w.counters.blocks_written;
      w.counters.bytes_written += block_bytes_;
      auto* c = commit.add_blocks();
      c->set_key(std::string(KeyBytes(keys[stream->block])));
      c->set_checksum(stream->checksum);
    }
    return ok;
  }

  // Constant after construction.
  const Flags& flags_;
  const Trace& trace_;
  const size_t n_;
  const absl::Time deadline_;
  const std::string label_;
  const uint64_t block_bytes_;
  const v1::ModelSpec model_;
  int64_t start_ns_ = 0;  // Set before the workers start.

  std::atomic<size_t> next_{0};
  std::atomic<size_t> completed_{0};
  std::atomic<bool> timed_out_{false};
  std::atomic<bool> aborted_{false};
  absl::Mutex mu_;
  std::map<std::string, uint64_t> errors_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> error_groups_ ABSL_GUARDED_BY(mu_);
  uint64_t error_count_ ABSL_GUARDED_BY(mu_) = 0;
};

// ---------------------------------------------------------------------------------------
// Reporting.

// Every field of a message, whatever the server's version holds (new counters included):
// scalars as numbers, enums by name, repeated and nested messages recursively.
json MessageToJson(const google::protobuf::Message& m) {
  using google::protobuf::FieldDescriptor;
  const auto* d = m.GetDescriptor();
  const auto* r = m.GetReflection();
  json out = json::object();
  auto scalar = [&](const FieldDescriptor* f, int index) -> json {
    const bool rep = index >= 0;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        return rep ? r->GetRepeatedInt32(m, f, index) : r->GetInt32(m, f);
      case FieldDescriptor::CPPTYPE_INT64:
        return rep ? r->GetRepeatedInt64(m, f, index) : r->GetInt64(m, f);
      case FieldDescriptor::CPPTYPE_UINT32:
        return rep ? r->GetRepeatedUInt32(m, f, index) : r->GetUInt32(m, f);
      case FieldDescriptor::CPPTYPE_UINT64:
        return rep ? r->GetRepeatedUInt64(m, f, index) : r->GetUInt64(m, f);
      case FieldDescriptor::CPPTYPE_DOUBLE:
        return rep ? r->GetRepeatedDouble(m, f, index) : r->GetDouble(m, f);
      case FieldDescriptor::CPPTYPE_FLOAT:
        return rep ? r->GetRepeatedFloat(m, f, index) : r->GetFloat(m, f);
      case FieldDescriptor::CPPTYPE_BOOL:
        return rep ? r->GetRepeatedBool(m, f, index) : r->GetBool(m, f);
      case FieldDescriptor::CPPTYPE_STRING:
        return rep ? r->GetRepeatedString(m, f, index) : r->GetString(m, f);
      case FieldDescriptor::CPPTYPE_ENUM: {
        const auto* e = rep ? r->GetRepeatedEnum(m, f, index) : r->GetEnum(m, f);
        return e->name();
      }
      case FieldDescriptor::CPPTYPE_MESSAGE:
        return MessageToJson(rep ? r->GetRepeatedMessage(m, f, index) : r->GetMessage(m, f));
    }
    return nullptr;
  };
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->is_repeated()) {
      json list = json::array();
      for (int k = 0; k < r->FieldSize(m, f); ++k) list.push_back(scalar(f, k));
      out[f->name()] = std::move(list);
    } else {
      out[f->name()] = scalar(f, -1);
    }
  }
  return out;
}

std::string Flat(const json& j) {
  std::vector<std::string> parts;
  for (const auto& [k, v] : j.items()) {
    if (v.is_array() || v.is_object()) continue;
    parts.push_back(absl::StrCat(k, "=", v.is_string() ? v.get<std::string>() : v.dump()));
  }
  return absl::StrJoin(parts, " ");
}

struct CapacityResult {
  uint64_t capacity = 0;
  std::string server_command;
  std::optional<ReplayResult> replay;
  Rates replay_rates, lru, leaf_lru, belady, infinite;
  // With --admission-bounds.
  std::optional<Rates> second_use, fitted, oracle;
  std::string fitted_rule;
  // Requests whose replayed hit differs from the leaf LRU model's: 0 while the server's
  // policy is the one the model describes.
  uint64_t differs_from_leaf_lru = 0;
};

std::string Percent(double x) { return absl::StrFormat("%.2f", 100 * x); }
std::string Ratio(double a, double b) { return b > 0 ? absl::StrFormat("%.2f", a / b) : "-"; }

void PrintTable(const std::vector<CapacityResult>& results, bool replayed) {
  std::vector<std::string> head = {"capacity blocks", "requests", "block refs"};
  if (replayed) head.insert(head.end(), {"replay hit %", "replay token hit %"});
  head.insert(head.end(), {"LRU %", "leaf LRU %", "Belady %", "infinite %"});
  if (replayed) {
    head.insert(head.end(), {"replay / Belady", "replay / LRU", "req/s", "Lookup p50 ms", "p99 ms",
                             "p99.9 ms", "written GB", "read GB"});
  }
  absl::PrintF("| %s |\n|", absl::StrJoin(head, " | ").c_str());
  for (size_t i = 0; i < head.size(); ++i) absl::PrintF("---:|");
  absl::PrintF("\n");
  for (const CapacityResult& c : results) {
    const Rates& base = c.replay ? c.replay_rates : c.lru;
    std::vector<std::string> row = {absl::StrCat(c.capacity), absl::StrCat(base.requests),
                                    absl::StrCat(base.block_refs)};
    if (replayed) {
      row.push_back(Percent(c.replay_rates.HitRate()));
      row.push_back(Percent(c.replay_rates.TokenHitRate()));
    }
    for (const Rates* r : {&c.lru, &c.leaf_lru, &c.belady, &c.infinite}) {
      row.push_back(Percent(r->HitRate()));
    }
    if (replayed) {
      const ReplayResult& rep = *c.replay;
      std::vector<int64_t> lat = rep.lookup_ns;
      row.push_back(Ratio(c.replay_rates.HitRate(), c.belady.HitRate()));
      row.push_back(Ratio(c.replay_rates.HitRate(), c.lru.HitRate()));
      row.push_back(absl::StrFormat("%.0f", rep.counters.requests / std::max(rep.seconds, 1e-9)));
      row.push_back(absl::StrFormat("%.3f", PercentileMs(lat, 0.50)));
      row.push_back(absl::StrFormat("%.3f", PercentileMs(lat, 0.99)));
      row.push_back(absl::StrFormat("%.3f", PercentileMs(lat, 0.999)));
      row.push_back(absl::StrFormat("%.2f", rep.counters.bytes_written * 1e-9));
      const uint64_t block_bytes = rep.counters.blocks_written
                                       ? rep.counters.bytes_written / rep.counters.blocks_written
                                       : 0;
      row.push_back(absl::StrFormat("%.2f", c.replay_rates.hit_blocks * block_bytes * 1e-9));
    }
    absl::PrintF("| %s |\n", absl::StrJoin(row, " | ").c_str());
  }
}

// The --admission-bounds table: LRU behind each admission rule, against Belady.
void PrintBoundsTable(const std::vector<CapacityResult>& results) {
  if (results.empty() || !results.front().fitted) return;
  absl::PrintF(
      "\nadmission in front of LRU (offline; fitted = in-sample, optimistic; oracle = future "
      "knowledge):\n| capacity blocks | LRU %% | second use (exact) %% | fitted %% | reuse "
      "oracle %% | Belady %% | second use / Belady | fitted / Belady | oracle / Belady | "
      "fitted rule |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
  for (const CapacityResult& c : results) {
    if (!c.fitted) continue;
    const double belady = c.belady.HitRate();
    absl::PrintF("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", c.capacity,
                 Percent(c.lru.HitRate()), Percent(c.second_use->HitRate()),
                 Percent(c.fitted->HitRate()), Percent(c.oracle->HitRate()), Percent(belady),
                 Ratio(c.second_use->HitRate(), belady), Ratio(c.fitted->HitRate(), belady),
                 Ratio(c.oracle->HitRate(), belady), c.fitted_rule);
  }
}

void PrintDetails(const CapacityResult& c) {
  if (!c.replay) return;
  const ReplayResult& rep = *c.replay;
  const Counters& k = rep.counters;
  absl::PrintF("\ncapacity %d blocks%s%s\n", c.capacity, rep.timed_out ? " (TIMED OUT)" : "",
               rep.aborted ? " (STOPPED: too many errors)" : "");
  if (!c.server_command.empty()) absl::PrintF("  server: %s\n", c.server_command.c_str());
  absl::PrintF(
      "  replay: %d requests in %.1f s (%d failed), token hit rate %s%% "
      "(leaf LRU %s%%, Belady %s%%)\n",
      k.requests, rep.seconds, k.failed_requests, Percent(c.replay_rates.TokenHitRate()),
      Percent(c.leaf_lru.TokenHitRate()), Percent(c.belady.TokenHitRate()));
  absl::PrintF(
      "  blocks after the hit prefix %d: allocated %d, already committed %d, in "
      "progress %d, declined by the server %d, in RESOURCE_EXHAUSTED allocations %d "
      "(%d requests)\n",
      k.blocks_to_store, k.allocated, k.already_committed, k.in_progress, k.declined,
      k.exhausted_blocks, k.exhausted_requests);
  absl::PrintF("  requests whose hit differs from the leaf LRU model: %d\n",
               c.differs_from_leaf_lru);
  absl::PrintF("  written %d blocks (%s), committed %d\n", k.blocks_written,
               FormatBytes(k.bytes_written).c_str(), k.blocks_committed);
  for (const auto& [what, count] : rep.errors) {
    absl::PrintF("  error x%d: %s\n", count, what.c_str());
  }
  if (rep.stats) {
    const json s = MessageToJson(*rep.stats);
    absl::PrintF("  server stats: %s\n", Flat(s).c_str());
    for (const json& tier : s["tiers"]) absl::PrintF("    tier %s\n", Flat(tier).c_str());
  }
}

json RatesJson(const Rates& r) {
  return {{"requests", r.requests},
          {"block_refs", r.block_refs},
          {"hit_blocks", r.hit_blocks},
          {"hit_rate", r.HitRate()},
          {"tokens", r.tokens},
          {"hit_tokens", r.hit_tokens},
          {"token_hit_rate", r.TokenHitRate()}};
}

json ResultsJson(const Flags& flags, size_t n, const std::vector<CapacityResult>& results) {
  json out = {{"trace", flags.trace},
              {"requests", n},
              {"bytes_per_token", flags.bytes_per_token},
              {"block_bytes", uint64_t{flags.bytes_per_token} * kBlockTokens},
              {"speedup", flags.speedup},
              {"concurrency", flags.concurrency},
              {"server_args", flags.server_args},
              {"capacities", json::array()}};
  for (const CapacityResult& c : results) {
    json cj = {{"capacity_blocks", c.capacity},
               {"offline",
                {{"lru", RatesJson(c.lru)},
                 {"leaf_lru", RatesJson(c.leaf_lru)},
                 {"belady", RatesJson(c.belady)},
                 {"infinite", RatesJson(c.infinite)}}}};
    if (c.fitted) {
      cj["offline"]["admission_bounds"] = {{"second_use_exact", RatesJson(*c.second_use)},
                                           {"fitted", RatesJson(*c.fitted)},
                                           {"fitted_rule", c.fitted_rule},
                                           {"reuse_oracle", RatesJson(*c.oracle)}};
    }
    if (c.replay) {
      const ReplayResult& rep = *c.replay;
      const Counters& k = rep.counters;
      std::vector<int64_t> lat = rep.lookup_ns;
      cj["server_command"] = c.server_command;
      cj["replay"] = RatesJson(c.replay_rates);
      cj["replay"]["seconds"] = rep.seconds;
      cj["replay"]["requests_per_s"] = k.requests / std::max(rep.seconds, 1e-9);
      cj["replay"]["lookup_ms"] = {{"p50", PercentileMs(lat, 0.5)},
                                   {"p99", PercentileMs(lat, 0.99)},
                                   {"p99.9", PercentileMs(lat, 0.999)}};
      cj["replay"]["bytes_written"] = k.bytes_written;
      cj["replay"]["bytes_read"] =
          c.replay_rates.hit_blocks * (uint64_t{flags.bytes_per_token} * kBlockTokens);
      cj["replay"]["timed_out"] = rep.timed_out;
      cj["replay"]["aborted"] = rep.aborted;
      cj["replay"]["outcomes"] = {{"failed_requests", k.failed_requests},
                                  {"blocks_to_store", k.blocks_to_store},
                                  {"allocated", k.allocated},
                                  {"already_committed", k.already_committed},
                                  {"in_progress", k.in_progress},
                                  {"declined", k.declined},
                                  {"exhausted_requests", k.exhausted_requests},
                                  {"exhausted_blocks", k.exhausted_blocks},
                                  {"blocks_written", k.blocks_written},
                                  {"blocks_committed", k.blocks_committed}};
      cj["replay"]["errors"] = rep.errors;
      cj["replay"]["requests_differing_from_leaf_lru"] = c.differs_from_leaf_lru;
      cj["ratio_to_belady"] = c.belady.HitRate() > 0
                                  ? json(c.replay_rates.HitRate() / c.belady.HitRate())
                                  : json(nullptr);
      cj["ratio_to_lru"] =
          c.lru.HitRate() > 0 ? json(c.replay_rates.HitRate() / c.lru.HitRate()) : json(nullptr);
      if (rep.stats) cj["server_stats"] = MessageToJson(*rep.stats);
    }
    out["capacities"].push_back(std::move(cj));
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Driver.

// OK for 127.0.0.1:PORT or localhost:PORT; this program never talks to another machine.
absl::Status CheckLocalAddress(const std::string& address) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--server '", address, "' is not HOST:PORT"));
  }
  const std::string host = address.substr(0, colon);
  if (host != "127.0.0.1" && host != "localhost") {
    return absl::InvalidArgumentError(
        absl::StrCat("--server '", address, "': only 127.0.0.1 or localhost are allowed"));
  }
  return absl::OkStatus();
}

absl::Status Run(const Flags& flags, absl::Time deadline) {
  if (!flags.generate_trace.empty()) {
    const Trace trace = GenerateTrace(flags);
    TIERKV_RETURN_IF_ERROR(WriteTrace(trace, flags.generate_trace));
    absl::PrintF("wrote %d requests to %s (seed %d)\n", trace.size(), flags.generate_trace.c_str(),
                 flags.seed);
    if (flags.describe_trace) DescribeTrace(trace, flags.generate_trace);
    return absl::OkStatus();
  }
  TIERKV_ASSIGN_OR_RETURN(Trace trace, LoadTrace(flags.trace, flags.limit));
  if (flags.describe_trace) {
    DescribeTrace(trace, flags.trace);
    return absl::OkStatus();
  }

  const size_t n = trace.size();
  const uint64_t block_bytes = uint64_t{flags.bytes_per_token} * kBlockTokens;
  const uint64_t page_bytes = std::max<uint64_t>(4096, std::bit_ceil(block_bytes));
  if (flags.bytes_per_token == 0 || flags.bytes_per_token % 4 != 0) {
    return absl::InvalidArgumentError("--bytes-per-token must be a positive multiple of 4");
  }
  if (!flags.server.empty()) {
    TIERKV_RETURN_IF_ERROR(CheckLocalAddress(flags.server));
    if (flags.capacities.size() != 1) {
      return absl::InvalidArgumentError(
          "--server: give the running server's capacity as one --capacities value (it only "
          "sizes the simulations)");
    }
  }
  absl::PrintF("trace %s: %d requests; block %s (%u B/token x %u tokens)", flags.trace.c_str(), n,
               FormatBytes(block_bytes).c_str(), flags.bytes_per_token, kBlockTokens);
  if (!flags.simulate_only) {
    absl::PrintF(", page %s, concurrency %d, speedup %s", FormatBytes(page_bytes).c_str(),
                 flags.concurrency,
                 flags.speedup > 0 ? absl::StrCat(flags.speedup, "x").c_str() : "none");
  }
  absl::PrintF("\n");
  std::fflush(stdout);  // Before the replay's progress lines on stderr.
  if (!flags.simulate_only && page_bytes != block_bytes) {
    absl::PrintF("note: each %s block takes a %s page; capacities count pages\n",
                 FormatBytes(block_bytes).c_str(), FormatBytes(page_bytes).c_str());
  }

  fs::path work_dir;
  bool made_work_dir = false;
  if (!flags.simulate_only && flags.server.empty()) {
    if (flags.work_dir.empty()) {
      std::string tmpl = (fs::temp_directory_path() / "trace_replay.XXXXXX").string();
      if (mkdtemp(tmpl.data()) == nullptr) {
        return absl::UnavailableError(absl::StrCat("mkdtemp: ", strerror(errno)));
      }
      work_dir = tmpl;
      made_work_dir = true;
    } else {
      work_dir = flags.work_dir;
      fs::create_directories(work_dir);
    }
    if (access(flags.cache_manager.c_str(), X_OK) != 0) {
      return absl::NotFoundError(
          absl::StrCat("--cache-manager ", flags.cache_manager, " is not executable"));
    }
  }

  std::optional<TraceFacts> facts;
  if (flags.admission_bounds) facts = FactsOf(trace, n);
  std::vector<CapacityResult> results;
  absl::Status status;
  for (uint64_t capacity : flags.capacities) {
    CapacityResult c;
    c.capacity = capacity;
    const Simulations sims = Simulate(trace, n, capacity);
    std::optional<AdmissionBounds> bounds;
    if (facts) {
      absl::FPrintF(stderr, "capacity %d: admission bounds (about 200 simulations)...\n",
                    capacity);
      bounds = SimulateAdmissionBounds(trace, n, capacity, *facts);
      c.fitted_rule = bounds->fitted_rule;
    }
    if (!flags.simulate_only) {
      std::unique_ptr<CacheManagerProcess> process;
      std::string address = flags.server;
      if (address.empty()) {
        std::vector<std::string> args = {"--no-data-plane", "--host-capacity",
                                         absl::StrCat(capacity * page_bytes), "--page-size",
                                         absl::StrCat(page_bytes)};
        args.insert(args.end(), flags.server_args.begin(), flags.server_args.end());
        auto started = CacheManagerProcess::Start(
            flags.cache_manager, args, work_dir, absl::StrCat("cache_manager_", capacity),
            std::min(deadline, absl::Now() + absl::Seconds(30)));
        if (!started.ok()) {
          status = started.status();
          break;
        }
        process = std::move(*started);
        address = process->address();
        c.server_command = process->command();
        absl::FPrintF(stderr, "capacity %d: cache manager pid %d on %s\n", capacity, process->pid(),
                      address.c_str());
      }
      Replayer replayer(flags, trace, n, deadline, absl::StrCat("capacity ", capacity));
      auto replay = replayer.Run(address);
      if (process) process->Stop();
      if (!replay.ok()) {
        status = replay.status();
        break;
      }
      c.replay = std::move(*replay);
      c.replay_rates = RatesOf(trace, c.replay->hits, c.replay->ran);
      // The simulations count the same requests the replay ran.
      c.lru = RatesOf(trace, sims.lru, c.replay->ran);
      c.leaf_lru = RatesOf(trace, sims.leaf_lru, c.replay->ran);
      c.belady = RatesOf(trace, sims.belady, c.replay->ran);
      c.infinite = RatesOf(trace, sims.infinite, c.replay->ran);
      for (size_t i = 0; i < n; ++i) {
        c.differs_from_leaf_lru += c.replay->ran[i] && c.replay->hits[i] != sims.leaf_lru[i];
      }
      if (bounds) {
        c.second_use = RatesOf(trace, bounds->second_use, c.replay->ran);
        c.fitted = RatesOf(trace, bounds->fitted, c.replay->ran);
        c.oracle = RatesOf(trace, bounds->oracle, c.replay->ran);
      }
    } else {
      c.lru = RatesOf(trace, sims.lru);
      c.leaf_lru = RatesOf(trace, sims.leaf_lru);
      c.belady = RatesOf(trace, sims.belady);
      c.infinite = RatesOf(trace, sims.infinite);
      if (bounds) {
        c.second_use = RatesOf(trace, bounds->second_use);
        c.fitted = RatesOf(trace, bounds->fitted);
        c.oracle = RatesOf(trace, bounds->oracle);
      }
    }
    const bool stop = c.replay && (c.replay->timed_out || c.replay->aborted);
    results.push_back(std::move(c));
    if (stop) break;
  }

  if (!results.empty()) {
    absl::PrintF("\n");
    PrintTable(results, !flags.simulate_only);
    PrintBoundsTable(results);
    for (const CapacityResult& c : results) PrintDetails(c);
    if (!flags.json_path.empty()) {
      std::ofstream out(flags.json_path, std::ios::trunc);
      out << ResultsJson(flags, n, results).dump(2) << "\n";
      if (!out) status.Update(absl::UnavailableError("cannot write --json " + flags.json_path));
    }
  }
  for (const CapacityResult& c : results) {
    if (c.replay && c.replay->aborted) {
      status.Update(absl::InternalError("a replay stopped after too many errors"));
    }
  }
  if (made_work_dir) {
    if (status.ok() && !flags.keep_work_dir) {
      std::error_code ec;
      fs::remove_all(work_dir, ec);
    } else {
      absl::FPrintF(stderr, "server logs kept in %s\n", work_dir.c_str());
    }
  }
  return status;
}

}  // namespace
}  // namespace tierkv::bench

int main(int argc, char** argv) {
  tierkv::DisableMutexDeadlockDetection();
  using tierkv::bench::Flags;
  Flags flags;
  CLI::App app{
      "trace_replay: replays a request trace against tierkv-cache-manager and prints its hit "
      "rate beside offline LRU, leaf LRU, Belady and infinite-cache simulations of the same "
      "trace"};
  auto option = [&app](const std::string& name, auto& value, const std::string& help) {
    return app.add_option(name, value, help)->capture_default_str();
  };
  option("--trace", flags.trace, "JSONL trace to replay");
  option("--limit", flags.limit, "Replay only the first N requests (0: all)");
  option("--capacities", flags.capacities, "Cache capacities in blocks; one fresh server each")
      ->delimiter(',');
  option("--bytes-per-token", flags.bytes_per_token,
         "KV bytes per token (a multiple of 4); a block is 512 tokens");
  option("--speedup", flags.speedup,
         "Issue requests at their timestamps divided by this (0: as fast as possible)");
  option("--concurrency", flags.concurrency,
         "Requests in flight, issued in trace order (1 keeps hit rates deterministic)");
  option("--put-window", flags.put_window, "Put streams of one request in flight at once");
  option("--server", flags.server,
         "Use a running cache manager at 127.0.0.1:PORT or localhost:PORT instead of "
         "starting one");
  option("--cache-manager", flags.cache_manager, "tierkv-cache-manager binary to start");
  app.add_option("--server-arg", flags.server_args,
                 "Extra flag for the started cache manager, repeatable; write it with '=', "
                 "e.g. --server-arg=--ssd-admit-min-hits=2")
      ->allow_extra_args(false);
  option("--work-dir", flags.work_dir,
         "Directory for the server's port file and log (default: a fresh temporary one, "
         "removed after a clean run)");
  app.add_flag("--keep-work-dir", flags.keep_work_dir, "Keep the work directory");
  option("--rpc-timeout", flags.rpc_timeout_s, "Deadline of every RPC, in seconds");
  option("--timeout", flags.timeout_s,
         "Time limit of the whole program, in seconds; a replay still running stops issuing "
         "requests and reports what ran");
  option("--max-errors", flags.max_errors,
         "Stop a replay after this many failed calls (RESOURCE_EXHAUSTED not counted)");
  option("--json", flags.json_path, "Also write the results as JSON to this file");
  app.add_flag("--simulate-only", flags.simulate_only, "Only the offline simulations; no server");
  app.add_flag("--admission-bounds", flags.admission_bounds,
               "Also simulate what admission alone could reach: exact second use, the best "
               "admission fitted to the trace itself, and a reuse oracle");
  option("--generate-trace", flags.generate_trace,
         "Write a synthetic chat + documents trace to this file and exit");
  app.add_flag("--describe-trace", flags.describe_trace,
               "Print the trace's statistics (the generated one with --generate-trace) and exit");
  option("--seed", flags.seed, "Seed of --generate-trace");
  option("--gen-sessions", flags.gen_sessions, "Chat sessions of --generate-trace");
  option("--gen-documents", flags.gen_documents, "One-off documents of --generate-trace");
  option("--gen-duration", flags.gen_duration_s,
         "Span over which --generate-trace starts sessions and documents, in seconds");
  CLI11_PARSE(app, argc, argv);

  const absl::Time deadline = absl::Now() + absl::Seconds(flags.timeout_s);
  struct sigaction action = {};
  action.sa_handler = tierkv::bench::OnFatalSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);

  absl::Status status = tierkv::bench::Run(flags, deadline);
  if (!status.ok()) {
    absl::FPrintF(stderr, "trace_replay: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
