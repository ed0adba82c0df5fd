// cache_manager_bench: the cache manager's gRPC paths over loopback, each figure printed
// beside the same operation against a bare gRPC echo service (bench/echo.proto) measured in
// the same run, with the same message sizes and the same client settings, and their ratio.
//
//   cache_manager_bench [--benchmarks=all] [--seconds=3] [--json]
//
// Both servers run in this process, bound to 127.0.0.1, and stop at the end. Figures:
//   lookup8192  Lookup of an 8192-key chain (a 128K-token prompt) that is fully cached:
//               p50 / p99 / calls/s with one caller, keys/s with several (one connection each)
//   lookup1     single-key Lookup, calls/s with 16 and 64 calls in flight on one channel
//   put         2 MiB blocks: the Put stream alone, and Allocate + Put + Commit into a warm
//               pool (after one untimed fill) and during that first fill
//   get         2 MiB blocks through the Get stream
//   memcpy      2 MiB copies out of a large buffer, for scale (no baseline)
// Each side of a comparison runs --rounds times, alternating which goes first, for
// --seconds in all; its samples are pooled. The ratio is tierkv's performance over the
// baseline's (for latencies: baseline / tierkv); the target is at least 0.70, and a p99 under
// 2 ms for the 8192-key Lookup. Beside each figure: process CPU per call or block (client and
// servers share the process, so this is the whole cost on the machine).
//
// Unary figures use the callback client API (one channel per caller, several calls in
// flight on a channel where asked); bulk figures use blocking streams from one thread.
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/echo.grpc.pb.h"
#include "bench/echo_server.h"
#include "cache_manager/server.h"
#include "core/block_key.h"
#include "core/process.h"
#include "core/status.h"
#include "proto/grpc_status.h"
#include "tierkv/v1/cache_service.grpc.pb.h"

