#include "transfer/testing/peer.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/block_key.h"
#include "core/status.h"

extern char** environ;

namespace tierkv::transfer::testing {
namespace {

constexpr char kPeerEnv[] = "TIERKV_TRANSFER_PEER";

std::vector<std::string_view> Words(std::string_view line, char separator) {
  std::vector<std::string_view> words;
  while (!line.empty()) {
    size_t end = line.find(separator);
    if (end != 0) words.push_back(line.substr(0, end));
    if (end == std::string_view::npos) break;
    line.remove_prefix(end + 1);
  }
  return words;
}

std::string Encode(const PeerOptions& o) {
  return absl::StrCat("transports=", o.transports, ";net=", o.net_devices,
                      ";bytes=", o.region_bytes, ";allocate=", o.allocate ? 1 : 0, ";seed=", o.seed,
                      ";corrupt=", o.corrupt_every_n, ";alarm=", o.alarm_seconds,
                      ";timeout_ms=", absl::ToInt64Milliseconds(o.op_timeout));
}

bool Decode(std::string_view text, PeerOptions* o) {
  for (std::string_view item : Words(text, ';')) {
    size_t eq = item.find('=');
    if (eq == std::string_view::npos) return false;
    std::string key(item.substr(0, eq));
    std::string value(item.substr(eq + 1));
    int64_t ms = 0;
    bool ok = true;
    if (key == "transports") {
      o->transports = value;
    } else if (key == "net") {
      o->net_devices = value;
    } else if (key == "bytes") {
      ok = absl::SimpleAtoi(value, &o->region_bytes);
    } else if (key == "allocate") {
      o->allocate = value == "1";
    } else if (key == "seed") {
      ok = absl::SimpleAtoi(value, &o->seed);
    } else if (key == "corrupt") {
      ok = absl::SimpleAtoi(value, &o->corrupt_every_n);
    } else if (key == "alarm") {
      ok = absl::SimpleAtoi(value, &o->alarm_seconds);
    } else if (key == "timeout_ms") {
      ok = absl::SimpleAtoi(value, &ms);
      o->op_timeout = absl::Milliseconds(ms);
    } else {
      return false;
    }
    if (!ok) return false;
  }
  return true;
}

void WriteLine(const std::string& line) {
  std::string out = line + "\n";
  fwrite(out.data(), 1, out.size(), stdout);
  fflush(stdout);
}

int RunPeer(const PeerOptions& options) {
  alarm(static_cast<unsigned>(options.alarm_seconds));
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  EngineOptions engine_options;
  engine_options.name = "peer";
  engine_options.transports = options.transports;
  engine_options.net_devices = options.net_devices;
  engine_options.fault_corrupt_every_n = options.corrupt_every_n;
  engine_options.op_timeout = options.op_timeout;
  absl::StatusOr<std::unique_ptr<TransferEngine>> engine = TransferEngine::Create(engine_options);
  if (!engine.ok()) {
    WriteLine(absl::StrCat("ERR ", engine.status().ToString()));
    return 1;
  }
  void* memory = nullptr;
  absl::StatusOr<std::unique_ptr<MemoryRegion>> region;
  if (options.allocate) {
    region = (*engine)->Allocate(options.region_bytes);
    if (region.ok()) memory = (*region)->base();
  } else {
    memory = mmap(nullptr, options.region_bytes, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (memory == MAP_FAILED) {
      WriteLine(absl::StrCat("ERR mmap: ", std::strerror(errno)));
      return 1;
    }
    region = (*engine)->Register(memory, options.region_bytes);
  }
  if (!region.ok()) {
    WriteLine(absl::StrCat("ERR ", region.status().ToString()));
    return 1;
  }
  FillPattern(memory, options.region_bytes, options.seed);
  WriteLine(absl::StrCat("READY ", ToHex((*engine)->worker_address()), " ",
                         ToHex((*region)->remote_key()), " ",
                         reinterpret_cast<uint64_t>(memory), " ", options.region_bytes));
  char buffer[256];
  while (fgets(buffer, sizeof(buffer), stdin) != nullptr) {
    std::vector<std::string_view> words = Words(std::string_view(buffer, strcspn(buffer, "\n")), ' ');
    if (words.empty()) continue;
    if (words[0] == "QUIT") break;
    if (words[0] == "SUM" && words.size() == 3) {
      uint64_t addr = 0, length = 0;
      uint64_t base = reinterpret_cast<uint64_t>(memory);
      if (!absl::SimpleAtoi(std::string(words[1]), &addr) ||
          !absl::SimpleAtoi(std::string(words[2]), &length) || addr < base ||
          addr - base > options.region_bytes || length > options.region_bytes - (addr - base)) {
        WriteLine("ERR bad range");
        continue;
      }
      WriteLine(absl::StrFormat("SUM %016x",
                                BlockChecksum(reinterpret_cast<const void*>(addr), length)));
    } else if (words[0] == "STATS") {
      EngineStats s = (*engine)->stats();
      WriteLine(absl::StrCat("STATS ", s.gets_served, " ", s.puts_served, " ", s.requests_refused,
                             " ", s.bytes_served, " ", s.blocks_corrupted));
    } else {
      WriteLine("ERR unknown command");
    }
  }
  region->reset();
  engine->reset();
  if (!options.allocate) munmap(memory, options.region_bytes);
  return 0;
}

}  // namespace

void FillPattern(void* data, size_t length, uint64_t seed) {
  // splitmix64: fast, and the same on every machine.
  uint64_t state = seed * 0x9e3779b97f4a7c15ULL + 1;
  auto* bytes = static_cast<unsigned char*>(data);
  size_t i = 0;
  for (; i + 8 <= length; i += 8) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    std::memcpy(bytes + i, &z, 8);
  }
  for (; i < length; ++i) bytes[i] = static_cast<unsigned char>(seed + i);
}

bool MaybeRunPeer() {
  const char* env = std::getenv(kPeerEnv);
  if (env == nullptr) return false;
  PeerOptions options;
  if (!Decode(env, &options)) {
    fprintf(stdout, "ERR bad %s: %s\n", kPeerEnv, env);
    fflush(stdout);
    _exit(2);
  }
  unsetenv(kPeerEnv);
  int code = RunPeer(options);
  fflush(stdout);
  _exit(code);
}

absl::StatusOr<std::unique_ptr<PeerProcess>> PeerProcess::Start(const PeerOptions& options) {
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe2");
  if (pipe2(out, O_CLOEXEC) != 0) {
    int err = errno;
    close(in[0]);
    close(in[1]);
    return ErrnoToStatus(err, "pipe2");
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);

  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string_view(*e).starts_with(std::string(kPeerEnv) + "=")) continue;
    env_strings.emplace_back(*e);
  }
  env_strings.push_back(absl::StrCat(kPeerEnv, "=", Encode(options)));
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string path = "/proc/self/exe";
  std::string arg0 = "tierkv-transfer-peer";
  char* argv[] = {arg0.data(), nullptr};

  auto peer = std::unique_ptr<PeerProcess>(new PeerProcess);
  int rc = posix_spawn(&peer->pid_, path.c_str(), &actions, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(in[0]);
  close(out[1]);
  peer->to_child_ = in[1];
  peer->from_child_ = out[0];
  if (rc != 0) {
    peer->pid_ = -1;
    return ErrnoToStatus(rc, "posix_spawn of the peer");
  }
  TIERKV_ASSIGN_OR_RETURN(std::string line, peer->ReadLine(absl::Seconds(30)));
  std::vector<std::string_view> words = Words(line, ' ');
  if (words.size() != 5 || words[0] != "READY") {
    return absl::InternalError(absl::StrCat("peer did not start: ", line));
  }
  TIERKV_ASSIGN_OR_RETURN(peer->address_, FromHex(words[1]));
  TIERKV_ASSIGN_OR_RETURN(peer->key_, FromHex(words[2]));
  if (!absl::SimpleAtoi(std::string(words[3]), &peer->base_) ||
      !absl::SimpleAtoi(std::string(words[4]), &peer->length_)) {
    return absl::InternalError(absl::StrCat("peer sent a bad READY line: ", line));
  }
  return peer;
}

