// transfer_bench: the UCX data plane (transfer/engine.h) between two processes, each figure
// printed beside the best bandwidth ucx_perftest reaches for the same message size and
// transport, measured in the same run, and their ratio.
//
//   transfer_bench [--transports=shm,tcp] [--sizes=64KiB,2MiB] [--in_flight=64]
//                  [--paths=auto] [--layouts=distinct] [--rounds=3] [--seconds=1.5]
//
// This program starts a copy of itself as the peer that owns the bytes (a registered region,
// transfer/testing/peer.h) and GETs from it and PUTs into it, keeping --in_flight blocks in
// flight: --group blocks per asynchronous batch, each batch resubmitted as it completes.
// Bytes completed during --seconds after a warm-up count. Layouts: "distinct" moves each
// block in flight from and to its own buffers on both sides (in_flight x size bytes each
// side, as a cache serving different blocks would); "same" moves every block from and to
// one buffer on each side, as ucx_perftest does (a 2 MiB buffer stays in the CPU caches).
//
// Baseline: ucx_perftest server and client on 127.0.0.1 with the same UCX_TLS (and
// UCX_NET_DEVICES=lo for tcp), for tag_bw, ucp_get, ucp_put_bw and ucp_am_bw at the same
// size with --in_flight outstanding (-O); the best of them ("best perftest") is the
// ceiling the target refers to: at least 0.90 of it for 2 MiB blocks. Over tcp the engine
// sets larger tcp segments than UCX's defaults (transfer/engine.cc), so tag_bw and
// ucp_am_bw also run with those ("/seg"), and the best counts them too. Each side runs
// --rounds times, alternating; the best round of each is reported, with the spread.
// "memcpy" is one thread copying the same blocks between two buffers of this process: the
// copy every transport here ends in, so the ceiling of a layout's memory traffic.
// Every child (the peer, each perftest) is bounded by a timeout and stopped by its pid.
// The load average before and after is printed: other work on the machine moves figures.
// Exit status: 0 when every 2 MiB figure meets its target, 3 when one misses, else 1 or 2.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/block_key.h"
#include "core/process.h"
#include "core/status.h"
#include "core/units.h"
#include "transfer/engine.h"
#include "transfer/testing/peer.h"

extern char** environ;