namespace tierkv::bench {
namespace {

namespace v1 = ::tierkv::v1;

constexpr double kTargetRatio = 0.70;
constexpr double kLookupP99TargetMs = 2.0;

struct Flags {
  std::string benchmarks = "all";
  double seconds = 3.0;
  int rounds = 3;
  double warmup_seconds = 0.3;
  bool json = false;
  bool reuse_responses = false;
  // Lookup workloads.
  uint32_t chain_blocks = 8192;
  uint32_t chain_block_bytes = 4096;
  int lookup_callers = 4;
  std::vector<int> in_flight = {16, 64};
  // Bulk workloads.
  uint64_t block_bytes = 2 << 20;
  uint32_t chunk_bytes = 1 << 20;
  uint32_t put_batch = 64;
  uint32_t get_blocks = 8;
  bool bulk_tuning = true;
  bool prefill_pool = true;
  // Servers and channels.
  uint64_t host_capacity_mib = 2048;
  uint64_t page_kib = 64;
  int max_message_mib = 64;
};

// ---------------------------------------------------------------------------------------
// Small helpers.

// CPU time of the whole process (client and both servers), in seconds.
double ProcessCpuSeconds() {
  rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& tv) { return tv.tv_sec + tv.tv_usec * 1e-6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

absl::Status CallError(const grpc::Status& status, std::string_view what) {
  absl::Status s = FromGrpcStatus(status);
  return absl::Status(s.code(), absl::StrCat(std::string(what), ": ", s.message()));
}

// Nearest-rank percentile of `samples` (which it reorders), q in [0, 1].
double PercentileNs(std::vector<int64_t>& samples, double q) {
  if (samples.empty()) return 0;
  size_t i = static_cast<size_t>(q * static_cast<double>(samples.size() - 1) + 0.5);
  std::nth_element(samples.begin(), samples.begin() + i, samples.end());
  return static_cast<double>(samples[i]);
}

// Bytes a length-delimited field of `len` bytes takes with a one-byte tag.
size_t FieldBytes(size_t len) {
  return len == 0 ? 0 : 1 + google::protobuf::io::CodedOutputStream::VarintSize64(len) + len;
}

// Payload length that makes a one-field message with that field `target` bytes long (the
// largest that does not exceed it).
uint32_t PayloadFor(size_t target, size_t other_bytes = 0) {
  size_t len = target > other_bytes + 1 ? target - other_bytes - 1 : 0;
  while (len > 0 && other_bytes + FieldBytes(len) > target) --len;
  return static_cast<uint32_t>(len);
}

// An echo request as large on the wire as `request_bytes`, asking for replies whose
// serialized sizes are `reply_bytes`.
EchoRequest EchoRequestLike(size_t request_bytes, const std::vector<size_t>& reply_bytes) {
  EchoRequest request;
  for (size_t bytes : reply_bytes) request.add_reply_bytes(PayloadFor(bytes));
  size_t other = request.ByteSizeLong();
  request.mutable_payload()->assign(PayloadFor(request_bytes, other), 'p');
  return request;
}

v1::ModelSpec ToProto(const ModelSpec& spec) {
  v1::ModelSpec out;
  out.set_model_id(spec.model_id);
  out.set_weights_digest(spec.weights_digest);
  out.set_num_layers(spec.num_layers);
  out.set_num_kv_heads(spec.num_kv_heads);
  out.set_head_dim(spec.head_dim);
  out.set_kv_dtype(spec.kv_dtype);
  out.set_block_tokens(spec.block_tokens);
  out.set_tp_rank(spec.tp_rank);
  out.set_tp_size(spec.tp_size);
  return out;
}

std::string PatternBytes(uint64_t size, uint64_t seed) {
  std::string out(size, '\0');
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (uint64_t i = 0; i + 8 <= size; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(&out[i], &x, 8);
  }
  return out;
}

// Client channel settings, identical for the cache manager and the echo service. Every
// channel gets its own TCP connection (channels with equal arguments otherwise share one).
// Bulk channels may add the flow-control settings that doubled stream throughput here
// (shared/notes/measured.md); they cost small calls, so unary channels never get them.
std::shared_ptr<grpc::Channel> Dial(const std::string& address, const Flags& flags, bool bulk) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(flags.max_message_mib << 20);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (bulk && flags.bulk_tuning) {
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 4 << 20);
  }
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

absl::Status WaitConnected(grpc::Channel* channel, const std::string& address) {
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    return absl::UnavailableError(absl::StrCat("cannot connect to ", address));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------
// Closed-loop unary driver (callback API).

using Done = std::function<void(grpc::Status)>;

// One in-flight slot of a closed loop: a call at a time, each started after the previous
// one finished. Not thread-safe (the loop never overlaps a slot's calls).
class CallSlot {
 public:
  virtual ~CallSlot() = default;
  // Starts the next call; `done` runs on a gRPC thread once it finished and was checked.
  virtual void Start(Done done) = 0;
};
// Makes the slots of one channel.
using SlotFactory = std::function<std::unique_ptr<CallSlot>()>;

struct UnaryRun {
  uint64_t calls = 0;
  double seconds = 0;
  double cpu_seconds = 0;  // Process CPU (client and servers) over the run.
  std::vector<int64_t> latencies_ns;

  void Add(const UnaryRun& other) {
    calls += other.calls;
    seconds += other.seconds;
    cpu_seconds += other.cpu_seconds;
    latencies_ns.insert(latencies_ns.end(), other.latencies_ns.begin(), other.latencies_ns.end());
  }
  double CallsPerSecond() const { return seconds > 0 ? calls / seconds : 0; }
  double CpuMsPerCall() const { return calls > 0 ? cpu_seconds * 1e3 / calls : 0; }
};

// Keeps `in_flight` calls going on each channel (one factory each) until `duration` has
// passed: each completion starts the slot's next call. Stops at the first error.
absl::StatusOr<UnaryRun> RunUnary(const std::vector<SlotFactory>& channels, int in_flight,
                                  absl::Duration duration) {
  struct Slot {
    std::unique_ptr<CallSlot> call;
    std::vector<int64_t> latencies_ns;
  };
  std::vector<Slot> slots(channels.size() * in_flight);
  for (size_t i = 0; i < slots.size(); ++i) slots[i].call = channels[i / in_flight]();

  absl::BlockingCounter finished(static_cast<int>(slots.size()));
  absl::Mutex mu;
  grpc::Status error;  // Guarded by mu.
  std::atomic<bool> stop{false};
  const double cpu_begin = ProcessCpuSeconds();
  const int64_t begin = NowNs();
  const int64_t deadline = begin + absl::ToInt64Nanoseconds(duration);

  // Captured by reference: every slot finishes before this function returns.
  std::function<void(Slot*)> issue = [&](Slot* slot) {
    const int64_t t0 = NowNs();
    slot->call->Start([&, slot, t0](grpc::Status status) {
      const int64_t t1 = NowNs();
      if (!status.ok()) {
        absl::MutexLock lock(&mu);
        if (error.ok()) error = status;
        stop.store(true);
      } else {
        slot->latencies_ns.push_back(t1 - t0);
        if (!stop.load(std::memory_order_relaxed) && t1 < deadline) {
          issue(slot);
          return;
        }
      }
      finished.DecrementCount();
    });
  };
  for (Slot& slot : slots) issue(&slot);
  finished.Wait();

  UnaryRun run;
  run.seconds = static_cast<double>(NowNs() - begin) * 1e-9;
  run.cpu_seconds = ProcessCpuSeconds() - cpu_begin;
  {
    absl::MutexLock lock(&mu);
    if (!error.ok()) return FromGrpcStatus(error);
  }
  for (Slot& slot : slots) {
    run.calls += slot.latencies_ns.size();
    run.latencies_ns.insert(run.latencies_ns.end(), slot.latencies_ns.begin(),
                            slot.latencies_ns.end());
  }
  return run;
}

// A callback-API unary call repeated by one slot: `method` starts it on a stub, `check`
// validates the response. With `reuse_response`, the slot parses every reply into the same
// message (as a client that keeps its response objects would); otherwise into a new one.
template <typename Request, typename Response>
class UnarySlot final : public CallSlot {
 public:
  using Method = std::function<void(grpc::ClientContext*, const Request*, Response*, Done)>;
  using Check = std::function<grpc::Status(const Response&)>;

  UnarySlot(Method method, const Request* request, Check check, bool reuse_response)
      : method_(std::move(method)),
        request_(request),
        check_(std::move(check)),
        reuse_response_(reuse_response) {}

  void Start(Done done) override {
    context_.emplace();
    if (!reuse_response_ || !response_) response_.emplace();
    method_(&*context_, request_, &*response_, [this, done = std::move(done)](grpc::Status s) {
      if (s.ok()) s = check_(*response_);
      done(s);
    });
  }

 private:
  const Method method_;
  const Request* const request_;  // Owned by the caller; outlives the slot.
  const Check check_;
  const bool reuse_response_;
  std::optional<grpc::ClientContext> context_;
  std::optional<Response> response_;
};

SlotFactory LookupSlots(v1::CacheService::Stub* stub, const v1::LookupRequest* request,
                        int expect_blocks, bool reuse_response) {
  using Slot = UnarySlot<v1::LookupRequest, v1::LookupResponse>;
  return [=]() -> std::unique_ptr<CallSlot> {
    return std::make_unique<Slot>(
        [stub](grpc::ClientContext* c, const v1::LookupRequest* q, v1::LookupResponse* r, Done d) {
          stub->async()->Lookup(c, q, r, std::move(d));
        },
        request,
        [expect_blocks](const v1::LookupResponse& r) {
          if (static_cast<int>(r.found()) == expect_blocks) return grpc::Status::OK;
          return grpc::Status(
              grpc::StatusCode::INTERNAL,
              absl::StrCat("Lookup found ", r.found(), " blocks; expected ", expect_blocks));
        },
        reuse_response);
  };
}

SlotFactory EchoSlots(EchoService::Stub* stub, const EchoRequest* request, bool reuse_response) {
  using Slot = UnarySlot<EchoRequest, EchoResponse>;
  const uint32_t expect = request->reply_bytes_size() > 0 ? request->reply_bytes(0) : 0;
  return [=]() -> std::unique_ptr<CallSlot> {
    return std::make_unique<Slot>(
        [stub](grpc::ClientContext* c, const EchoRequest* q, EchoResponse* r, Done d) {
          stub->async()->Unary(c, q, r, std::move(d));
        },
        request,
        [expect](const EchoResponse& r) {
          if (r.payload().size() == expect) return grpc::Status::OK;
          return grpc::Status(grpc::StatusCode::INTERNAL, "echo reply of the wrong size");
        },
        reuse_response);
  };
}

// ---------------------------------------------------------------------------------------
// Bulk driver (blocking streams from one thread).

struct BulkRun {
  uint64_t ops = 0;
  uint64_t bytes = 0;
  double seconds = 0;      // Only the timed part of each op.
  double cpu_seconds = 0;  // Process CPU over the whole run, untimed parts included.

  void Add(const BulkRun& other) {
    ops += other.ops;
    bytes += other.bytes;
    seconds += other.seconds;
    cpu_seconds += other.cpu_seconds;
  }
  double CpuMsPerOp() const { return ops > 0 ? cpu_seconds * 1e3 / ops : 0; }
  double GBps() const { return seconds > 0 ? bytes / seconds * 1e-9 : 0; }
};

// One unit of bulk work; adds the bytes it moved and the time that counts to `run`.
using BulkOp = std::function<absl::Status(BulkRun* run)>;

absl::StatusOr<BulkRun> RunBulk(const BulkOp& op, absl::Duration duration) {
  BulkRun run;
  const double cpu_begin = ProcessCpuSeconds();
  const int64_t deadline = NowNs() + absl::ToInt64Nanoseconds(duration);
  do {
    TIERKV_RETURN_IF_ERROR(op(&run));
  } while (NowNs() < deadline);
  run.cpu_seconds = ProcessCpuSeconds() - cpu_begin;
  return run;
}

// Times `body` into `run` as one op that moved `bytes`.
absl::Status Timed(BulkRun* run, uint64_t bytes, const std::function<absl::Status()>& body) {
  const int64_t t0 = NowNs();
  TIERKV_RETURN_IF_ERROR(body());
  run->seconds += static_cast<double>(NowNs() - t0) * 1e-9;
  run->bytes += bytes;
  run->ops += 1;
  return absl::OkStatus();
}

// The stream loops shared by tierkv and echo calls, so both sides run the same client code.
template <typename Request>
grpc::Status WriteAll(grpc::ClientWriter<Request>& writer, const std::vector<Request>& messages) {
  for (const Request& m : messages) {
    if (!writer.Write(m)) break;  // The stream failed; Finish says why.
  }
  writer.WritesDone();
  return writer.Finish();
}

template <typename Response>
grpc::Status ReadAll(grpc::ClientReader<Response>& reader,
                     const std::function<void(const Response&)>& each) {
  Response m;
  while (reader.Read(&m)) each(m);
  return reader.Finish();
}

// ---------------------------------------------------------------------------------------
// Interleaved comparison of the two sides of a figure.

template <typename Run>
struct Pair {
  Run tierkv;
  Run baseline;
};

template <typename Run>
absl::StatusOr<Pair<Run>> Compare(const Flags& flags,
                                  const std::function<absl::StatusOr<Run>(absl::Duration)>& tierkv,
                                  const std::function<absl::StatusOr<Run>(absl::Duration)>& echo) {
  const absl::Duration warmup = absl::Seconds(flags.warmup_seconds);
  if (warmup > absl::ZeroDuration()) {
    TIERKV_RETURN_IF_ERROR(echo(warmup).status());
    TIERKV_RETURN_IF_ERROR(tierkv(warmup).status());
  }
  const int rounds = std::max(1, flags.rounds);
  const absl::Duration slice = absl::Seconds(flags.seconds) / rounds;
  Pair<Run> out;
  for (int r = 0; r < rounds; ++r) {
    for (int side = 0; side < 2; ++side) {
      const bool tierkv_turn = (side == 0) == (r % 2 == 1);
      auto run = tierkv_turn ? tierkv(slice) : echo(slice);
      if (!run.ok()) return run.status();
      (tierkv_turn ? out.tierkv : out.baseline).Add(*run);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Results.

struct Figure {
  std::string name;
  std::string unit;
  double tierkv = 0;
  std::optional<double> baseline;  // The echo service's figure; absent for scale figures.
  bool lower_is_better = false;
  std::optional<double> absolute_limit;  // A bound on `tierkv` itself (same direction).
  // Process CPU (client and server together) per call or block, in ms, of each side.
  std::optional<double> tierkv_cpu_ms;
  std::optional<double> baseline_cpu_ms;

  // tierkv's performance over the baseline's (so latency ratios are baseline / tierkv).
  std::optional<double> Ratio() const {
    if (!baseline || *baseline <= 0 || tierkv <= 0) return std::nullopt;
    return lower_is_better ? *baseline / tierkv : tierkv / *baseline;
  }
  std::string Target() const {
    std::vector<std::string> parts;
    if (absolute_limit) {
      parts.push_back(
          absl::StrFormat("%s %g %s", lower_is_better ? "<" : ">", *absolute_limit, unit));
    }
    if (baseline) parts.push_back(absl::StrFormat(">= %.2fx", kTargetRatio));
    return parts.empty() ? "-" : absl::StrJoin(parts, ", ");
  }
  std::optional<bool> Met() const {
    if (!baseline && !absolute_limit) return std::nullopt;
    bool met = true;
    if (baseline) {
      const std::optional<double> ratio = Ratio();
      met = ratio.has_value() && *ratio >= kTargetRatio;
    }
    if (absolute_limit) {
      met = met && (lower_is_better ? tierkv < *absolute_limit : tierkv > *absolute_limit);
    }
    return met;
  }
};

std::string FormatValue(double v) {
  if (v >= 100) return absl::StrFormat("%.0f", v);
  if (v >= 10) return absl::StrFormat("%.1f", v);
  return absl::StrFormat("%.2f", v);
}

std::string FormatCount(double v) {
  if (v >= 1e6) return absl::StrFormat("%.2fM", v * 1e-6);
  if (v >= 1e4) return absl::StrFormat("%.1fK", v * 1e-3);
  return FormatValue(v);
}

std::string Format(const Figure& f, double v) {
  return f.unit == "calls/s" || f.unit == "keys/s" ? FormatCount(v) : FormatValue(v);
}

void PrintTable(const std::vector<Figure>& figures) {
  std::printf(
      "| figure | unit | tierkv | bare gRPC | ratio | target | met | CPU ms/op tierkv / bare |\n");
  std::printf("|---|---|---:|---:|---:|---|---|---:|\n");
  for (const Figure& f : figures) {
    auto ratio = f.Ratio();
    auto met = f.Met();
    std::string cpu = "";
    if (f.tierkv_cpu_ms && f.baseline_cpu_ms) {
      cpu = absl::StrFormat("%.3g / %.3g", *f.tierkv_cpu_ms, *f.baseline_cpu_ms);
    }
    std::printf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", f.name.c_str(), f.unit.c_str(),
                Format(f, f.tierkv).c_str(), f.baseline ? Format(f, *f.baseline).c_str() : "-",
                ratio ? absl::StrFormat("%.2f", *ratio).c_str() : "-", f.Target().c_str(),
                met ? (*met ? "yes" : "**no**") : "-", cpu.c_str());
  }
}

std::string JsonString(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

void PrintJson(const std::vector<Figure>& figures, const std::vector<std::string>& notes) {
  std::vector<std::string> rows;
  for (const Figure& f : figures) {
    std::string row = absl::StrCat("{\"figure\":", JsonString(f.name),
                                   ",\"unit\":", JsonString(f.unit), ",\"tierkv\":", f.tierkv);
    if (f.baseline) absl::StrAppend(&row, ",\"baseline\":", *f.baseline);
    if (auto r = f.Ratio()) absl::StrAppend(&row, ",\"ratio\":", *r);
    if (auto m = f.Met()) absl::StrAppend(&row, ",\"met\":", *m ? "true" : "false");
    if (f.tierkv_cpu_ms) absl::StrAppend(&row, ",\"tierkv_cpu_ms\":", *f.tierkv_cpu_ms);
    if (f.baseline_cpu_ms) absl::StrAppend(&row, ",\"baseline_cpu_ms\":", *f.baseline_cpu_ms);
    rows.push_back(row + "}");
  }
  std::vector<std::string> quoted;
  for (const std::string& n : notes) quoted.push_back(JsonString(n));
  std::printf("{\"figures\":[\n  %s\n],\"notes\":[\n  %s\n]}\n",
              absl::StrJoin(rows, ",\n  ").c_str(), absl::StrJoin(quoted, ",\n  ").c_str());
}

// ---------------------------------------------------------------------------------------
// The benchmark.

class Bench {
 public:
  explicit Bench(const Flags& flags) : flags_(flags), spec_(BuiltinTinyModelSpec()) {}
  ~Bench() { Stop(); }

  absl::Status Start() {
    CacheManagerOptions cm;
    cm.listen_address = "127.0.0.1:0";
    cm.host_capacity_bytes = flags_.host_capacity_mib << 20;
    cm.page_bytes = flags_.page_kib << 10;
    TIERKV_ASSIGN_OR_RETURN(cache_manager_, CacheManagerServer::Start(cm));
    EchoServerOptions eo;
    eo.listen_address = "127.0.0.1:0";
    eo.max_receive_message_bytes = flags_.max_message_mib << 20;
    TIERKV_ASSIGN_OR_RETURN(echo_server_, EchoServer::Start(eo));
    Note(absl::StrCat("cache manager at ", cache_manager_->address(), ", echo at ",
                      echo_server_->address(), "; host tier ", flags_.host_capacity_mib, " MiB in ",
                      flags_.page_kib, " KiB pages"));

    auto cm_channel = Dial(cache_manager_->address(), flags_, /*bulk=*/false);
    TIERKV_RETURN_IF_ERROR(WaitConnected(cm_channel.get(), cache_manager_->address()));
    cm_ = v1::CacheService::NewStub(cm_channel);
    channels_.push_back(std::move(cm_channel));
    fingerprint_ = ModelFingerprint(spec_);
    bench_root_ = RootKey(fingerprint_, "cache_manager_bench");
    return absl::OkStatus();
  }

  void Stop() {
    cm_.reset();
    channels_.clear();
    if (echo_server_) echo_server_->Shutdown();
    if (cache_manager_) cache_manager_->Shutdown();
  }

  absl::Status Run(const std::vector<std::string>& which) {
    auto wants = [&](std::string_view name) {
      return std::find(which.begin(), which.end(), "all") != which.end() ||
             std::find(which.begin(), which.end(), name) != which.end();
    };
    if (wants("lookup8192") || wants("lookup1")) TIERKV_RETURN_IF_ERROR(PopulateChain());
    if (wants("lookup8192")) TIERKV_RETURN_IF_ERROR(Lookup8192());
    if (wants("lookup1")) TIERKV_RETURN_IF_ERROR(Lookup1());
    if (wants("put")) TIERKV_RETURN_IF_ERROR(Put());
    if (wants("get")) TIERKV_RETURN_IF_ERROR(Get());
    if (wants("memcpy")) Memcpy();
    return absl::OkStatus();
  }

  const std::vector<Figure>& figures() const { return figures_; }
  const std::vector<std::string>& notes() const { return notes_; }

 private:
  void Note(std::string note) {
    if (!flags_.json) std::fprintf(stderr, "# %s\n", note.c_str());
    notes_.push_back(std::move(note));
  }

  // A rate of unary calls (times `per_call`, e.g. keys per call) and CPU per call.
  void AddRateFigure(std::string name, std::string unit, const Pair<UnaryRun>& pair,
                     double per_call) {
    figures_.push_back({.name = std::move(name),
                        .unit = std::move(unit),
                        .tierkv = pair.tierkv.CallsPerSecond() * per_call,
                        .baseline = pair.baseline.CallsPerSecond() * per_call,
                        .tierkv_cpu_ms = pair.tierkv.CpuMsPerCall(),
                        .baseline_cpu_ms = pair.baseline.CpuMsPerCall()});
  }

  // Bulk throughput and CPU per block.
  void AddBulkFigure(std::string name, const BulkRun& tierkv, const BulkRun& baseline) {
    figures_.push_back({.name = std::move(name),
                        .unit = "GB/s",
                        .tierkv = tierkv.GBps(),
                        .baseline = baseline.GBps(),
                        .tierkv_cpu_ms = tierkv.CpuMsPerOp(),
                        .baseline_cpu_ms = baseline.CpuMsPerOp()});
  }

  // A key no other run or workload uses.
  BlockKey FreshKey() {
    const uint32_t tokens[2] = {static_cast<uint32_t>(next_key_ >> 32),
                                static_cast<uint32_t>(next_key_)};
    ++next_key_;
    return NextBlockKey(bench_root_, tokens);
  }

  // Unary helpers for setup (blocking API).
  absl::StatusOr<v1::AllocateResponse> Allocate(const v1::AllocateRequest& request) {
    grpc::ClientContext context;
    v1::AllocateResponse response;
    grpc::Status s = cm_->Allocate(&context, request, &response);
    if (!s.ok()) return CallError(s, "Allocate");
    return response;
  }

  absl::Status Commit(const v1::CommitRequest& request) {
    grpc::ClientContext context;
    v1::CommitResponse response;
    grpc::Status s = cm_->Commit(&context, request, &response);
    if (!s.ok()) return CallError(s, "Commit");
    if (static_cast<int>(response.committed()) != request.blocks_size()) {
      return absl::InternalError(absl::StrCat("Commit made ", response.committed(), " of ",
                                              request.blocks_size(), " blocks visible"));
    }
    return absl::OkStatus();
  }

  absl::Status Pin(const std::vector<BlockKey>& keys) {
    v1::PinRequest request;
    for (const BlockKey& k : keys) request.add_keys(std::string(KeyBytes(k)));
    grpc::ClientContext context;
    v1::PinResponse response;
    grpc::Status s = cm_->Pin(&context, request, &response);
    if (!s.ok()) return CallError(s, "Pin");
    return absl::OkStatus();
  }

  // The Put stream of one block, from prebuilt messages (the first names the block).
  static absl::Status PutStream(v1::CacheService::Stub* stub,
                                const std::vector<v1::PutRequest>& messages,
                                uint64_t expect_bytes) {
    grpc::ClientContext context;
    v1::PutResponse response;
    grpc::Status s = WriteAll(*stub->Put(&context, &response), messages);
    if (!s.ok()) return CallError(s, "Put");
    if (response.bytes_written() != expect_bytes) {
      return absl::InternalError(
          absl::StrCat("Put wrote ", response.bytes_written(), " of ", expect_bytes, " bytes"));
    }
    return absl::OkStatus();
  }

  // Put messages for `payload` in chunks; the first one names the block.
  std::vector<v1::PutRequest> PutMessages(const std::string& payload) const {
    std::vector<v1::PutRequest> out;
    for (uint64_t offset = 0; offset < payload.size(); offset += flags_.chunk_bytes) {
      v1::PutRequest& m = out.emplace_back();
      m.set_offset(offset);
      m.set_data(payload.substr(offset, flags_.chunk_bytes));
    }
    return out;
  }

  static void NameBlock(std::vector<v1::PutRequest>& messages, uint64_t allocation_id,
                        const BlockKey& key) {
    messages[0].set_allocation_id(allocation_id);
    messages[0].set_key(std::string(KeyBytes(key)));
  }

  // Allocates, writes and commits `keys` (a chain when `chained`) with `payload` each.
  absl::Status Store(const std::vector<BlockKey>& keys, bool chained, const std::string& payload) {
    const uint64_t checksum = BlockChecksum(payload.data(), payload.size());
    std::vector<v1::PutRequest> messages = PutMessages(payload);
    constexpr size_t kBatch = 1024;
    for (size_t first = 0; first < keys.size(); first += kBatch) {
      const size_t last = std::min(keys.size(), first + kBatch);
      v1::AllocateRequest alloc;
      *alloc.mutable_model() = ToProto(spec_);
      for (size_t i = first; i < last; ++i) {
        auto* b = alloc.add_blocks();
        b->set_key(std::string(KeyBytes(keys[i])));
        if (chained && i > 0) b->set_parent_key(std::string(KeyBytes(keys[i - 1])));
        b->set_size(payload.size());
        b->set_codec(v1::CODEC_RAW);
      }
      TIERKV_ASSIGN_OR_RETURN(v1::AllocateResponse allocated, Allocate(alloc));
      v1::CommitRequest commit;
      commit.set_allocation_id(allocated.allocation_id());
      for (size_t i = first; i < last; ++i) {
        const auto& b = allocated.blocks(static_cast<int>(i - first));
        if (b.state() == v1::AllocateResponse::STATE_ALREADY_COMMITTED) continue;
        if (b.state() != v1::AllocateResponse::STATE_ALLOCATED) {
          return absl::InternalError(absl::StrCat("Allocate: block ", i, " in state ",
                                                  v1::AllocateResponse::State_Name(b.state())));
        }
        NameBlock(messages, allocated.allocation_id(), keys[i]);
        TIERKV_RETURN_IF_ERROR(PutStream(cm_.get(), messages, payload.size()));
        auto* c = commit.add_blocks();
        c->set_key(std::string(KeyBytes(keys[i])));
        c->set_checksum(checksum);
      }
      if (commit.blocks_size() > 0) TIERKV_RETURN_IF_ERROR(Commit(commit));
    }
    return Pin(keys);
  }

  // The 8192-block chain of a 128K-token prompt, pinned so that Put churn never evicts it.
  absl::Status PopulateChain() {
    if (!chain_.empty()) return absl::OkStatus();
    std::vector<uint32_t> tokens(static_cast<size_t>(flags_.chain_blocks) * spec_.block_tokens);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint32_t>(i * 7919 % 32000);
    TIERKV_ASSIGN_OR_RETURN(chain_, ComputeBlockKeys(spec_, "", tokens));
    const int64_t t0 = NowNs();
    TIERKV_RETURN_IF_ERROR(
        Store(chain_, /*chained=*/true, PatternBytes(flags_.chain_block_bytes, 1)));
    Note(absl::StrFormat("stored a chain of %d blocks of %d bytes in %.2f s", chain_.size(),
                         flags_.chain_block_bytes, (NowNs() - t0) * 1e-9));
    return absl::OkStatus();
  }

  v1::LookupRequest LookupRequestFor(size_t keys) const {
    v1::LookupRequest request;
    for (size_t i = 0; i < keys; ++i) request.mutable_keys()->append(KeyBytes(chain_[i]));
    request.set_fingerprint(std::string(KeyBytes(fingerprint_)));
    return request;
  }

  // Serialized size of a real Lookup response to `request` (for the echo reply).
  absl::StatusOr<size_t> LookupResponseBytes(const v1::LookupRequest& request,
                                             v1::LookupResponse* response) {
    grpc::ClientContext context;
    grpc::Status s = cm_->Lookup(&context, request, response);
    if (!s.ok()) return CallError(s, "Lookup");
    const size_t asked = request.keys().size() / kDigestBytes;
    if (response->found() != asked) {
      return absl::InternalError(absl::StrCat("Lookup found ", response->found(), " of ",
                                              asked, " blocks"));
    }
    return response->ByteSizeLong();
  }

  struct Stubs {
    std::vector<std::unique_ptr<v1::CacheService::Stub>> cm;
    std::vector<std::unique_ptr<EchoService::Stub>> echo;
  };

  // `n` channels to each server, each its own connection.
  absl::StatusOr<Stubs> Connect(int n, bool bulk) {
    Stubs out;
    for (int i = 0; i < n; ++i) {
      auto cm = Dial(cache_manager_->address(), flags_, bulk);
      auto echo = Dial(echo_server_->address(), flags_, bulk);
      TIERKV_RETURN_IF_ERROR(WaitConnected(cm.get(), cache_manager_->address()));
      TIERKV_RETURN_IF_ERROR(WaitConnected(echo.get(), echo_server_->address()));
      out.cm.push_back(v1::CacheService::NewStub(cm));
      out.echo.push_back(EchoService::NewStub(echo));
    }
    return out;
  }

  absl::StatusOr<Pair<UnaryRun>> CompareUnary(const std::vector<SlotFactory>& tierkv,
                                              const std::vector<SlotFactory>& echo, int in_flight) {
    return Compare<UnaryRun>(
        flags_, [&](absl::Duration d) { return RunUnary(tierkv, in_flight, d); },
        [&](absl::Duration d) { return RunUnary(echo, in_flight, d); });
  }

  absl::Status Lookup8192() {
    const size_t n = chain_.size();
    const v1::LookupRequest request = LookupRequestFor(n);
    v1::LookupResponse sample;
    TIERKV_ASSIGN_OR_RETURN(size_t response_bytes, LookupResponseBytes(request, &sample));
    const EchoRequest echo_request = EchoRequestLike(request.ByteSizeLong(), {response_bytes});
    Note(absl::StrFormat(
        "Lookup of %d keys: request %d B, response %d B (%.0f B a block); "
        "echo request %d B, reply %d B",
        n, request.ByteSizeLong(), response_bytes, static_cast<double>(response_bytes) / n,
        echo_request.ByteSizeLong(), FieldBytes(echo_request.reply_bytes(0))));
    NoteProtobufCost(request, sample);
    const bool reuse = flags_.reuse_responses;

    // One caller.
    {
      TIERKV_ASSIGN_OR_RETURN(Stubs stubs, Connect(1, /*bulk=*/false));
      std::vector<SlotFactory> tierkv = {LookupSlots(stubs.cm[0].get(), &request, n, reuse)};
      std::vector<SlotFactory> echo = {EchoSlots(stubs.echo[0].get(), &echo_request, reuse)};
      TIERKV_ASSIGN_OR_RETURN(Pair<UnaryRun> pair, CompareUnary(tierkv, echo, 1));
      const std::string name = absl::StrCat("Lookup ", n, " keys, 1 caller");
      figures_.push_back({.name = name + ": p50",
                          .unit = "ms",
                          .tierkv = PercentileNs(pair.tierkv.latencies_ns, 0.5) * 1e-6,
                          .baseline = PercentileNs(pair.baseline.latencies_ns, 0.5) * 1e-6,
                          .lower_is_better = true});
      figures_.push_back({.name = name + ": p99",
                          .unit = "ms",
                          .tierkv = PercentileNs(pair.tierkv.latencies_ns, 0.99) * 1e-6,
                          .baseline = PercentileNs(pair.baseline.latencies_ns, 0.99) * 1e-6,
                          .lower_is_better = true,
                          .absolute_limit = kLookupP99TargetMs});
      AddRateFigure(name, "calls/s", pair, 1);
    }
    // Several callers, one connection each.
    {
      const int callers = flags_.lookup_callers;
      TIERKV_ASSIGN_OR_RETURN(Stubs stubs, Connect(callers, /*bulk=*/false));
      std::vector<SlotFactory> tierkv, echo;
      for (int i = 0; i < callers; ++i) {
        tierkv.push_back(LookupSlots(stubs.cm[i].get(), &request, n, reuse));
        echo.push_back(EchoSlots(stubs.echo[i].get(), &echo_request, reuse));
      }
      TIERKV_ASSIGN_OR_RETURN(Pair<UnaryRun> pair, CompareUnary(tierkv, echo, 1));
      AddRateFigure(absl::StrCat("Lookup ", n, " keys, ", callers, " callers"), "keys/s", pair, n);
    }
    return absl::OkStatus();
  }

  // How much of a Lookup is protobuf alone: the response's serialization (server side) and
  // parsing (client side), timed in-process on one core.
  void NoteProtobufCost(const v1::LookupRequest& request, const v1::LookupResponse& response) {
    std::string wire;
    const int reps = 20;
    int64_t t0 = NowNs();
    for (int i = 0; i < reps; ++i) {
      wire.clear();
      response.SerializeToString(&wire);
    }
    const double serialize_ms = (NowNs() - t0) * 1e-6 / reps;
    v1::LookupResponse parsed;
    t0 = NowNs();
    for (int i = 0; i < reps; ++i) parsed.ParseFromString(wire);
    const double parse_ms = (NowNs() - t0) * 1e-6 / reps;
    std::string request_wire = request.SerializeAsString();
    v1::LookupRequest request_parsed;
    t0 = NowNs();
    for (int i = 0; i < reps; ++i) request_parsed.ParseFromString(request_wire);
    const double request_parse_ms = (NowNs() - t0) * 1e-6 / reps;
    Note(
        absl::StrFormat("protobuf alone, in-process: LookupResponse of %d blocks serializes "
                        "in %.3f ms and parses in %.3f ms; LookupRequest parses in %.3f ms",
                        response.found(), serialize_ms, parse_ms, request_parse_ms));
  }

  absl::Status Lookup1() {
    const v1::LookupRequest request = LookupRequestFor(1);
    v1::LookupResponse sample;
    TIERKV_ASSIGN_OR_RETURN(size_t response_bytes, LookupResponseBytes(request, &sample));
    const EchoRequest echo_request = EchoRequestLike(request.ByteSizeLong(), {response_bytes});
    Note(absl::StrFormat("Lookup of 1 key: request %d B, response %d B; echo %d B / %d B",
                         request.ByteSizeLong(), response_bytes, echo_request.ByteSizeLong(),
                         FieldBytes(echo_request.reply_bytes(0))));
    TIERKV_ASSIGN_OR_RETURN(Stubs stubs, Connect(1, /*bulk=*/false));
    const bool reuse = flags_.reuse_responses;
    std::vector<SlotFactory> tierkv = {LookupSlots(stubs.cm[0].get(), &request, 1, reuse)};
    std::vector<SlotFactory> echo = {EchoSlots(stubs.echo[0].get(), &echo_request, reuse)};
    for (int in_flight : flags_.in_flight) {
      TIERKV_ASSIGN_OR_RETURN(Pair<UnaryRun> pair, CompareUnary(tierkv, echo, in_flight));
      AddRateFigure(absl::StrCat("Lookup 1 key, ", in_flight, " in flight"), "calls/s", pair, 1);
    }
    return absl::OkStatus();
  }

  // Echo messages as large as `messages`, the first asking for a reply of `reply_bytes`.
  static std::vector<EchoRequest> EchoUploadLike(const std::vector<v1::PutRequest>& messages,
                                                 size_t reply_bytes) {
    std::vector<EchoRequest> out;
    for (size_t i = 0; i < messages.size(); ++i) {
      out.push_back(
          EchoRequestLike(messages[i].ByteSizeLong(),
                          i == 0 ? std::vector<size_t>{reply_bytes} : std::vector<size_t>{}));
    }
    return out;
  }

  static absl::Status EchoUpload(EchoService::Stub* stub,
                                 const std::vector<EchoRequest>& messages) {
    grpc::ClientContext context;
    EchoResponse response;
    grpc::Status s = WriteAll(*stub->Upload(&context, &response), messages);
    if (!s.ok()) return CallError(s, "echo Upload");
    return absl::OkStatus();
  }

  static absl::Status EchoUnary(EchoService::Stub* stub, const EchoRequest& request) {
    grpc::ClientContext context;
    EchoResponse response;
    grpc::Status s = stub->Unary(&context, request, &response);
    if (!s.ok()) return CallError(s, "echo Unary");
    return absl::OkStatus();
  }

  v1::AllocateRequest AllocateOne(const BlockKey& key) const {
    v1::AllocateRequest request;
    *request.mutable_model() = ToProto(spec_);
    auto* b = request.add_blocks();
    b->set_key(std::string(KeyBytes(key)));
    b->set_size(flags_.block_bytes);
    b->set_codec(v1::CODEC_RAW);
    return request;
  }

  absl::Status Put() {
    TIERKV_ASSIGN_OR_RETURN(Stubs stubs, Connect(1, /*bulk=*/true));
    v1::CacheService::Stub* cm = stubs.cm[0].get();
    EchoService::Stub* echo = stubs.echo[0].get();
    const std::string payload = PatternBytes(flags_.block_bytes, 2);
    const uint64_t checksum = BlockChecksum(payload.data(), payload.size());
    std::vector<v1::PutRequest> messages = PutMessages(payload);

    // One full cycle, to size the echo stand-ins for Allocate, Put and Commit.
    const BlockKey sample_key = FreshKey();
    const v1::AllocateRequest alloc_request = AllocateOne(sample_key);
    TIERKV_ASSIGN_OR_RETURN(v1::AllocateResponse alloc_response, Allocate(alloc_request));
    NameBlock(messages, alloc_response.allocation_id(), sample_key);
    TIERKV_RETURN_IF_ERROR(PutStream(cm, messages, payload.size()));
    v1::CommitRequest commit_request;
    commit_request.set_allocation_id(alloc_response.allocation_id());
    auto* cb = commit_request.add_blocks();
    cb->set_key(std::string(KeyBytes(sample_key)));
    cb->set_checksum(checksum);
    TIERKV_RETURN_IF_ERROR(Commit(commit_request));
    v1::PutResponse put_response;
    put_response.set_bytes_written(payload.size());
    v1::CommitResponse commit_response;
    commit_response.set_committed(1);

    const std::vector<EchoRequest> echo_upload =
        EchoUploadLike(messages, put_response.ByteSizeLong());
    const EchoRequest echo_alloc =
        EchoRequestLike(alloc_request.ByteSizeLong(), {alloc_response.ByteSizeLong()});
    const EchoRequest echo_commit =
        EchoRequestLike(commit_request.ByteSizeLong(), {commit_response.ByteSizeLong()});
    Note(absl::StrFormat(
        "Put of %d B blocks in %d B chunks: Allocate %d B -> %d B, Commit %d B -> %d B",
        payload.size(), flags_.chunk_bytes, alloc_request.ByteSizeLong(),
        alloc_response.ByteSizeLong(), commit_request.ByteSizeLong(),
        commit_response.ByteSizeLong()));

    // Allocate + Put + Commit of a new block each time; the cache evicts cold blocks.
    BulkOp tierkv_cycle = [&](BulkRun* run) {
      return Timed(run, payload.size(), [&]() -> absl::Status {
        const BlockKey key = FreshKey();
        TIERKV_ASSIGN_OR_RETURN(v1::AllocateResponse allocated, Allocate(AllocateOne(key)));
        NameBlock(messages, allocated.allocation_id(), key);
        TIERKV_RETURN_IF_ERROR(PutStream(cm, messages, payload.size()));
        v1::CommitRequest commit;
        commit.set_allocation_id(allocated.allocation_id());
        auto* c = commit.add_blocks();
        c->set_key(std::string(KeyBytes(key)));
        c->set_checksum(checksum);
        return Commit(commit);
      });
    };
    BulkOp echo_cycle = [&](BulkRun* run) {
      return Timed(run, payload.size(), [&]() -> absl::Status {
        TIERKV_RETURN_IF_ERROR(EchoUnary(echo, echo_alloc));
        TIERKV_RETURN_IF_ERROR(EchoUpload(echo, echo_upload));
        return EchoUnary(echo, echo_commit);
      });
    };
    // A running cache manager writes into pool pages it has written before; a fresh one
    // first faults every page in (the pool is mapped lazily). Fill the pool once, untimed
    // for the figures below, and report the fill's own throughput beside them.
    std::optional<BulkRun> first_fill;
    if (flags_.prefill_pool) {
      BulkRun fill;
      const double cpu_begin = ProcessCpuSeconds();
      const uint64_t blocks = (flags_.host_capacity_mib << 20) / payload.size();
      for (uint64_t i = 0; i < blocks; ++i) TIERKV_RETURN_IF_ERROR(tierkv_cycle(&fill));
      fill.cpu_seconds = ProcessCpuSeconds() - cpu_begin;
      first_fill = fill;
      Note(absl::StrFormat("filled the host tier with %d blocks (Allocate+Put+Commit) in %.2f s",
                           blocks, fill.seconds));
    }

    // The Put stream alone: blocks allocated (and afterwards aborted) in batches, untimed.
    uint64_t batch_id = 0;
    std::vector<BlockKey> batch;
    size_t next = 0;
    BulkOp tierkv_stream = [&](BulkRun* run) -> absl::Status {
      if (next == batch.size()) {
        if (batch_id != 0) {
          grpc::ClientContext context;
          v1::AbortRequest abort;
          abort.set_allocation_id(batch_id);
          v1::AbortResponse aborted;
          grpc::Status s = cm->Abort(&context, abort, &aborted);
          if (!s.ok()) return CallError(s, "Abort");
        }
        v1::AllocateRequest request;
        *request.mutable_model() = ToProto(spec_);
        batch.clear();
        for (uint32_t i = 0; i < flags_.put_batch; ++i) {
          batch.push_back(FreshKey());
          auto* b = request.add_blocks();
          b->set_key(std::string(KeyBytes(batch.back())));
          b->set_size(payload.size());
          b->set_codec(v1::CODEC_RAW);
        }
        TIERKV_ASSIGN_OR_RETURN(v1::AllocateResponse response, Allocate(request));
        batch_id = response.allocation_id();
        next = 0;
      }
      NameBlock(messages, batch_id, batch[next++]);
      return Timed(run, payload.size(), [&] { return PutStream(cm, messages, payload.size()); });
    };
    BulkOp echo_stream = [&](BulkRun* run) {
      return Timed(run, payload.size(), [&] { return EchoUpload(echo, echo_upload); });
    };
    TIERKV_ASSIGN_OR_RETURN(Pair<BulkRun> stream,
                            Compare<BulkRun>(
                                flags_, [&](absl::Duration d) { return RunBulk(tierkv_stream, d); },
                                [&](absl::Duration d) { return RunBulk(echo_stream, d); }));
    if (batch_id != 0) {
      grpc::ClientContext context;
      v1::AbortRequest abort;
      abort.set_allocation_id(batch_id);
      v1::AbortResponse aborted;
      grpc::Status s = cm->Abort(&context, abort, &aborted);
      if (!s.ok()) return CallError(s, "Abort");
    }
    AddBulkFigure(absl::StrCat("Put stream, ", payload.size() >> 20, " MiB blocks"), stream.tierkv,
                  stream.baseline);

    TIERKV_ASSIGN_OR_RETURN(Pair<BulkRun> cycle,
                            Compare<BulkRun>(
                                flags_, [&](absl::Duration d) { return RunBulk(tierkv_cycle, d); },
                                [&](absl::Duration d) { return RunBulk(echo_cycle, d); }));
    const std::string cycle_name =
        absl::StrCat("Allocate+Put+Commit, ", payload.size() >> 20, " MiB blocks");
    AddBulkFigure(cycle_name + (first_fill ? ", pool warm" : ""), cycle.tierkv, cycle.baseline);
    if (first_fill) {
      AddBulkFigure(cycle_name + ", first fill of the pool", *first_fill, cycle.baseline);
    }
    return absl::OkStatus();
  }

  // Reads a block through Get; with `checksum`, verifies the bytes too.
  static absl::Status GetStream(v1::CacheService::Stub* stub, const v1::GetRequest& request,
                                uint64_t expect_bytes, std::optional<uint64_t> checksum,
                                std::vector<size_t>* message_bytes = nullptr) {
    grpc::ClientContext context;
    uint64_t bytes = 0;
    ChecksumBuilder sum;
    grpc::Status s = ReadAll<v1::GetResponse>(*stub->Get(&context, request), [&](const auto& m) {
      bytes += m.data().size();
      if (checksum) sum.Update(m.data().data(), m.data().size());
      if (message_bytes) message_bytes->push_back(m.ByteSizeLong());
    });
    if (!s.ok()) return CallError(s, "Get");
    if (bytes != expect_bytes) {
      return absl::InternalError(absl::StrCat("Get read ", bytes, " of ", expect_bytes, " bytes"));
    }
    if (checksum && sum.Finish() != *checksum) {
      return absl::DataLossError("Get returned bytes that do not match the checksum");
    }
    return absl::OkStatus();
  }

  static absl::Status EchoDownload(EchoService::Stub* stub, const EchoRequest& request,
                                   uint64_t expect_bytes) {
    grpc::ClientContext context;
    uint64_t bytes = 0;
    grpc::Status s = ReadAll<EchoResponse>(*stub->Download(&context, request),
                                           [&](const auto& m) { bytes += m.payload().size(); });
    if (!s.ok()) return CallError(s, "echo Download");
    if (bytes != expect_bytes) return absl::InternalError("echo Download of the wrong size");
    return absl::OkStatus();
  }

  absl::Status Get() {
    TIERKV_ASSIGN_OR_RETURN(Stubs stubs, Connect(1, /*bulk=*/true));
    v1::CacheService::Stub* cm = stubs.cm[0].get();
    EchoService::Stub* echo = stubs.echo[0].get();
    const std::string payload = PatternBytes(flags_.block_bytes, 3);
    const uint64_t checksum = BlockChecksum(payload.data(), payload.size());
    std::vector<BlockKey> keys;
    for (uint32_t i = 0; i < std::max(1u, flags_.get_blocks); ++i) keys.push_back(FreshKey());
    TIERKV_RETURN_IF_ERROR(Store(keys, /*chained=*/false, payload));

    std::vector<v1::GetRequest> requests;
    std::vector<size_t> message_bytes;
    for (const BlockKey& key : keys) {
      v1::GetRequest& r = requests.emplace_back();
      r.set_key(std::string(KeyBytes(key)));
      r.set_chunk_bytes(flags_.chunk_bytes);
      message_bytes.clear();
      TIERKV_RETURN_IF_ERROR(GetStream(cm, r, payload.size(), checksum, &message_bytes));
    }
    const EchoRequest echo_request = EchoRequestLike(requests[0].ByteSizeLong(), message_bytes);
    uint64_t echo_bytes = 0;
    for (uint32_t b : echo_request.reply_bytes()) echo_bytes += b;
    Note(absl::StrFormat("Get of %d B blocks: %d messages of %s B (bytes checked once)",
                         payload.size(), message_bytes.size(), absl::StrJoin(message_bytes, "/")));

    size_t next = 0;
    BulkOp tierkv_get = [&](BulkRun* run) {
      const v1::GetRequest& r = requests[next++ % requests.size()];
      return Timed(run, payload.size(),
                   [&] { return GetStream(cm, r, payload.size(), std::nullopt); });
    };
    BulkOp echo_get = [&](BulkRun* run) {
      return Timed(run, payload.size(),
                   [&] { return EchoDownload(echo, echo_request, echo_bytes); });
    };
    TIERKV_ASSIGN_OR_RETURN(Pair<BulkRun> pair,
                            Compare<BulkRun>(
                                flags_, [&](absl::Duration d) { return RunBulk(tierkv_get, d); },
                                [&](absl::Duration d) { return RunBulk(echo_get, d); }));
    AddBulkFigure(absl::StrCat("Get stream, ", payload.size() >> 20, " MiB blocks"), pair.tierkv,
                  pair.baseline);
    return absl::OkStatus();
  }

  // Copies of block-sized pieces out of a buffer much larger than the caches, like the
  // server's copies out of its pool.
  void Memcpy() {
    const size_t block = flags_.block_bytes;
    const size_t blocks = std::max<size_t>(1, (256u << 20) / block);
    std::string source = PatternBytes(block * blocks, 4);
    std::string dest(block, '\0');
    uint64_t bytes = 0;
    const int64_t t0 = NowNs();
    const int64_t deadline = t0 + static_cast<int64_t>(flags_.seconds * 1e9);
    for (size_t i = 0; NowNs() < deadline; ++i) {
      std::memcpy(dest.data(), source.data() + (i % blocks) * block, block);
      asm volatile("" : : "r"(dest.data()) : "memory");
      bytes += block;
    }
    figures_.push_back({.name = absl::StrCat("memcpy, ", block >> 20, " MiB pieces, 1 thread"),
                        .unit = "GB/s",
                        .tierkv = bytes / ((NowNs() - t0) * 1e-9) * 1e-9});
  }

  // Constant after construction.
  const Flags flags_;
  const ModelSpec spec_;

  std::unique_ptr<CacheManagerServer> cache_manager_;
  std::unique_ptr<EchoServer> echo_server_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::unique_ptr<v1::CacheService::Stub> cm_;  // Setup calls.
  Digest fingerprint_{};
  Digest bench_root_{};
  uint64_t next_key_ = 0;
  std::vector<BlockKey> chain_;
  std::vector<Figure> figures_;
  std::vector<std::string> notes_;
};

}  // namespace
}  // namespace tierkv::bench

int main(int argc, char** argv) {
  tierkv::DisableMutexDeadlockDetection();
  using tierkv::bench::Flags;
  Flags flags;
  CLI::App app{
      "cache_manager_bench: the cache manager over loopback gRPC against a bare "
      "gRPC echo service, measured in the same run"};
  // Every option shows its default in --help.
  auto option = [&app](const std::string& name, auto& value, const std::string& help) {
    return app.add_option(name, value, help)->capture_default_str();
  };
  option("--benchmarks", flags.benchmarks,
         "Comma-separated: lookup8192, lookup1, put, get, memcpy, all");
  option("--seconds", flags.seconds, "Measured time of each side of each figure");
  option("--rounds", flags.rounds, "Alternating rounds the measured time is split into");
  option("--warmup_seconds", flags.warmup_seconds, "Unmeasured warm-up per side");
  app.add_flag("--json", flags.json, "Print the figures as JSON instead of a table");
  option("--reuse_responses", flags.reuse_responses,
         "Unary figures: parse each reply into the slot's previous response message "
         "(both services alike)");
  option("--chain_blocks", flags.chain_blocks, "Keys of the long Lookup");
  option("--chain_block_bytes", flags.chain_block_bytes,
         "Payload of each chain block (only its size is stored)");
  option("--lookup_callers", flags.lookup_callers,
         "Callers (one connection each) of the long Lookup's keys/s figure");
  option("--in_flight", flags.in_flight, "Calls in flight for single-key Lookups")->delimiter(',');
  option("--block_bytes", flags.block_bytes, "Block size of Put and Get");
  option("--chunk_bytes", flags.chunk_bytes, "Stream message payload of Put and Get");
  option("--put_batch", flags.put_batch,
         "Blocks allocated at once (untimed) for the Put stream figure");
  option("--get_blocks", flags.get_blocks, "Distinct blocks Get cycles through");
  option("--bulk_tuning", flags.bulk_tuning,
         "On Put/Get client channels (both servers alike): grpc.http2.bdp_probe=0, "
         "grpc.http2.lookahead_bytes=4 MiB");
  option("--prefill_pool", flags.prefill_pool,
         "Before the Put figures, write the host tier full once (reported as the "
         "first-fill figure), so the others see a warm pool");
  option("--host_capacity_mib", flags.host_capacity_mib, "Cache manager host tier");
  option("--page_kib", flags.page_kib, "Cache manager host tier page size");
  option("--max_message_mib", flags.max_message_mib,
         "Receive limit of client channels and the echo server");
  CLI11_PARSE(app, argc, argv);

  std::vector<std::string> which = absl::StrSplit(flags.benchmarks, ',', absl::SkipEmpty());
  for (const std::string& w : which) {
    if (w != "all" && w != "lookup8192" && w != "lookup1" && w != "put" && w != "get" &&
        w != "memcpy") {
      std::fprintf(stderr, "unknown benchmark '%s'\n", w.c_str());
      return 2;
    }
  }

  tierkv::bench::Bench bench(flags);
  absl::Status status = bench.Start();
  if (status.ok()) status = bench.Run(which);
  bench.Stop();
  if (!status.ok()) {
    std::fprintf(stderr, "cache_manager_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  if (flags.json) {
    tierkv::bench::PrintJson(bench.figures(), bench.notes());
  } else {
    std::printf("\n");
    tierkv::bench::PrintTable(bench.figures());
  }
  return 0;
}