PeerProcess::~PeerProcess() {
  Kill();
  if (to_child_ >= 0) close(to_child_);
  if (from_child_ >= 0) close(from_child_);
}

void PeerProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

absl::StatusOr<std::string> PeerProcess::ReadLine(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    size_t newline = buffered_.find('\n');
    if (newline != std::string::npos) {
      std::string line = buffered_.substr(0, newline);
      buffered_.erase(0, newline + 1);
      // UCX writes its warnings to the child's stdout too ("[time] [host:pid] ... UCX WARN").
      if (line.starts_with("[")) continue;
      return line;
    }
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError("no answer from the peer process");
    }
    pollfd fd{from_child_, POLLIN, 0};
    int ready = poll(&fd, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (ready < 0 && errno != EINTR) return ErrnoToStatus(errno, "poll on the peer's pipe");
    if (ready <= 0) continue;
    char chunk[4096];
    ssize_t n = read(from_child_, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return absl::UnavailableError("the peer process closed its pipe");
    buffered_.append(chunk, static_cast<size_t>(n));
  }
}

absl::StatusOr<std::string> PeerProcess::Call(const std::string& line) {
  if (pid_ <= 0) return absl::FailedPreconditionError("the peer process is gone");
  std::string out = line + "\n";
  if (write(to_child_, out.data(), out.size()) != static_cast<ssize_t>(out.size())) {
    return ErrnoToStatus(errno, "write to the peer process");
  }
  TIERKV_ASSIGN_OR_RETURN(std::string answer, ReadLine(absl::Seconds(30)));
  if (answer.starts_with("ERR")) return absl::InternalError(answer);
  return answer;
}

absl::StatusOr<uint64_t> PeerProcess::Checksum(uint64_t addr, uint64_t length) {
  TIERKV_ASSIGN_OR_RETURN(std::string answer, Call(absl::StrCat("SUM ", addr, " ", length)));
  std::vector<std::string_view> words = Words(answer, ' ');
  uint64_t sum = 0;
  if (words.size() != 2 || !absl::SimpleHexAtoi(std::string(words[1]), &sum)) {
    return absl::InternalError(absl::StrCat("bad SUM answer: ", answer));
  }
  return sum;
}

absl::StatusOr<EngineStats> PeerProcess::Stats() {
  TIERKV_ASSIGN_OR_RETURN(std::string answer, Call("STATS"));
  std::vector<std::string_view> words = Words(answer, ' ');
  EngineStats s;
  if (words.size() != 6 || !absl::SimpleAtoi(std::string(words[1]), &s.gets_served) ||
      !absl::SimpleAtoi(std::string(words[2]), &s.puts_served) ||
      !absl::SimpleAtoi(std::string(words[3]), &s.requests_refused) ||
      !absl::SimpleAtoi(std::string(words[4]), &s.bytes_served) ||
      !absl::SimpleAtoi(std::string(words[5]), &s.blocks_corrupted)) {
    return absl::InternalError(absl::StrCat("bad STATS answer: ", answer));
  }
  return s;
}

}  // namespace tierkv::transfer::testing