namespace tierkv::bench {
namespace {

using transfer::Endpoint;
using transfer::EngineOptions;
using transfer::PathPolicy;
using transfer::TransferEngine;
using transfer::TransferOp;
using transfer::TransferPath;
using transfer::testing::PeerOptions;
using transfer::testing::PeerProcess;

constexpr double kTargetRatio = 0.90;
constexpr uint64_t kTargetSize = 2 << 20;

struct Flags {
  std::vector<std::string> transports = {"shm", "tcp"};
  std::vector<std::string> sizes = {"64KiB", "2MiB"};
  std::vector<std::string> paths = {"auto"};
  std::vector<std::string> layouts = {"distinct"};
  int in_flight = 64;
  int group = 8;
  int rounds = 3;
  double seconds = 1.5;
  double warmup_seconds = 0.3;
  bool perftest = true;
  // Also run tag_bw and ucp_am_bw with the tcp segment sizes the engine sets (tcp only).
  bool perftest_tuned = true;
  bool detect_peer_failure = true;
  std::string owner_memory = "allocated";
  int perftest_port = 13360;
  double perftest_bytes_gib = 2.0;
};

// --- Child processes ---------------------------------------------------------------------

// Runs `argv` with `env_overrides` added to the environment, stdout and stderr captured,
// for at most `limit`; killed by its pid when it overruns. Returns its output.
struct ChildResult {
  int exit_status = -1;  // waitpid status.
  bool timed_out = false;
  std::string output;
};

class Child {
 public:
  static absl::StatusOr<std::unique_ptr<Child>> Start(const std::vector<std::string>& argv,
                                                      const std::vector<std::string>& env) {
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe2");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDERR_FILENO);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    std::vector<std::string> env_strings;
    for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
    for (const std::string& e : env) env_strings.push_back(e);
    std::vector<char*> envp, args;
    for (std::string& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> argv_copy = argv;
    for (std::string& s : argv_copy) args.push_back(s.data());
    args.push_back(nullptr);
    auto child = std::unique_ptr<Child>(new Child);
    int rc = posix_spawnp(&child->pid_, args[0], &actions, nullptr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    child->out_ = out[0];
    if (rc != 0) {
      child->pid_ = -1;
      return ErrnoToStatus(rc, absl::StrCat("posix_spawnp ", argv[0]));
    }
    return child;
  }

  ~Child() {
    Stop();
    if (out_ >= 0) close(out_);
  }

  // Reads output until the child exits or `limit` passes (then kills it).
  ChildResult Wait(absl::Duration limit) {
    ChildResult result;
    absl::Time deadline = absl::Now() + limit;
    while (true) {
      absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) {
        result.timed_out = true;
        break;
      }
      pollfd fd{out_, POLLIN, 0};
      int ready = poll(&fd, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
      if (ready <= 0) continue;
      char chunk[4096];
      ssize_t n = read(out_, chunk, sizeof(chunk));
      if (n <= 0) break;  // EOF: the child exited (or closed its output).
      output_.append(chunk, static_cast<size_t>(n));
    }
    Stop();
    result.exit_status = status_;
    result.output = output_;
    return result;
  }

  // Kills the child by its pid (if still running) and reaps it.
  void Stop() {
    if (pid_ <= 0) return;
    if (waitpid(pid_, &status_, WNOHANG) == 0) {
      kill(pid_, SIGKILL);
      while (waitpid(pid_, &status_, 0) < 0 && errno == EINTR) {
      }
    }
    pid_ = -1;
  }

 private:
  Child() = default;
  pid_t pid_ = -1;
  int out_ = -1;
  int status_ = -1;
  std::string output_;
};

std::vector<std::string> UcxEnv(const std::string& transport) {
  std::vector<std::string> env = {absl::StrCat("UCX_TLS=", transport)};
  if (transport == "tcp") env.push_back("UCX_NET_DEVICES=lo");
  return env;
}

// One ucx_perftest pair; GB/s (1e9 bytes per second) or an error.
absl::StatusOr<double> RunPerftest(const Flags& flags, const std::string& transport,
                                   const std::string& test, uint64_t size, int port,
                                   bool tcp_segments) {
  std::vector<std::string> env = UcxEnv(transport);
  if (tcp_segments) {
    env.push_back("UCX_TCP_TX_SEG_SIZE=64k");
    env.push_back("UCX_TCP_RX_SEG_SIZE=256k");
  }
  uint64_t iterations =
      std::max<uint64_t>(200, static_cast<uint64_t>(flags.perftest_bytes_gib * (1 << 30)) / size);
  TIERKV_ASSIGN_OR_RETURN(
      std::unique_ptr<Child> server,
      Child::Start({"ucx_perftest", "-p", absl::StrCat(port)}, env));
  absl::SleepFor(absl::Milliseconds(500));  // The server must listen before the client comes.
  TIERKV_ASSIGN_OR_RETURN(
      std::unique_ptr<Child> client,
      Child::Start({"ucx_perftest", "127.0.0.1", "-p", absl::StrCat(port), "-t", test, "-s",
                    absl::StrCat(size), "-n", absl::StrCat(iterations), "-w",
                    absl::StrCat(std::max<uint64_t>(20, iterations / 10)), "-O",
                    absl::StrCat(flags.in_flight), "-f"},
                   env));
  ChildResult result = client->Wait(absl::Seconds(60));
  server->Wait(absl::Seconds(5));
  if (result.timed_out) return absl::DeadlineExceededError(test + " timed out");
  // With -f the last line holds: iterations, typical/avg/overall latency (us), avg and
  // overall bandwidth (MiB/s), avg and overall message rate.
  std::string_view out = result.output;
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.remove_suffix(1);
  std::string_view last = out.substr(out.rfind('\n') + 1);
  std::vector<std::string> words;
  for (size_t i = 0; i < last.size();) {
    size_t j = last.find(' ', i);
    if (j == std::string_view::npos) j = last.size();
    if (j > i) words.emplace_back(last.substr(i, j - i));
    i = j + 1;
  }
  double mib_per_s = 0;
  if (words.size() != 8 || !absl::SimpleAtod(words[5], &mib_per_s)) {
    return absl::InternalError(absl::StrCat(test, ": unexpected output: ", std::string(last)));
  }
  return mib_per_s * 1048576.0 / 1e9;
}

// --- The engine side ---------------------------------------------------------------------

struct Measurement {
  double gbps = 0;
  uint64_t blocks = 0;
  uint64_t errors = 0;
  std::string first_error;
};

// Keeps flags.in_flight blocks in flight for warm-up + seconds and counts the bytes of
// batches completing within the timed window.
Measurement Measure(const Flags& flags, TransferEngine& engine,
                    const std::shared_ptr<Endpoint>& ep, const PeerProcess& peer,
                    std::vector<char>& local, bool is_get, uint64_t size, bool distinct) {
  int groups = std::max(1, flags.in_flight / flags.group);
  std::vector<std::vector<TransferOp>> batches(groups);
  for (int g = 0; g < groups; ++g) {
    for (int i = 0; i < flags.group; ++i) {
      uint64_t block = distinct ? static_cast<uint64_t>(g * flags.group + i) : 0;
      batches[g].push_back(
          {peer.remote_key(), peer.base() + block * size, local.data() + block * size, size});
    }
  }
  absl::Time start = absl::Now();
  absl::Time window_start = start + absl::Seconds(flags.warmup_seconds);
  absl::Time window_end = window_start + absl::Seconds(flags.seconds);
  std::atomic<uint64_t> counted_blocks{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<int> active{groups};
  absl::Notification all_done;
  absl::Mutex error_mu;
  std::string first_error;

  std::function<void(int)> submit = [&](int g) {
    auto done = [&, g](std::vector<absl::Status> statuses) {
      absl::Time now = absl::Now();
      for (const absl::Status& status : statuses) {
        if (status.ok()) continue;
        if (errors.fetch_add(1) == 0) {
          absl::MutexLock lock(&error_mu);
          first_error = status.ToString();
        }
      }
      if (now >= window_start && now < window_end) counted_blocks += statuses.size();
      if (now >= window_end || errors.load() > 0) {
        if (active.fetch_sub(1) == 1) all_done.Notify();
        return;
      }
      submit(g);
    };
    if (is_get) {
      engine.GetAsync(ep, batches[g], done);
    } else {
      engine.PutAsync(ep, batches[g], done);
    }
  };
  for (int g = 0; g < groups; ++g) submit(g);
  all_done.WaitForNotification();
  Measurement m;
  m.blocks = counted_blocks.load();
  m.errors = errors.load();
  m.first_error = first_error;
  m.gbps = static_cast<double>(m.blocks) * static_cast<double>(size) / flags.seconds / 1e9;
  return m;
}

// memcpy of the same blocks between two buffers of this process, one thread: the copy
// every transport here ends in, as a ceiling for the layout's memory traffic.
double MeasureMemcpy(const Flags& flags, uint64_t size, bool distinct) {
  size_t blocks = distinct ? static_cast<size_t>(flags.in_flight) : 1;
  std::vector<char> from(blocks * size, 1), to(blocks * size, 2);
  absl::Time end = absl::Now() + absl::Seconds(flags.warmup_seconds);
  uint64_t copied = 0;
  for (bool timed : {false, true}) {
    absl::Time start = absl::Now();
    if (timed) end = start + absl::Seconds(flags.seconds);
    copied = 0;
    while (absl::Now() < end) {
      for (size_t i = 0; i < blocks; ++i) std::memcpy(to.data() + i * size, from.data() + i * size, size);
      copied += blocks * size;
    }
    if (timed) return static_cast<double>(copied) / absl::ToDoubleSeconds(absl::Now() - start) / 1e9;
  }
  return 0;
}

// --- Driver -------------------------------------------------------------------------------

struct Row {
  std::string transport;
  std::string path;
  std::string op;
  uint64_t size = 0;
  std::string layout;
  std::vector<double> ours;                    // One per round.
  std::vector<double> memcpy;                  // One per round.
  std::map<std::string, std::vector<double>> perftest;  // Test -> one per round.
  uint64_t errors = 0;
  std::string first_error;
};

double Best(const std::vector<double>& v) {
  return v.empty() ? 0 : *std::max_element(v.begin(), v.end());
}

std::string Spread(const std::vector<double>& v) {
  if (v.empty()) return "-";
  auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return absl::StrFormat("%.2f-%.2f", *lo, *hi);
}

PathPolicy ParsePath(const std::string& path) {
  if (path == "one") return PathPolicy::kOneSided;
  if (path == "two") return PathPolicy::kTwoSided;
  return PathPolicy::kAuto;
}

std::string LoadAverage() {
  char buffer[128] = {};
  FILE* f = fopen("/proc/loadavg", "r");
  if (f == nullptr) return "?";
  size_t n = fread(buffer, 1, sizeof(buffer) - 1, f);
  fclose(f);
  std::string text(buffer, n);
  while (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

int Run(const Flags& flags) {
  fprintf(stderr, "load average at start: %s\n", LoadAverage().c_str());
  std::vector<uint64_t> sizes;
  for (const std::string& text : flags.sizes) {
    absl::StatusOr<uint64_t> size = ParseBytes(text);
    if (!size.ok() || *size == 0) {
      fprintf(stderr, "bad size %s\n", text.c_str());
      return 2;
    }
    sizes.push_back(*size);
  }
  uint64_t max_size = *std::max_element(sizes.begin(), sizes.end());
  std::vector<Row> rows;
  int port = flags.perftest_port;
  std::map<std::pair<std::string, uint64_t>, std::map<std::string, std::vector<double>>> perf;

  for (const std::string& transport : flags.transports) {
    PeerOptions peer_options;
    peer_options.transports = transport;
    if (transport == "tcp") peer_options.net_devices = "lo";
    peer_options.region_bytes = max_size * flags.in_flight;
    peer_options.allocate = flags.owner_memory == "allocated";
    peer_options.alarm_seconds = 3600;
    peer_options.op_timeout = absl::Seconds(30);
    absl::StatusOr<std::unique_ptr<PeerProcess>> peer = PeerProcess::Start(peer_options);
    if (!peer.ok()) {
      fprintf(stderr, "peer over %s: %s\n", transport.c_str(), peer.status().ToString().c_str());
      return 1;
    }
    std::vector<char> local(max_size * flags.in_flight);
    transfer::testing::FillPattern(local.data(), local.size(), 3);

    for (const std::string& path_name : flags.paths) {
      EngineOptions options;
      options.name = "bench";
      options.transports = transport;
      if (transport == "tcp") options.net_devices = "lo";
      options.path = ParsePath(path_name);
      options.op_timeout = absl::Seconds(30);
      options.detect_peer_failure = flags.detect_peer_failure;
      absl::StatusOr<std::unique_ptr<TransferEngine>> engine = TransferEngine::Create(options);
      if (!engine.ok()) {
        fprintf(stderr, "engine over %s: %s\n", transport.c_str(),
                engine.status().ToString().c_str());
        return 1;
      }
      absl::StatusOr<std::shared_ptr<Endpoint>> ep = (*engine)->Connect((*peer)->worker_address());
      if (!ep.ok()) {
        fprintf(stderr, "connect over %s: %s\n", transport.c_str(), ep.status().ToString().c_str());
        return 1;
      }
      std::string path = (*ep)->path() == TransferPath::kOneSided ? "one-sided" : "two-sided";
      if (path_name == "auto") path += " (auto)";
      fprintf(stderr, "%s: endpoint lanes %s, %s\n", transport.c_str(),
              (*ep)->transports().c_str(), path.c_str());

      // Correctness first: one batch of the largest blocks, checksums checked.
      std::vector<char> expected((*peer)->length());
      transfer::testing::FillPattern(expected.data(), expected.size(), peer_options.seed);
      std::vector<TransferOp> check;
      for (int i = 0; i < flags.in_flight; ++i) {
        check.push_back({(*peer)->remote_key(), (*peer)->base() + i * max_size,
                         local.data() + i * max_size, max_size,
                         BlockChecksum(expected.data() + i * max_size, max_size)});
      }
      for (const absl::Status& status : (*engine)->Get(**ep, check)) {
        if (!status.ok()) {
          fprintf(stderr, "verification GET failed: %s\n", status.ToString().c_str());
          return 1;
        }
      }

      for (uint64_t size : sizes) {
        for (const std::string& layout : flags.layouts) {
          Row get{transport, path, "GET", size, layout};
          Row put{transport, path, "PUT", size, layout};
          for (int round = 0; round < flags.rounds; ++round) {
            for (Row* row : round % 2 == 0 ? std::vector<Row*>{&get, &put}
                                           : std::vector<Row*>{&put, &get}) {
              Measurement m = Measure(flags, **engine, *ep, **peer, local, row->op == "GET",
                                      size, layout == "distinct");
              row->ours.push_back(m.gbps);
              row->memcpy.push_back(MeasureMemcpy(flags, size, layout == "distinct"));
              row->errors += m.errors;
              if (row->first_error.empty()) row->first_error = m.first_error;
              fprintf(stderr, "  %s %s %s %s round %d: %.2f GB/s%s\n", transport.c_str(),
                      row->op.c_str(), FormatBytes(size).c_str(), layout.c_str(), round,
                      m.gbps, m.errors ? absl::StrCat(" ERRORS: ", m.first_error).c_str() : "");
            }
            // The baseline once per round, per transport and size (shared by paths and
            // layouts), alternating with the engine's figures.
            auto& baseline = perf[{transport, size}];
            if (flags.perftest && static_cast<int>(baseline["tag_bw"].size()) <= round) {
              std::vector<std::pair<std::string, bool>> tests = {
                  {"tag_bw", false}, {"ucp_get", false}, {"ucp_put_bw", false},
                  {"ucp_am_bw", false}};
              if (flags.perftest_tuned && transport == "tcp") {
                tests.push_back({"tag_bw", true});
                tests.push_back({"ucp_am_bw", true});
              }
              for (const auto& [name, tuned] : tests) {
                std::string test = tuned ? name + "/seg" : name;
                absl::StatusOr<double> gbps =
                    RunPerftest(flags, transport, name, size, port++, tuned);
                if (!gbps.ok()) {
                  fprintf(stderr, "  perftest %s: %s\n", test.c_str(),
                          gbps.status().ToString().c_str());
                  baseline[test].push_back(0);
                  continue;
                }
                baseline[test].push_back(*gbps);
                fprintf(stderr, "  perftest %s %s %s round %d: %.2f GB/s\n", transport.c_str(),
                        test.c_str(), FormatBytes(size).c_str(), round, *gbps);
              }
            }
          }
          rows.push_back(get);
          rows.push_back(put);
        }
      }
    }
  }

  printf("load average at the end: %s\n\n", LoadAverage().c_str());
  printf("| transport | path | op | block | layout | in flight | tierkv GB/s | tierkv, %d rounds "
         "| best perftest GB/s | (test) | ratio | tag_bw | ucp_get | ucp_put_bw | ucp_am_bw "
         "| tag_bw/seg | ucp_am_bw/seg | memcpy GB/s | target | met |\n",
         flags.rounds);
  printf("|---|---|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:"
         "|---|---|\n");
  bool all_met = true;
  for (const Row& row : rows) {
    const auto& baseline = perf[{row.transport, row.size}];
    std::string best_test = "-";
    double best = 0;
    for (const auto& [test, values] : baseline) {
      if (Best(values) > best) {
        best = Best(values);
        best_test = test;
      }
    }
    auto cell = [&](const char* test) {
      auto it = baseline.find(test);
      return it == baseline.end() ? std::string("-") : absl::StrFormat("%.2f", Best(it->second));
    };
    double ours = Best(row.ours);
    double ratio = best > 0 ? ours / best : 0;
    bool targeted = row.size == kTargetSize;
    bool met = ratio >= kTargetRatio && row.errors == 0;
    if (targeted) all_met &= met;
    absl::PrintF("| %s | %s | %s | %s | %s | %d | %.2f | %s | %.2f | %s | %.2f | %s | %s | %s | %s "
                 "| %s | %s | %.1f | %s | %s |\n",
                 row.transport, row.path, row.op, FormatBytes(row.size), row.layout,
                 flags.in_flight, ours, Spread(row.ours), best, best_test, ratio, cell("tag_bw"),
                 cell("ucp_get"), cell("ucp_put_bw"), cell("ucp_am_bw"), cell("tag_bw/seg"),
                 cell("ucp_am_bw/seg"), Best(row.memcpy),
                 targeted ? "≥ 0.90x" : "-", targeted ? (met ? "yes" : "**no**") : "-");
    if (row.errors > 0) {
      printf("\n%s %s %s: %lu errors, first: %s\n", row.transport.c_str(), row.op.c_str(),
             FormatBytes(row.size).c_str(), static_cast<unsigned long>(row.errors),
             row.first_error.c_str());
    }
  }
  return all_met ? 0 : 3;
}

}  // namespace
}  // namespace tierkv::bench

int main(int argc, char** argv) {
  tierkv::DisableMutexDeadlockDetection();
  // In the peer child this runs the peer and never returns.
  tierkv::transfer::testing::MaybeRunPeer();
  signal(SIGPIPE, SIG_IGN);

  tierkv::bench::Flags flags;
  CLI::App app{"transfer_bench: the UCX data plane against ucx_perftest, in the same run"};
  app.add_option("--transports", flags.transports, "UCX_TLS values to measure")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--sizes", flags.sizes, "Block sizes")->delimiter(',')->capture_default_str();
  app.add_option("--paths", flags.paths, "auto, one (one-sided) and/or two (two-sided)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--layouts", flags.layouts,
                 "distinct (a buffer per block in flight) and/or same (one buffer, as "
                 "ucx_perftest)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--owner_memory", flags.owner_memory,
                 "allocated (TransferEngine::Allocate) or registered (mmap + Register)")
      ->check(CLI::IsMember({"allocated", "registered"}))
      ->capture_default_str();
  app.add_option("--detect_peer_failure", flags.detect_peer_failure,
                 "EngineOptions::detect_peer_failure of this side's engine")
      ->capture_default_str();
  app.add_option("--in_flight", flags.in_flight, "Blocks in flight")->capture_default_str();
  app.add_option("--group", flags.group, "Blocks per asynchronous batch")->capture_default_str();
  app.add_option("--rounds", flags.rounds, "Rounds of every figure")->capture_default_str();
  app.add_option("--seconds", flags.seconds, "Timed seconds per figure and round")
      ->capture_default_str();
  app.add_option("--warmup_seconds", flags.warmup_seconds, "Untimed seconds before each")
      ->capture_default_str();
  app.add_option("--perftest", flags.perftest, "Run the ucx_perftest baseline")
      ->capture_default_str();
  app.add_option("--perftest_tuned", flags.perftest_tuned,
                 "Over tcp, also run tag_bw and ucp_am_bw with the engine's tcp segment sizes")
      ->capture_default_str();
  app.add_option("--perftest_port", flags.perftest_port, "First TCP port for ucx_perftest")
      ->capture_default_str();
  app.add_option("--perftest_gib", flags.perftest_bytes_gib, "GiB per ucx_perftest run")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  return tierkv::bench::Run(flags);
}
