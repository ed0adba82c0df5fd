// ssd_bench: the SSD tier (storage/ssd_tier.h) on one directory, each figure printed beside
// fio --direct=1 on the same directory's filesystem, measured in the same run, and their
// ratio.
//
//   ssd_bench [--dir=DIR] [--capacity=8GiB] [--bytes=4GiB] [--seconds=10] [--threads=N]
//             [--batch=N] [--records=1000000] [--skip_restart] [--json=PATH] [--keep]
//
// Phases (--phases), each a row of the table:
//   write    2 MiB blocks written through SsdTier::Write, --batch blocks per call from
//            --threads threads, against fio --rw=write --bs=2m (and, as a reference, fio with
//            one write in flight and an fdatasync every --batch writes, as the tier syncs).
//   read     the same blocks read back in slab order by --read_threads threads through
//            SsdTier::Read (checksums verified by the tier) against fio --rw=read --bs=2m (and,
//            as a reference, fio with --read_threads reads in flight, as many as the tier's
//            synchronous readers).
//   random   64 KiB blocks (--random_bytes of them) written in batches of at least 32 against
//            fio --rw=write --bs=64k, then read in random order by --random_threads threads
//            against fio --rw=randread --bs=64k with that many I/Os in flight.
//   pool     demote and promote: 2 MiB blocks living in a HostPool written to the tier with
//            the pool's memory as the write pieces (the pool allocation is freed once the
//            block is durable), then read back into fresh pool allocations by --read_threads
//            threads (as the cache manager promotes), round after round over the same
//            pool; against fio write and read passing over a file of the pool's size (the
//            same working set), run again around this phase.
//   restart  --records small blocks (--record_bytes each) cataloged in a fresh tier, the
//            tier closed and opened again: SsdTier::Open's wall time and the recovery's own
//            figure, with the page cache of the tier's files dropped first (cold) and again
//            right after (warm). No fio baseline; the target is 5 s per million records.
// Every tierkv figure sits between fio runs (fio, tierkv, fio, ... with --rounds tierkv runs),
// since the disk of a shared machine is noisy; every fio run is reported. The ratio is
// tierkv over the best fio run (and over the mean of the fio runs); the target is at least
// 0.80 for the 2 MiB write and read figures.
//
// A phase moves --bytes, or stops at --seconds, whichever comes first (fio: --size or
// --io_size with --runtime). fio runs as a child (--thread, so one pid holds every job),
// writes only under the scratch directory, and is killed by its pid if it overruns; its
// files are deleted after each run. The tier reaches the disk through a timing wrapper of
// the storage seam (SsdFileIo), so each tierkv run also prints where its threads spent their
// time in file I/O (pwrite, pread, fdatasync, fallocate); the rest is copies, checksums and
// the RocksDB catalog.
//
// Scratch space: a fresh directory made inside --dir (by default inside this program's build
// directory), removed at the end unless --keep. The free space of that filesystem is checked
// against the most the run can take before anything is written.
// Exit status: 0 when every target is met, 3 when one is missed, 1 on errors, 2 on bad flags
// or too little free space.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "cache_manager/block_index.h"
#include "cache_manager/event_log.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/block_key.h"
#include "core/process.h"
#include "core/status.h"
#include "core/units.h"
#include "storage/host_pool.h"
#include "storage/ssd_tier.h"

extern char** environ;

namespace tierkv::bench {
namespace {

namespace fs = std::filesystem;

constexpr double kTargetRatio = 0.80;
constexpr double kRestartTargetSecondsPerMillion = 5.0;
constexpr uint64_t kLargeBlock = 2 << 20;
constexpr uint64_t kSmallBlock = 64 << 10;
constexpr uint64_t kAlign = 4096;
constexpr uint64_t kHugePage = 2 << 20;

// --threads=2 and --batch=8 (16 MiB per Write call) come from --sweep on the 2-core
// development VM: fewer blocks per call leave the device idle while each call syncs (one
// thread with one block per call reached a third of fio), more threads or larger batches
// gained nothing measurable there.
struct Flags {
  std::string dir;  // Empty: the build directory (TIERKV_BENCH_SCRATCH).
  std::string capacity = "8GiB";
  std::string bytes = "4GiB";
  double seconds = 10;
  int rounds = 1;
  int threads = 2;
  int read_threads = 4;
  int batch = 8;
  int random_threads = 8;
  std::string random_bytes = "1GiB";
  std::string pool = "1GiB";
  uint64_t records = 1000000;
  std::string record_bytes = "4KiB";
  int restart_batch = 4096;
  double restart_seconds = 600;
  bool skip_restart = false;
  std::vector<std::string> phases = {"write", "read", "random", "pool", "restart"};
  std::string fio = "fio";
  std::string fio_engine = "libaio";
  int fio_iodepth = 16;
  bool fio_reference_rows = true;
  bool huge_buffers = false;
  bool sweep = false;
  std::vector<int> sweep_threads = {1, 2, 4};
  std::vector<int> sweep_batches = {1, 2, 4, 8, 16, 32};
  std::string json;
  bool keep = false;
};

// Sizes parsed from Flags.
struct Sizes {
  uint64_t capacity = 0;
  uint64_t bytes = 0;
  uint64_t random_bytes = 0;
  uint64_t pool = 0;
  uint64_t record_bytes = 0;
};

// --- Small helpers -------------------------------------------------------------------------

// User + system time of this process (every thread, the tier's own included), in seconds.
double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// A key no other block of this run has: `salt` tells the phases apart.
BlockKey MakeKey(uint64_t salt, uint64_t index) {
  uint64_t state = salt * 0x100000001b3ull ^ index;
  BlockKey key;
  for (size_t i = 0; i < key.size(); i += 8) {
    uint64_t word = SplitMix64(state);
    std::memcpy(key.data() + i, &word, 8);
  }
  return key;
}

void FillRandom(uint8_t* data, size_t size, uint64_t seed) {
  for (size_t i = 0; i + 8 <= size; i += 8) {
    uint64_t word = SplitMix64(seed);
    std::memcpy(data + i, &word, 8);
  }
}

// Heap memory aligned for O_DIRECT, owned, faulted in. With `huge`, 2 MiB-aligned and
// advised for transparent huge pages, as the host pool maps its memory: a 2 MiB block is then
// one physically contiguous piece, which the block layer can pass on as one segment.
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t size, bool huge = false) : size_(size) {
    const size_t align = huge ? kHugePage : kAlign;
    const size_t rounded = (size + align - 1) / align * align;
    data_ = static_cast<uint8_t*>(std::aligned_alloc(align, rounded));
    if (data_ == nullptr) std::abort();
    if (huge) madvise(data_, rounded, MADV_HUGEPAGE);
    std::memset(data_, 0, rounded);
  }
  ~AlignedBuffer() { std::free(data_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  size_t size_;
  uint8_t* data_;
};

std::string ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string LoadAverage() {
  std::string text = ReadSmallFile("/proc/loadavg");
  while (!text.empty() && text.back() == '\n') text.pop_back();
  return text.empty() ? "?" : text;
}

std::string CpuModel() {
  std::istringstream in(ReadSmallFile("/proc/cpuinfo"));
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return std::string(line.substr(line.find(':') + 2));
  }
  return "?";
}

// "fstype source at mountpoint" of the mount holding `path` (the longest mount point that
// is a prefix of it), from /proc/self/mountinfo.
std::string FilesystemOf(const std::string& path) {
  std::error_code ec;
  std::string real = fs::canonical(path, ec).string();
  std::istringstream in(ReadSmallFile("/proc/self/mountinfo"));
  std::string best_point, best;
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    auto dash = std::find(f.begin(), f.end(), "-");
    if (f.size() < 5 || dash == f.end() || f.end() - dash < 3) continue;
    const std::string& point = f[4];
    bool under =
        real == point || (real.rfind(point, 0) == 0 && (point == "/" || real[point.size()] == '/'));
    if (under && point.size() >= best_point.size()) {
      best_point = point;
      best = absl::StrCat(dash[1], " ", dash[2], " at ", point);
    }
  }
  return best.empty() ? "?" : best;
}

// Drops the page cache of every regular file under `dir` (only the files of this run), so
// that the next Open reads its catalog from the disk.
void DropPageCache(const std::string& dir) {
  std::error_code ec;
  for (const auto& entry : fs::recursive_directory_iterator(dir, ec)) {
    if (!entry.is_regular_file(ec)) continue;
    int fd = open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
  }
}

// --- The storage seam, timed ----------------------------------------------------------------

// Wraps the real file operations and adds up calls, bytes and time per kind of operation,
// so that a tierkv figure can be split into file I/O and the rest. Thread-safe.
class TimedFileIo : public SsdFileIo {
 public:
  enum Kind { kPWrite, kPRead, kFDataSync, kFAllocate, kOther, kKinds };
  struct Totals {
    std::array<uint64_t, kKinds> calls{}, bytes{}, ns{};
    Totals operator-(const Totals& o) const {
      Totals d;
      for (int k = 0; k < kKinds; ++k) {
        d.calls[k] = calls[k] - o.calls[k];
        d.bytes[k] = bytes[k] - o.bytes[k];
        d.ns[k] = ns[k] - o.ns[k];
      }
      return d;
    }
  };

  explicit TimedFileIo(std::shared_ptr<SsdFileIo> real) : real_(std::move(real)) {}

  int Open(const std::string& path, int flags, mode_t mode) override {
    return Timed(kOther, 0, [&] { return real_->Open(path, flags, mode); });
  }
  int Close(int fd) override {
    return Timed(kOther, 0, [&] { return real_->Close(fd); });
  }
  ssize_t PWrite(int fd, const void* buf, size_t count, off_t offset) override {
    return Timed(kPWrite, count, [&] { return real_->PWrite(fd, buf, count, offset); });
  }
  ssize_t PRead(int fd, void* buf, size_t count, off_t offset) override {
    return Timed(kPRead, count, [&] { return real_->PRead(fd, buf, count, offset); });
  }
  int FDataSync(int fd) override {
    return Timed(kFDataSync, 0, [&] { return real_->FDataSync(fd); });
  }
  int FAllocate(int fd, off_t offset, off_t length) override {
    return Timed(kFAllocate, static_cast<uint64_t>(length),
                 [&] { return real_->FAllocate(fd, offset, length); });
  }
  int FStat(int fd, struct stat* st) override {
    return Timed(kOther, 0, [&] { return real_->FStat(fd, st); });
  }

  Totals Snapshot() const {
    Totals t;
    for (int k = 0; k < kKinds; ++k) {
      t.calls[k] = calls_[k].load(std::memory_order_relaxed);
      t.bytes[k] = bytes_[k].load(std::memory_order_relaxed);
      t.ns[k] = ns_[k].load(std::memory_order_relaxed);
    }
    return t;
  }

  // One line: each kind's calls, mean size and seconds, and how many file operations were
  // in flight on average over the run (their summed time over `wall_seconds`; the tier may
  // run several per call, so this can exceed the number of calling threads).
  static std::string Describe(const Totals& t, double wall_seconds) {
    static constexpr const char* kNames[kKinds] = {"pwrite", "pread", "fdatasync", "fallocate",
                                                   "open/close/fstat"};
    std::vector<std::string> parts;
    uint64_t io_ns = 0;
    for (int k = 0; k < kKinds; ++k) {
      io_ns += t.ns[k];
      if (t.calls[k] == 0) continue;
      std::string part = absl::StrFormat("%s %d x", kNames[k], t.calls[k]);
      if (t.bytes[k] > 0) absl::StrAppend(&part, " ", FormatBytes(t.bytes[k] / t.calls[k]));
      absl::StrAppend(&part, absl::StrFormat(" %.3f s (%.2f ms each)", t.ns[k] * 1e-9,
                                             t.ns[k] * 1e-6 / static_cast<double>(t.calls[k])));
      parts.push_back(part);
    }
    return absl::StrFormat("%s; %.2f file operations in flight on average over %.3f s",
                           absl::StrJoin(parts, ", "),
                           wall_seconds > 0 ? io_ns * 1e-9 / wall_seconds : 0.0, wall_seconds);
  }

  template <typename F>
  auto Timed(Kind kind, uint64_t bytes, F&& f) -> decltype(f()) {
    absl::Time start = absl::Now();
    auto result = f();
    ns_[kind].fetch_add(absl::ToInt64Nanoseconds(absl::Now() - start), std::memory_order_relaxed);
    calls_[kind].fetch_add(1, std::memory_order_relaxed);
    bytes_[kind].fetch_add(bytes, std::memory_order_relaxed);
    return result;
  }

  const std::shared_ptr<SsdFileIo> real_;
  std::array<std::atomic<uint64_t>, kKinds> calls_{}, bytes_{}, ns_{};
};

// --- fio -----------------------------------------------------------------------------------

// One timed run of either side.
struct Run {
  double seconds = 0;
  uint64_t bytes = 0;
  uint64_t ops = 0;
  double cpu_seconds = 0;  // tierkv: this process's user + system time; fio: its own figure.
  uint64_t errors = 0;
  std::string first_error;
  double GBps() const { return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0; }
  double Iops() const { return seconds > 0 ? static_cast<double>(ops) / seconds : 0; }
  double CpuPerGB() const {
    return bytes > 0 ? cpu_seconds / (static_cast<double>(bytes) / 1e9) : 0;
  }
};

struct FioJob {
  std::string name;
  std::string rw;  // write, read, randread.
  uint64_t block = 0;
  uint64_t size = 0;     // File size.
  uint64_t io_size = 0;  // Bytes to move (0: size).
  int iodepth = 1;
  int fdatasync = 0;  // fdatasync every N writes (0: never).
};

// Runs `argv` with stdout and stderr into `log`, for at most `limit`; killed by its pid when
// it overruns. Returns the exit code.
absl::StatusOr<int> RunChild(const std::vector<std::string>& argv, const std::string& log,
                             absl::Duration limit) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  std::vector<std::string> copy = argv;
  std::vector<char*> args;
  for (std::string& a : copy) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return ErrnoToStatus(rc, absl::StrCat("starting ", argv[0]));
  absl::Time deadline = absl::Now() + limit;
  int status = 0;
  while (true) {
    pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) return ErrnoToStatus(errno, "waitpid");
    if (absl::Now() > deadline) {
      kill(pid, SIGKILL);
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return absl::DeadlineExceededError(
          absl::StrCat(argv[0], " ran past ", absl::FormatDuration(limit), " and was killed"));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

class Fio {
 public:
  Fio(const Flags& flags, std::string scratch) : flags_(flags), scratch_(std::move(scratch)) {}

  std::string Version() const {
    std::string log = scratch_ + "/fio-version.log";
    absl::StatusOr<int> rc = RunChild({flags_.fio, "--version"}, log, absl::Seconds(10));
    std::string text = ReadSmallFile(log);
    fs::remove(log);
    while (!text.empty() && text.back() == '\n') text.pop_back();
    return rc.ok() && *rc == 0 ? text : "not found";
  }

  std::vector<std::string> Command(const FioJob& job) const {
    std::vector<std::string> argv = {
        flags_.fio,
        absl::StrCat("--name=", job.name),
        absl::StrCat("--directory=", scratch_, "/fio"),
        absl::StrCat("--rw=", job.rw),
        absl::StrCat("--bs=", job.block),
        "--direct=1",
        absl::StrCat("--ioengine=", flags_.fio_engine),
        absl::StrCat("--iodepth=", job.iodepth),
        "--numjobs=1",
        "--thread",
        absl::StrCat("--size=", job.size),
        absl::StrCat("--runtime=", static_cast<int>(std::ceil(flags_.seconds))),
        "--group_reporting",
        "--output-format=json",
        absl::StrCat("--output=", scratch_, "/fio.json")};
    if (job.io_size > 0) argv.push_back(absl::StrCat("--io_size=", job.io_size));
    if (job.fdatasync > 0) argv.push_back(absl::StrCat("--fdatasync=", job.fdatasync));
    if (job.rw == "randread") {
      argv.push_back("--norandommap");
      argv.push_back("--randrepeat=0");
    }
    return argv;
  }

  // Runs `job` in a fresh fio/ directory under the scratch directory, deleted afterwards.
  absl::StatusOr<Run> RunJob(const FioJob& job) const {
    std::vector<std::string> argv = Command(job);
    std::fprintf(stderr, "  $ %s\n", absl::StrJoin(argv, " ").c_str());
    std::string dir = scratch_ + "/fio";
    std::string out = scratch_ + "/fio.json";
    std::string log = scratch_ + "/fio.log";
    std::error_code ec;
    fs::create_directories(dir, ec);
    // Laying out a read job's file is not timed by fio but takes time here.
    absl::Duration limit = absl::Seconds(flags_.seconds) * 2 + absl::Seconds(120);
    absl::StatusOr<int> rc = RunChild(argv, log, limit);
    std::string json = ReadSmallFile(out);
    std::string messages = ReadSmallFile(log);
    fs::remove_all(dir, ec);
    fs::remove(out, ec);
    fs::remove(log, ec);
    if (!rc.ok()) return rc.status();
    if (*rc != 0) {
      return absl::InternalError(absl::StrCat("fio exited with ", *rc, ": ", messages));
    }
    return Parse(json, job.rw == "write" ? "write" : "read");
  }

 private:
  // bw_bytes, io_bytes, runtime and CPU of the (group-reported) job.
  static absl::StatusOr<Run> Parse(const std::string& text, const std::string& direction) {
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.contains("jobs") || j["jobs"].empty()) {
      return absl::InternalError(
          absl::StrCat("fio: unreadable JSON output: ", text.substr(0, 200)));
    }
    const nlohmann::json& job = j["jobs"][0];
    if (job.value("error", 0) != 0) {
      return absl::InternalError(absl::StrCat("fio: job error ", job.value("error", 0)));
    }
    const nlohmann::json& d = job[direction];
    Run run;
    double bw = d.value("bw_bytes", 0.0);
    run.bytes = d.value("io_bytes", uint64_t{0});
    run.ops = d.value("total_ios", uint64_t{0});
    run.seconds = bw > 0 ? static_cast<double>(run.bytes) / bw : 0;
    double runtime_s = job.value("job_runtime", 0.0) / 1000.0;
    run.cpu_seconds = (job.value("usr_cpu", 0.0) + job.value("sys_cpu", 0.0)) / 100.0 * runtime_s;
    if (run.bytes == 0) return absl::InternalError("fio moved no bytes");
    return run;
  }

  const Flags& flags_;
  const std::string scratch_;
};

// --- The tier side ----------------------------------------------------------------------

// A block's payload as the tier receives it.
struct Payload {
  std::vector<std::span<const uint8_t>> pieces;
  uint64_t checksum = 0;
};

struct WriteJob {
  uint64_t count = 0;  // Blocks.
  uint64_t size = 0;   // Payload bytes of each.
  int threads = 1;
  int batch = 1;
  absl::Time deadline;
  uint64_t salt = 0;  // Keys: MakeKey(salt, index).
  std::function<Payload(uint64_t index)> payload;
  // Optional: the parent of block `index` (a chain).
  std::function<std::optional<BlockKey>(uint64_t index)> parent;
  // Optional: called (from the writing thread) once block `index` is durable.
  std::function<void(uint64_t index)> written;
  // Optional: called with the number of blocks written so far, after each Write call.
  std::function<void(uint64_t done)> progress;
};

struct WriteOutcome {
  Run run;
  std::vector<SsdRecord> records;  // The blocks written, by index.
  bool out_of_space = false;
};

struct ReadJob {
  std::span<const SsdRecord> records;
  int threads = 1;
  bool random = false;  // Random order (else each record once, in order).
  uint64_t max_ops = 0;
  absl::Time deadline;
  // Where record `index` goes, on thread `thread`; empty when there is no room (an error).
  std::function<std::vector<std::span<uint8_t>>(int thread, size_t index)> into;
};

class Bench {
 public:
  Bench(const Flags& flags, const Sizes& sizes, std::string scratch)
      : flags_(flags),
        sizes_(sizes),
        scratch_(std::move(scratch)),
        fio_(flags, scratch_),
        io_(std::make_shared<TimedFileIo>(DefaultSsdFileIo())),
        sources_(kSources) {
    for (size_t i = 0; i < sources_.size(); ++i) {
      sources_[i] = std::make_unique<AlignedBuffer>(kLargeBlock, flags_.huge_buffers);
      FillRandom(sources_[i]->data(), kLargeBlock, 1000 + i);
      source_checksums_[i] = BlockChecksum(sources_[i]->data(), kLargeBlock);
    }
    fingerprint_ = MakeKey(0xf1, 0);
  }

  bool Wants(std::string_view phase) const {
    return std::find(flags_.phases.begin(), flags_.phases.end(), phase) != flags_.phases.end();
  }

  absl::Status RunAll() {
    PrintHeader();
    if (flags_.sweep) return Sweep();
    TIERKV_RETURN_IF_ERROR(OpenMainTier());
    if (Wants("write") || Wants("read")) TIERKV_RETURN_IF_ERROR(SequentialPhases());
    if (Wants("random")) TIERKV_RETURN_IF_ERROR(RandomPhase());
    if (Wants("pool")) TIERKV_RETURN_IF_ERROR(PoolPhase());
    tier_.reset();
    if (!flags_.keep) {
      std::error_code ec;
      fs::remove_all(scratch_ + "/tier", ec);
    }
    if (Wants("restart") && !flags_.skip_restart) TIERKV_RETURN_IF_ERROR(RestartPhase());
    return absl::OkStatus();
  }

  // The table (stdout) and the JSON file; true when every target is met.
  bool Report() const {
    std::printf("\nload average at the end: %s\n\n", LoadAverage().c_str());
    std::printf(
        "| figure | unit | tierkv | tierkv runs | fio runs (in order) | ratio to best fio | "
        "ratio to mean fio | target | met | CPU s/GB tierkv / fio |\n");
    std::printf("|---|---|---:|---|---|---:|---:|---|---|---|\n");
    bool all_met = true;
    for (const Row& row : rows_) {
      std::printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", row.name.c_str(),
                  row.unit.c_str(), row.value.c_str(), row.runs.c_str(), row.baseline.c_str(),
                  row.ratio_best.c_str(), row.ratio_mean.c_str(), row.target.c_str(),
                  row.met ? (*row.met ? "yes" : "**no**") : "-", row.cpu.c_str());
      if (row.met && !*row.met) all_met = false;
    }
    if (!notes_.empty()) {
      std::printf("\n");
      for (const std::string& note : notes_) std::printf("- %s\n", note.c_str());
    }
    std::printf("\nFile I/O of each tierkv run (through the storage seam; summed over threads):\n");
    for (const auto& [what, line] : io_lines_) {
      std::printf("- %s: %s\n", what.c_str(), line.c_str());
    }
    if (!flags_.json.empty()) {
      nlohmann::json out;
      out["header"] = header_;
      out["figures"] = nlohmann::json::array();
      for (const Row& row : rows_) out["figures"].push_back(row.json);
      out["notes"] = notes_;
      out["file_io"] = nlohmann::json::array();
      for (const auto& [what, line] : io_lines_)
        out["file_io"].push_back({{"run", what}, {"io", line}});
      std::ofstream file(flags_.json);
      file << out.dump(2) << "\n";
      if (!file) std::fprintf(stderr, "could not write %s\n", flags_.json.c_str());
    }
    return all_met;
  }

 private:
  static constexpr size_t kSources = 16;  // Distinct 2 MiB payloads written in turn.

  // One line of the table, formatted, and its JSON.
  struct Row {
    std::string name, unit, value, runs, baseline, ratio_best, ratio_mean, target, cpu;
    std::optional<bool> met;
    nlohmann::json json;
  };

  void Note(std::string note) {
    std::fprintf(stderr, "# %s\n", note.c_str());
    notes_.push_back(std::move(note));
  }

  void PrintHeader() {
    long pages = sysconf(_SC_PHYS_PAGES);
    long page = sysconf(_SC_PAGE_SIZE);
    header_["date"] = absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::Now(), absl::UTCTimeZone());
    header_["nproc"] = sysconf(_SC_NPROCESSORS_ONLN);
    header_["cpu"] = CpuModel();
    header_["memory"] = FormatBytes(static_cast<uint64_t>(pages) * static_cast<uint64_t>(page));
    header_["directory"] = scratch_;
    header_["filesystem"] = FilesystemOf(scratch_);
    header_["fio"] = fio_.Version();
    header_["fio_engine"] = flags_.fio_engine;
    header_["fio_iodepth"] = flags_.fio_iodepth;
    header_["load_average_at_start"] = LoadAverage();
    header_["settings"] = absl::StrFormat(
        "capacity %s, %s or %.0f s per run, %d tierkv round(s), %d writer thread(s), %d "
        "blocks per Write, %d reader thread(s), %d random reader thread(s) over %s, pool %s, "
        "restart %d records of %s in batches of %d",
        FormatBytes(sizes_.capacity), FormatBytes(sizes_.bytes), flags_.seconds, flags_.rounds,
        flags_.threads, flags_.batch, flags_.read_threads, flags_.random_threads,
        FormatBytes(sizes_.random_bytes), FormatBytes(sizes_.pool), flags_.records,
        FormatBytes(sizes_.record_bytes), flags_.restart_batch);
    for (const auto& [key, value] : header_.items()) {
      std::printf("%s: %s\n", key.c_str(),
                  value.is_string() ? value.get<std::string>().c_str() : value.dump().c_str());
    }
    std::fflush(stdout);
  }

  absl::Status OpenMainTier() {
    SsdTierOptions options;
    options.dir = scratch_ + "/tier";
    options.capacity_bytes = sizes_.capacity;
    options.io = io_;
    SsdRecovery recovery;
    TIERKV_ASSIGN_OR_RETURN(tier_, SsdTier::Open(options, &recovery));
    return absl::OkStatus();
  }

  Payload SourcePayload(uint64_t index, uint64_t size) const {
    const AlignedBuffer& source = *sources_[index % kSources];
    Payload p;
    p.pieces.push_back(std::span<const uint8_t>(source.data(), size));
    p.checksum = size == kLargeBlock ? source_checksums_[index % kSources]
                                     : BlockChecksum(source.data(), size);
    return p;
  }

  // --- Running jobs ---

  WriteOutcome Write(SsdTier& tier, const WriteJob& job) {
    WriteOutcome out;
    std::vector<SsdRecord> records(job.count);
    std::vector<uint8_t> ok(job.count, 0);
    std::atomic<uint64_t> next{0}, done{0}, errors{0};
    std::atomic<bool> full{false};
    absl::Mutex error_mu;
    std::string first_error;
    auto fail = [&](const absl::Status& status) {
      if (errors.fetch_add(1) == 0) {
        absl::MutexLock lock(&error_mu);
        first_error = status.ToString();
      }
    };
    const int64_t now_ms = absl::ToUnixMillis(absl::Now());
    auto worker = [&] {
      std::vector<SsdTier::WriteItem> items;
      std::vector<uint64_t> indices;
      while (!full.load() && absl::Now() < job.deadline && errors.load() == 0) {
        uint64_t first = next.fetch_add(static_cast<uint64_t>(job.batch));
        if (first >= job.count) break;
        uint64_t last = std::min<uint64_t>(job.count, first + job.batch);
        items.clear();
        indices.clear();
        for (uint64_t i = first; i < last; ++i) {
          absl::StatusOr<SsdLocation> location = tier.Reserve(job.size);
          if (!location.ok()) {
            if (location.status().code() == absl::StatusCode::kResourceExhausted) {
              full = true;
            } else {
              fail(location.status());
            }
            break;
          }
          Payload payload = job.payload(i);
          SsdTier::WriteItem& item = items.emplace_back();
          item.record.key = MakeKey(job.salt, i);
          if (job.parent) item.record.parent = job.parent(i);
          item.record.size = job.size;
          item.record.checksum = payload.checksum;
          item.record.fingerprint = fingerprint_;
          item.record.last_use_unix_ms = now_ms;
          item.record.location = *location;
          item.pieces = std::move(payload.pieces);
          indices.push_back(i);
        }
        if (items.empty()) break;
        std::vector<absl::Status> statuses = tier.Write(items);
        for (size_t k = 0; k < items.size(); ++k) {
          if (!statuses[k].ok()) {
            tier.Unreserve(items[k].record.location);
            fail(statuses[k]);
            continue;
          }
          records[indices[k]] = items[k].record;
          ok[indices[k]] = 1;
          if (job.written) job.written(indices[k]);
        }
        uint64_t total = done.fetch_add(items.size()) + items.size();
        if (job.progress) job.progress(total);
      }
    };
    double cpu0 = ProcessCpuSeconds();
    absl::Time start = absl::Now();
    std::vector<std::thread> threads;
    for (int t = 0; t < job.threads; ++t) threads.emplace_back(worker);
    for (std::thread& t : threads) t.join();
    out.run.seconds = absl::ToDoubleSeconds(absl::Now() - start);
    out.run.cpu_seconds = ProcessCpuSeconds() - cpu0;
    for (uint64_t i = 0; i < job.count; ++i) {
      if (ok[i]) out.records.push_back(records[i]);
    }
    out.run.ops = out.records.size();
    out.run.bytes = out.run.ops * job.size;
    out.run.errors = errors.load();
    out.run.first_error = first_error;
    out.out_of_space = full.load();
    return out;
  }

  Run Read(SsdTier& tier, const ReadJob& job) {
    std::atomic<uint64_t> next{0}, bytes{0}, ops{0}, errors{0};
    absl::Mutex error_mu;
    std::string first_error;
    const uint64_t n = job.records.size();
    const uint64_t max_ops = job.random ? job.max_ops : std::min<uint64_t>(job.max_ops, n);
    auto worker = [&](int thread) {
      std::mt19937_64 rng(0x5eed + static_cast<uint64_t>(thread));
      while (absl::Now() < job.deadline && errors.load() == 0) {
        uint64_t op = next.fetch_add(1);
        if (op >= max_ops) break;
        size_t index = job.random ? static_cast<size_t>(rng() % n) : static_cast<size_t>(op);
        std::vector<std::span<uint8_t>> pieces = job.into(thread, index);
        absl::Status status = pieces.empty() ? absl::ResourceExhaustedError("no room for the block")
                                             : tier.Read(job.records[index], pieces);
        if (!status.ok()) {
          if (errors.fetch_add(1) == 0) {
            absl::MutexLock lock(&error_mu);
            first_error = status.ToString();
          }
          continue;
        }
        ops.fetch_add(1, std::memory_order_relaxed);
        bytes.fetch_add(job.records[index].size, std::memory_order_relaxed);
      }
    };
    Run run;
    if (n == 0) return run;
    double cpu0 = ProcessCpuSeconds();
    absl::Time start = absl::Now();
    std::vector<std::thread> threads;
    for (int t = 0; t < job.threads; ++t) threads.emplace_back(worker, t);
    for (std::thread& t : threads) t.join();
    run.seconds = absl::ToDoubleSeconds(absl::Now() - start);
    run.cpu_seconds = ProcessCpuSeconds() - cpu0;
    run.bytes = bytes.load();
    run.ops = ops.load();
    run.errors = errors.load();
    run.first_error = first_error;
    return run;
  }

  // Per-thread destination buffers of `size` bytes for plain reads.
  std::function<std::vector<std::span<uint8_t>>(int, size_t)> ThreadBuffers(
      int threads, uint64_t size, std::vector<std::unique_ptr<AlignedBuffer>>& buffers) {
    buffers.clear();
    for (int t = 0; t < threads; ++t) {
      buffers.push_back(std::make_unique<AlignedBuffer>(size, flags_.huge_buffers));
    }
    return [&buffers, size](int thread, size_t) {
      return std::vector<std::span<uint8_t>>{std::span<uint8_t>(buffers[thread]->data(), size)};
    };
  }

  absl::Status RemoveAll(std::vector<SsdRecord>& records) {
    absl::Status status = tier_->Remove(records);
    records.clear();
    return status;
  }

  // Runs `tierkv` between fio runs: fio, tierkv, fio, ... (--rounds tierkv runs).
  absl::Status Interleave(const FioJob& fio_job, std::vector<Run>& fio_runs,
                          const std::function<absl::StatusOr<Run>(int round)>& tierkv,
                          std::vector<Run>& tierkv_runs) {
    for (int round = 0; round <= flags_.rounds; ++round) {
      TIERKV_ASSIGN_OR_RETURN(Run f, fio_.RunJob(fio_job));
      std::fprintf(stderr, "  fio %s: %.2f GB/s (%.0f IOPS)\n", fio_job.name.c_str(), f.GBps(),
                   f.Iops());
      fio_runs.push_back(f);
      if (round == flags_.rounds) break;
      TIERKV_ASSIGN_OR_RETURN(Run t, tierkv(round));
      tierkv_runs.push_back(t);
    }
    return absl::OkStatus();
  }

  // A tierkv run's outcome on stderr, with where its file I/O time went.
  void Describe(const std::string& what, const Run& run, const TimedFileIo::Totals& io) {
    std::fprintf(stderr, "  tierkv %s: %.2f GB/s (%.0f ops/s, %s in %.3f s, CPU %.2f s/GB)%s\n",
                 what.c_str(), run.GBps(), run.Iops(), FormatBytes(run.bytes).c_str(), run.seconds,
                 run.CpuPerGB(),
                 run.errors
                     ? absl::StrCat(" ERRORS: ", run.errors, ", first: ", run.first_error).c_str()
                     : "");
    std::string line = TimedFileIo::Describe(io, run.seconds);
    std::fprintf(stderr, "    file I/O: %s\n", line.c_str());
    io_lines_.emplace_back(what, line);
  }

  void AddRow(const std::string& name, const std::string& unit, const std::vector<Run>& tierkv,
              const std::vector<Run>& fio, std::optional<double> target,
              const std::function<double(const Run&)>& value) {
    Row row;
    row.name = name;
    row.unit = unit;
    auto fmt = [&](double v) {
      return unit == "IOPS" ? absl::StrFormat("%.0f", v) : absl::StrFormat("%.2f", v);
    };
    double best = 0, fio_best = 0, fio_sum = 0, cpu_t = 0, cpu_f = 0;
    std::vector<std::string> ours, theirs;
    uint64_t errors = 0;
    for (const Run& r : tierkv) {
      best = std::max(best, value(r));
      ours.push_back(fmt(value(r)));
      errors += r.errors;
      cpu_t = std::max(cpu_t, r.CpuPerGB());
    }
    for (const Run& r : fio) {
      fio_best = std::max(fio_best, value(r));
      fio_sum += value(r);
      theirs.push_back(fmt(value(r)));
      cpu_f = std::max(cpu_f, r.CpuPerGB());
    }
    double fio_mean = fio.empty() ? 0 : fio_sum / static_cast<double>(fio.size());
    row.value = fmt(best);
    row.runs = absl::StrJoin(ours, ", ");
    row.baseline = fio.empty() ? "-" : absl::StrJoin(theirs, ", ");
    row.ratio_best = fio_best > 0 ? absl::StrFormat("%.2f", best / fio_best) : "-";
    row.ratio_mean = fio_mean > 0 ? absl::StrFormat("%.2f", best / fio_mean) : "-";
    row.cpu = absl::StrFormat("%.2f / %.2f", cpu_t, cpu_f);
    if (target) {
      row.target = absl::StrFormat("≥ %.2fx best fio", *target);
      row.met = fio_best > 0 && best / fio_best >= *target && errors == 0;
    } else {
      row.target = "-";
    }
    if (errors > 0) row.name += absl::StrCat(" (", errors, " errors)");
    row.json = {{"figure", name},
                {"unit", unit},
                {"tierkv", best},
                {"tierkv_runs", nlohmann::json::array()},
                {"fio_runs", nlohmann::json::array()},
                {"errors", errors}};
    for (const Run& r : tierkv) row.json["tierkv_runs"].push_back(value(r));
    for (const Run& r : fio) row.json["fio_runs"].push_back(value(r));
    if (fio_best > 0) {
      row.json["ratio_to_best_fio"] = best / fio_best;
      row.json["ratio_to_mean_fio"] = best / fio_mean;
    }
    if (row.met) row.json["met"] = *row.met;
    rows_.push_back(std::move(row));
  }

  static double GBps(const Run& r) { return r.GBps(); }
  static double Iops(const Run& r) { return r.Iops(); }

  FioJob SeqWriteJob() const {
    return {.name = "seqwrite",
            .rw = "write",
            .block = kLargeBlock,
            .size = sizes_.bytes,
            .iodepth = flags_.fio_iodepth};
  }
  FioJob SeqReadJob() const {
    return {.name = "seqread",
            .rw = "read",
            .block = kLargeBlock,
            .size = sizes_.bytes,
            .iodepth = flags_.fio_iodepth};
  }

  // --- Phases 1 and 2: sequential 2 MiB writes and reads ---

  absl::StatusOr<WriteOutcome> WriteLarge(int threads, int batch, uint64_t salt) {
    WriteJob job;
    job.count = sizes_.bytes / kLargeBlock;
    job.size = kLargeBlock;
    job.threads = threads;
    job.batch = batch;
    job.deadline = absl::Now() + absl::Seconds(flags_.seconds);
    job.salt = salt;
    job.payload = [this](uint64_t i) { return SourcePayload(i, kLargeBlock); };
    TimedFileIo::Totals before = io_->Snapshot();
    WriteOutcome out = Write(*tier_, job);
    Describe(absl::StrFormat("write (%d threads, batch %d)", threads, batch), out.run,
             io_->Snapshot() - before);
    if (out.out_of_space) Note("the tier filled up during a write run");
    return out;
  }

  Run ReadLarge(std::span<const SsdRecord> records, int threads) {
    std::vector<std::unique_ptr<AlignedBuffer>> buffers;
    ReadJob job;
    job.records = records;
    job.threads = threads;
    job.max_ops = records.size();
    job.deadline = absl::Now() + absl::Seconds(flags_.seconds);
    job.into = ThreadBuffers(threads, kLargeBlock, buffers);
    TimedFileIo::Totals before = io_->Snapshot();
    Run run = Read(*tier_, job);
    Describe(absl::StrFormat("read (%d threads)", threads), run, io_->Snapshot() - before);
    return run;
  }

  // Records in the order of their place on disk.
  static void SortByLocation(std::vector<SsdRecord>& records) {
    std::sort(records.begin(), records.end(), [](const SsdRecord& a, const SsdRecord& b) {
      return std::tie(a.location.slab, a.location.offset) <
             std::tie(b.location.slab, b.location.offset);
    });
  }

  absl::Status SequentialPhases() {
    std::fprintf(stderr, "phase: sequential 2 MiB writes\n");
    std::vector<SsdRecord> written;
    std::vector<Run> fio_runs, tierkv_runs;
    TIERKV_RETURN_IF_ERROR(Interleave(
        SeqWriteJob(), fio_runs,
        [&](int round) -> absl::StatusOr<Run> {
          TIERKV_RETURN_IF_ERROR(RemoveAll(written));  // The previous round's blocks.
          TIERKV_ASSIGN_OR_RETURN(WriteOutcome out,
                                  WriteLarge(flags_.threads, flags_.batch, 100 + round));
          written = std::move(out.records);
          return out.run;
        },
        tierkv_runs));
    AddRow(absl::StrFormat("sequential write, 2 MiB blocks (tierkv: %d threads x %d blocks per "
                           "Write; fio: %s, iodepth %d)",
                           flags_.threads, flags_.batch, flags_.fio_engine, flags_.fio_iodepth),
           "GB/s", tierkv_runs, fio_runs, kTargetRatio, GBps);
    if (flags_.fio_reference_rows) {
      // The tier syncs every Write call; fio with an fdatasync every --batch writes, from one
      // thread, shows what that durability costs the device alone.
      FioJob synced = SeqWriteJob();
      synced.name = "seqwrite-fdatasync";
      synced.iodepth = 1;
      synced.fdatasync = flags_.batch;
      TIERKV_ASSIGN_OR_RETURN(Run f, fio_.RunJob(synced));
      std::fprintf(stderr, "  fio %s: %.2f GB/s\n", synced.name.c_str(), f.GBps());
      AddRow(absl::StrFormat("(reference) the same tierkv writes against fio iodepth 1 with an "
                             "fdatasync every %d writes",
                             flags_.batch),
             "GB/s", tierkv_runs, {f}, std::nullopt, GBps);
    }

    if (Wants("read")) {
      std::fprintf(stderr, "phase: sequential 2 MiB reads\n");
      if (written.empty()) return absl::InternalError("no blocks to read");
      SortByLocation(written);
      fio_runs.clear();
      tierkv_runs.clear();
      TIERKV_RETURN_IF_ERROR(Interleave(
          SeqReadJob(), fio_runs,
          [&](int) -> absl::StatusOr<Run> { return ReadLarge(written, flags_.read_threads); },
          tierkv_runs));
      AddRow(absl::StrFormat("sequential read, 2 MiB blocks, checksums verified (tierkv: %d "
                             "threads; fio: %s, iodepth %d)",
                             flags_.read_threads, flags_.fio_engine, flags_.fio_iodepth),
             "GB/s", tierkv_runs, fio_runs, kTargetRatio, GBps);
      if (flags_.fio_reference_rows) {
        // The tier's reads are synchronous: --threads of them in flight. fio with that depth.
        FioJob shallow = SeqReadJob();
        shallow.name = "seqread-shallow";
        shallow.iodepth = flags_.read_threads;
        TIERKV_ASSIGN_OR_RETURN(Run f, fio_.RunJob(shallow));
        std::fprintf(stderr, "  fio %s: %.2f GB/s\n", shallow.name.c_str(), f.GBps());
        AddRow(absl::StrFormat("(reference) the same tierkv reads against fio iodepth %d",
                               flags_.read_threads),
               "GB/s", tierkv_runs, {f}, std::nullopt, GBps);
      }
    }
    return RemoveAll(written);
  }

  // --- Phase 3: random 64 KiB reads ---

  absl::Status RandomPhase() {
    std::fprintf(stderr, "phase: 64 KiB writes, then random 64 KiB reads\n");
    const int batch = std::max(flags_.batch, 32);
    std::vector<SsdRecord> set;
    std::vector<Run> fio_writes, tierkv_writes;
    FioJob fio_write{.name = "write64k",
                     .rw = "write",
                     .block = kSmallBlock,
                     .size = sizes_.random_bytes,
                     .iodepth = flags_.fio_iodepth};
    TIERKV_RETURN_IF_ERROR(Interleave(
        fio_write, fio_writes,
        [&](int round) -> absl::StatusOr<Run> {
          TIERKV_RETURN_IF_ERROR(RemoveAll(set));  // The previous round's blocks.
          WriteJob job;
          job.count = sizes_.random_bytes / kSmallBlock;
          job.size = kSmallBlock;
          job.threads = flags_.threads;
          job.batch = batch;
          job.deadline = absl::Now() + absl::Seconds(flags_.seconds * 6);
          job.salt = 300 + round;
          job.payload = [this](uint64_t i) { return SourcePayload(i, kSmallBlock); };
          TimedFileIo::Totals before = io_->Snapshot();
          WriteOutcome out = Write(*tier_, job);
          Describe(absl::StrFormat("write, 64 KiB blocks (%d threads, batch %d)", job.threads,
                                   job.batch),
                   out.run, io_->Snapshot() - before);
          if (out.run.errors > 0) return absl::InternalError(out.run.first_error);
          set = std::move(out.records);
          return out.run;
        },
        tierkv_writes));
    AddRow(absl::StrFormat("sequential write, 64 KiB blocks (tierkv: %d threads x %d blocks per "
                           "Write; fio: %s, iodepth %d)",
                           flags_.threads, batch, flags_.fio_engine, flags_.fio_iodepth),
           "GB/s", tierkv_writes, fio_writes, std::nullopt, GBps);

    FioJob fio_job{.name = "randread",
                   .rw = "randread",
                   .block = kSmallBlock,
                   .size = sizes_.random_bytes,
                   .io_size = sizes_.bytes,
                   .iodepth = flags_.random_threads};
    std::vector<Run> fio_runs, tierkv_runs;
    TIERKV_RETURN_IF_ERROR(Interleave(
        fio_job, fio_runs,
        [&](int) -> absl::StatusOr<Run> {
          std::vector<std::unique_ptr<AlignedBuffer>> buffers;
          ReadJob read;
          read.records = set;
          read.threads = flags_.random_threads;
          read.random = true;
          read.max_ops = sizes_.bytes / kSmallBlock;
          read.deadline = absl::Now() + absl::Seconds(flags_.seconds);
          read.into = ThreadBuffers(read.threads, kSmallBlock, buffers);
          TimedFileIo::Totals before = io_->Snapshot();
          Run run = Read(*tier_, read);
          Describe(absl::StrFormat("random read (%d threads)", read.threads), run,
                   io_->Snapshot() - before);
          return run;
        },
        tierkv_runs));
    std::string what = absl::StrFormat(
        "random read, 64 KiB blocks over %s (tierkv: %d threads; fio: %s, iodepth %d)",
        FormatBytes(sizes_.random_bytes), flags_.random_threads, flags_.fio_engine,
        flags_.random_threads);
    AddRow(what, "GB/s", tierkv_runs, fio_runs, std::nullopt, GBps);
    AddRow(what, "IOPS", tierkv_runs, fio_runs, std::nullopt, Iops);
    return RemoveAll(set);
  }

  // --- Phase 4: demote and promote through a host pool ---

  absl::Status PoolPhase() {
    std::fprintf(stderr, "phase: demote / promote through a %s host pool\n",
                 FormatBytes(sizes_.pool).c_str());
    HostPool::Options options;
    options.capacity_bytes = sizes_.pool;
    options.page_bytes = 64 << 10;
    TIERKV_ASSIGN_OR_RETURN(std::unique_ptr<HostPool> pool, HostPool::Create(options));
    // Fill the pool with blocks (untimed), as a host tier that is about to demote.
    std::vector<PoolAllocation> blocks;
    std::vector<uint64_t> checksums;
    while (true) {
      absl::StatusOr<PoolAllocation> a = pool->Allocate(kLargeBlock);
      if (!a.ok()) break;
      const AlignedBuffer& source = *sources_[blocks.size() % kSources];
      pool->Write(*a, 0, source.data(), kLargeBlock);
      checksums.push_back(pool->Checksum(*a));
      blocks.push_back(*std::move(a));
    }
    if (blocks.empty()) return absl::InvalidArgumentError("--pool holds no 2 MiB block");
    const uint64_t per_round = blocks.size() * kLargeBlock;
    const int rounds = static_cast<int>(std::max<uint64_t>(1, sizes_.bytes / per_round));
    Note(absl::StrFormat("pool: %d blocks of 2 MiB, %d demote/promote round(s) per run",
                         blocks.size(), rounds));

    auto pieces_of = [&](const PoolAllocation& a) {
      std::vector<std::span<uint8_t>> pieces;
      for (const PoolExtent& e : a.extents) pieces.emplace_back(pool->base() + e.offset, e.length);
      return pieces;
    };

    uint64_t salt = 400;
    // One run: `rounds` times (fewer when --seconds runs out), demote every pool block (free
    // it once durable), then promote every block back into a fresh allocation; the tier's
    // copies are removed after each round (untimed).
    auto run_once = [&](Run& demote, Run& promote) -> absl::Status {
      TimedFileIo::Totals io_demote{}, io_promote{};
      const absl::Time run_deadline = absl::Now() + absl::Seconds(flags_.seconds);
      for (int r = 0; r < rounds && (r == 0 || absl::Now() < run_deadline); ++r) {
        WriteJob job;
        job.count = blocks.size();
        job.size = kLargeBlock;
        job.threads = flags_.threads;
        job.batch = flags_.batch;
        job.deadline = absl::InfiniteFuture();
        job.salt = salt++;
        job.payload = [&](uint64_t i) {
          Payload p;
          for (std::span<uint8_t> piece : pieces_of(blocks[i])) p.pieces.emplace_back(piece);
          p.checksum = checksums[i];
          return p;
        };
        job.written = [&](uint64_t i) { pool->Free(blocks[i]); };
        TimedFileIo::Totals before = io_->Snapshot();
        WriteOutcome out = Write(*tier_, job);
        TimedFileIo::Totals after = io_->Snapshot();
        if (out.run.errors > 0 || out.records.size() != blocks.size()) {
          return absl::InternalError(absl::StrCat("demote: ", out.run.first_error,
                                                  out.out_of_space ? " (tier full)" : ""));
        }
        Accumulate(demote, out.run);
        io_demote = Add(io_demote, after - before);

        std::vector<PoolAllocation> promoted(out.records.size());
        ReadJob read;
        read.records = out.records;
        read.threads = flags_.read_threads;
        read.max_ops = out.records.size();
        read.deadline = absl::InfiniteFuture();
        read.into = [&](int, size_t i) {
          absl::StatusOr<PoolAllocation> a = pool->Allocate(out.records[i].size);
          if (!a.ok()) return std::vector<std::span<uint8_t>>{};
          promoted[i] = *std::move(a);
          return pieces_of(promoted[i]);
        };
        before = io_->Snapshot();
        Run in = Read(*tier_, read);
        after = io_->Snapshot();
        if (in.errors > 0) return absl::InternalError(absl::StrCat("promote: ", in.first_error));
        Accumulate(promote, in);
        io_promote = Add(io_promote, after - before);
        // The promoted blocks are the pool's content for the next round (same order).
        blocks = std::move(promoted);
        TIERKV_RETURN_IF_ERROR(RemoveAll(out.records));
      }
      Describe(absl::StrFormat("demote (%d threads, batch %d)", flags_.threads, flags_.batch),
               demote, io_demote);
      Describe(absl::StrFormat("promote (%d threads)", flags_.read_threads), promote, io_promote);
      return absl::OkStatus();
    };

    // fio over the same working set: a file of the pool's size, passed over until --bytes.
    FioJob pool_write = SeqWriteJob(), pool_read = SeqReadJob();
    pool_write.size = pool_read.size = per_round;
    pool_write.io_size = pool_read.io_size = per_round * static_cast<uint64_t>(rounds);
    std::vector<Run> fio_write, fio_read, demotes, promotes;
    for (int round = 0; round <= flags_.rounds; ++round) {
      TIERKV_ASSIGN_OR_RETURN(Run w, fio_.RunJob(pool_write));
      std::fprintf(stderr, "  fio seqwrite: %.2f GB/s\n", w.GBps());
      fio_write.push_back(w);
      TIERKV_ASSIGN_OR_RETURN(Run r, fio_.RunJob(pool_read));
      std::fprintf(stderr, "  fio seqread: %.2f GB/s\n", r.GBps());
      fio_read.push_back(r);
      if (round == flags_.rounds) break;
      Run demote, promote;
      TIERKV_RETURN_IF_ERROR(run_once(demote, promote));
      demotes.push_back(demote);
      promotes.push_back(promote);
    }
    for (const PoolAllocation& a : blocks) pool->Free(a);
    AddRow(
        absl::StrFormat("demote: 2 MiB blocks from a %s host pool, pool memory as the "
                        "pieces (tierkv: %d threads x %d per Write; fio: write, iodepth %d, "
                        "over a file of the pool's size)",
                        FormatBytes(per_round), flags_.threads, flags_.batch, flags_.fio_iodepth),
        "GB/s", demotes, fio_write, std::nullopt, GBps);
    AddRow(absl::StrFormat("promote: into fresh pool allocations, checksums verified (tierkv: "
                           "%d threads; fio: read, iodepth %d, same file)",
                           flags_.read_threads, flags_.fio_iodepth),
           "GB/s", promotes, fio_read, std::nullopt, GBps);
    return absl::OkStatus();
  }

  static void Accumulate(Run& total, const Run& part) {
    total.seconds += part.seconds;
    total.bytes += part.bytes;
    total.ops += part.ops;
    total.cpu_seconds += part.cpu_seconds;
    total.errors += part.errors;
    if (total.first_error.empty()) total.first_error = part.first_error;
  }

  static TimedFileIo::Totals Add(const TimedFileIo::Totals& a, const TimedFileIo::Totals& b) {
    TimedFileIo::Totals s;
    for (int k = 0; k < TimedFileIo::kKinds; ++k) {
      s.calls[k] = a.calls[k] + b.calls[k];
      s.bytes[k] = a.bytes[k] + b.bytes[k];
      s.ns[k] = a.ns[k] + b.ns[k];
    }
    return s;
  }

  // --- Phase 5: restart ---

  absl::Status RestartPhase() {
    std::fprintf(stderr, "phase: restart with %lu records\n",
                 static_cast<unsigned long>(flags_.records));
    const uint64_t reserved = SsdTier::ReservedFor(sizes_.record_bytes);
    SsdTierOptions options;
    options.dir = scratch_ + "/restart";
    options.capacity_bytes = flags_.records * reserved + (64 << 20);
    options.io = io_;
    AlignedBuffer payload(sizes_.record_bytes);
    FillRandom(payload.data(), payload.size(), 7);
    const uint64_t checksum = BlockChecksum(payload.data(), payload.size());
    constexpr uint64_t kChain = 1024;  // Blocks per chain (a 16K-token prompt).
    const uint64_t salt = 500;

    std::vector<SsdRecord> records;
    {
      SsdRecovery recovery;
      TIERKV_ASSIGN_OR_RETURN(std::unique_ptr<SsdTier> tier, SsdTier::Open(options, &recovery));
      ModelSpec spec = BuiltinTinyModelSpec();
      TIERKV_RETURN_IF_ERROR(tier->RememberModel(spec));
      WriteJob job;
      job.count = flags_.records;
      job.size = sizes_.record_bytes;
      job.threads = flags_.threads;
      job.batch = flags_.restart_batch;
      job.deadline = absl::Now() + absl::Seconds(flags_.restart_seconds);
      job.salt = salt;
      job.payload = [&](uint64_t) {
        return Payload{{std::span<const uint8_t>(payload.data(), payload.size())}, checksum};
      };
      job.parent = [&](uint64_t i) -> std::optional<BlockKey> {
        if (i % kChain == 0) return std::nullopt;
        return MakeKey(salt, i - 1);
      };
      const uint64_t step = std::max<uint64_t>(1, flags_.records / 10);
      std::atomic<uint64_t> next_report{step};
      absl::Time start = absl::Now();
      job.progress = [&](uint64_t done) {
        uint64_t mark = next_report.load();
        if (done >= mark && next_report.compare_exchange_strong(mark, mark + step)) {
          double s = absl::ToDoubleSeconds(absl::Now() - start);
          std::fprintf(stderr,
                       "  cataloged %lu of %lu records (%.0f%%) in %.1f s, %.0f records/s\n",
                       static_cast<unsigned long>(done), static_cast<unsigned long>(job.count),
                       100.0 * static_cast<double>(done) / static_cast<double>(job.count), s,
                       static_cast<double>(done) / s);
        }
      };
      TimedFileIo::Totals before = io_->Snapshot();
      WriteOutcome out = Write(*tier, job);
      Describe(absl::StrFormat("catalog %d records (%d threads, batch %d)", job.count, job.threads,
                               job.batch),
               out.run, io_->Snapshot() - before);
      if (out.run.errors > 0 || out.out_of_space || out.records.empty()) {
        return absl::InternalError(absl::StrCat("writing the records: ", out.run.first_error,
                                                out.out_of_space ? " (tier full)" : ""));
      }
      if (out.records.size() < job.count) {
        Note(
            absl::StrFormat("restart: --restart_seconds ran out after %d of %d records; the "
                            "Open figures below are for those",
                            out.records.size(), job.count));
      }
      Note(
          absl::StrFormat("restart: %d records of %s cataloged in %.1f s (%.0f records/s, "
                          "%d per Write call)",
                          out.records.size(), FormatBytes(sizes_.record_bytes), out.run.seconds,
                          out.run.Iops(), job.batch));
      records = std::move(out.records);
      absl::Time close_start = absl::Now();
      tier.reset();
      Note(absl::StrFormat("restart: closing the tier took %.2f s",
                           absl::ToDoubleSeconds(absl::Now() - close_start)));
    }

    const double target =
        kRestartTargetSecondsPerMillion * static_cast<double>(records.size()) / 1e6;
    for (bool cold : {true, false}) {
      if (cold) DropPageCache(options.dir);
      SsdRecovery recovery;
      absl::Time start = absl::Now();
      TIERKV_ASSIGN_OR_RETURN(std::unique_ptr<SsdTier> tier, SsdTier::Open(options, &recovery));
      const double open_wall = absl::ToDoubleSeconds(absl::Now() - start);
      // What a cache manager does next: the block index takes the recovered blocks.
      auto pool = HostPool::Create({.capacity_bytes = 64 << 20, .prefault = false});
      if (!pool.ok()) return pool.status();
      EventLog events(1024);
      absl::Time index_start = absl::Now();
      auto index = std::make_unique<BlockIndex>(BlockIndexOptions(), pool->get(), RealClock(),
                                                &events, tier.get());
      index->Recover(recovery);
      const double index_wall = absl::ToDoubleSeconds(absl::Now() - index_start);
      const double wall = absl::ToDoubleSeconds(absl::Now() - start);
      const uint64_t indexed = index->Stats().blocks;
      // A sample of the records must read back (checksums verified by the tier).
      std::mt19937_64 rng(11);
      AlignedBuffer out(sizes_.record_bytes);
      uint64_t bad = 0;
      for (int i = 0; i < 100; ++i) {
        const SsdRecord& r = records[rng() % records.size()];
        std::span<uint8_t> piece(out.data(), out.size());
        if (!tier->Read(r, std::span<const std::span<uint8_t>>(&piece, 1)).ok()) ++bad;
      }
      std::string mode = cold ? "cold (page cache of the tier's files dropped)" : "warm";
      std::fprintf(stderr,
                   "  Open, %s: wall %.3f s (SsdTier::Open %.3f s, BlockIndex::Recover %.3f s, "
                   "%lu blocks indexed), SsdRecovery::elapsed %.3f s, %zu records recovered, "
                   "%lu dropped, %zu models; %lu of 100 sampled reads failed\n",
                   mode.c_str(), wall, open_wall, index_wall,
                   static_cast<unsigned long>(indexed), absl::ToDoubleSeconds(recovery.elapsed),
                   recovery.records.size(), static_cast<unsigned long>(recovery.dropped_records),
                   recovery.models.size(), static_cast<unsigned long>(bad));
      bool complete = recovery.records.size() == records.size() && bad == 0 &&
                      indexed == records.size();
      index.reset();
      Row row;
      row.name =
          absl::StrFormat("restart: SsdTier::Open + BlockIndex::Recover with %d records, %s",
                          records.size(), mode);
      row.unit = "s";
      row.value = absl::StrFormat("%.2f", wall);
      row.runs = absl::StrFormat("Open %.2f s + index %.2f s; %d recovered, %d dropped%s",
                                 open_wall, index_wall, recovery.records.size(),
                                 recovery.dropped_records,
                                 bad ? absl::StrCat(", ", bad, " sampled reads failed") : "");
      row.baseline = "- (no fio baseline)";
      row.ratio_best = row.ratio_mean = "-";
      row.target = absl::StrFormat("< %.2f s (5 s per million records)", target);
      row.met = wall < target && complete;
      row.json = {{"figure", row.name},
                  {"unit", "s"},
                  {"tierkv", wall},
                  {"recovery_elapsed_s", absl::ToDoubleSeconds(recovery.elapsed)},
                  {"open_s", open_wall},
                  {"index_recover_s", index_wall},
                  {"blocks_indexed", indexed},
                  {"records_written", records.size()},
                  {"records_recovered", recovery.records.size()},
                  {"dropped_records", recovery.dropped_records},
                  {"sampled_read_failures", bad},
                  {"target_s", target},
                  {"met", *row.met}};
      rows_.push_back(std::move(row));
    }
    if (!flags_.keep) {
      std::error_code ec;
      fs::remove_all(options.dir, ec);
    }
    return absl::OkStatus();
  }

  // --- --sweep: tierkv write and read over threads x batch, for choosing the defaults ---

  absl::Status Sweep() {
    TIERKV_RETURN_IF_ERROR(OpenMainTier());
    TIERKV_ASSIGN_OR_RETURN(Run before, fio_.RunJob(SeqWriteJob()));
    std::printf("\n| threads | blocks per Write | tierkv write GB/s | tierkv read GB/s |\n");
    std::printf("|---:|---:|---:|---:|\n");
    uint64_t salt = 600;
    for (int threads : flags_.sweep_threads) {
      for (int batch : flags_.sweep_batches) {
        TIERKV_ASSIGN_OR_RETURN(WriteOutcome out, WriteLarge(threads, batch, salt++));
        SortByLocation(out.records);
        Run read = ReadLarge(out.records, threads);
        std::printf("| %d | %d | %.2f | %.2f |\n", threads, batch, out.run.GBps(), read.GBps());
        std::fflush(stdout);
        TIERKV_RETURN_IF_ERROR(RemoveAll(out.records));
      }
    }
    TIERKV_ASSIGN_OR_RETURN(Run after, fio_.RunJob(SeqWriteJob()));
    TIERKV_ASSIGN_OR_RETURN(Run read, fio_.RunJob(SeqReadJob()));
    std::printf(
        "\nfio write (iodepth %d): %.2f GB/s before, %.2f GB/s after; fio read: %.2f "
        "GB/s\n",
        flags_.fio_iodepth, before.GBps(), after.GBps(), read.GBps());
    tier_.reset();
    return absl::OkStatus();
  }

  // Constant after construction.
  const Flags& flags_;
  const Sizes sizes_;
  const std::string scratch_;
  const Fio fio_;
  const std::shared_ptr<TimedFileIo> io_;
  std::vector<std::unique_ptr<AlignedBuffer>> sources_;
  std::array<uint64_t, kSources> source_checksums_{};
  Digest fingerprint_{};

  std::unique_ptr<SsdTier> tier_;
  nlohmann::json header_;
  std::vector<Row> rows_;
  std::vector<std::string> notes_;
  std::vector<std::pair<std::string, std::string>> io_lines_;  // In the order of the runs.
};

// The most this run can put on the disk at once: the main tier (its slabs, at most the
// capacity) beside a fio file, then the restart tier (records and catalog).
uint64_t SpaceNeeded(const Flags& flags, const Sizes& sizes) {
  uint64_t restart = 0;
  if (!flags.skip_restart &&
      std::find(flags.phases.begin(), flags.phases.end(), "restart") != flags.phases.end()) {
    // Payloads plus a generous allowance for the catalog (RocksDB, before compaction).
    restart = flags.records * (SsdTier::ReservedFor(sizes.record_bytes) + 512) + (64 << 20);
  }
  uint64_t main = sizes.capacity + std::max(sizes.bytes, sizes.random_bytes);
  return (flags.keep ? main + restart : std::max(main, restart)) + (1ull << 30);
}

int Main(const Flags& flags) {
  Sizes sizes;
  for (auto [text, out] :
       {std::pair{&flags.capacity, &sizes.capacity}, std::pair{&flags.bytes, &sizes.bytes},
        std::pair{&flags.random_bytes, &sizes.random_bytes}, std::pair{&flags.pool, &sizes.pool},
        std::pair{&flags.record_bytes, &sizes.record_bytes}}) {
    absl::StatusOr<uint64_t> v = ParseBytes(*text);
    if (!v.ok() || *v == 0) {
      std::fprintf(stderr, "bad size '%s'\n", text->c_str());
      return 2;
    }
    *out = *v;
  }
  for (const std::string& p : flags.phases) {
    if (p != "write" && p != "read" && p != "random" && p != "pool" && p != "restart") {
      std::fprintf(stderr, "unknown phase '%s'\n", p.c_str());
      return 2;
    }
  }
  if (flags.threads < 1 || flags.read_threads < 1 || flags.batch < 1 || flags.random_threads < 1 ||
      flags.rounds < 1 || flags.restart_batch < 1 || flags.seconds <= 0) {
    std::fprintf(stderr,
                 "--threads, --batch, --random_threads, --rounds, --restart_batch and "
                 "--seconds must be positive\n");
    return 2;
  }
  sizes.bytes = std::max(kLargeBlock, sizes.bytes / kLargeBlock * kLargeBlock);
  const uint64_t largest = std::max({sizes.bytes, sizes.random_bytes, sizes.pool});
  if (sizes.capacity < largest + (64 << 20)) {
    std::fprintf(stderr,
                 "refusing: --capacity %s cannot hold the largest phase (%s) and 64 MiB to "
                 "spare; raise --capacity or lower --bytes / --random_bytes / --pool\n",
                 FormatBytes(sizes.capacity).c_str(), FormatBytes(largest).c_str());
    return 2;
  }

  std::string parent = flags.dir.empty() ? std::string(TIERKV_BENCH_SCRATCH) : flags.dir;
  std::error_code ec;
  fs::create_directories(parent, ec);
  struct statvfs vfs;
  if (statvfs(parent.c_str(), &vfs) != 0) {
    std::fprintf(stderr, "statvfs %s: %s\n", parent.c_str(), std::strerror(errno));
    return 1;
  }
  const uint64_t available = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  const uint64_t needed = SpaceNeeded(flags, sizes);
  if (needed > available) {
    std::fprintf(stderr,
                 "refusing: this run may take up to %s under %s (capacity %s, fio files of %s, "
                 "restart tier of %lu records, 1 GiB to spare), but only %s is free there; "
                 "lower --capacity, --bytes or --records, or pick another --dir\n",
                 FormatBytes(needed).c_str(), parent.c_str(), FormatBytes(sizes.capacity).c_str(),
                 FormatBytes(std::max(sizes.bytes, sizes.random_bytes)).c_str(),
                 static_cast<unsigned long>(flags.records), FormatBytes(available).c_str());
    return 2;
  }
  std::string pattern = parent + "/ssd_bench.XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    std::fprintf(stderr, "mkdtemp %s: %s\n", pattern.c_str(), std::strerror(errno));
    return 1;
  }
  const std::string scratch = pattern;
  std::fprintf(stderr, "scratch directory %s (%s free, this run needs at most %s)\n",
               scratch.c_str(), FormatBytes(available).c_str(), FormatBytes(needed).c_str());

  int rc = 0;
  {
    Bench bench(flags, sizes, scratch);
    absl::Status status = bench.RunAll();
    if (!status.ok()) {
      std::fprintf(stderr, "ssd_bench: %s\n", status.ToString().c_str());
      rc = 1;
    }
    if (!bench.Report() && rc == 0) rc = 3;
  }
  if (flags.keep) {
    std::fprintf(stderr, "kept %s\n", scratch.c_str());
  } else {
    fs::remove_all(scratch, ec);
  }
  return rc;
}

}  // namespace
}  // namespace tierkv::bench

int main(int argc, char** argv) {
  tierkv::DisableMutexDeadlockDetection();
  tierkv::bench::Flags flags;
  CLI::App app{
      "ssd_bench: the SSD tier against fio --direct=1 on the same directory, in the "
      "same run"};
  auto option = [&app](const std::string& name, auto& value, const std::string& help) {
    return app.add_option(name, value, help)->capture_default_str();
  };
  option("--dir", flags.dir,
         "Directory to work in (a fresh directory is made inside it); default: the build "
         "directory");
  option("--capacity", flags.capacity, "Capacity of the tier under test");
  option("--bytes", flags.bytes, "Bytes each run moves (fio --size / --io_size)");
  option("--seconds", flags.seconds, "Longest time of each run (fio --runtime)");
  option("--rounds", flags.rounds, "tierkv runs per figure, each between two fio runs");
  option("--threads", flags.threads, "Threads calling Write (2 MiB, 64 KiB and pool phases)");
  option("--read_threads", flags.read_threads,
         "Threads calling Read for sequential reads and promotions (the cache manager promotes "
         "with 4)");
  option("--batch", flags.batch, "Blocks per Write call");
  option("--random_threads", flags.random_threads,
         "Threads of the random reads (and fio's iodepth there)");
  option("--random_bytes", flags.random_bytes, "Size of the 64 KiB block set read at random");
  option("--pool", flags.pool, "Host pool of the demote / promote phase");
  option("--records", flags.records, "Records of the restart phase");
  option("--record_bytes", flags.record_bytes, "Payload of each restart record");
  option("--restart_batch", flags.restart_batch, "Records per Write call in the restart phase");
  option("--restart_seconds", flags.restart_seconds,
         "Longest time for cataloging the restart phase's records");
  app.add_flag("--skip_restart,--skip-restart", flags.skip_restart, "Leave out the restart phase");
  option("--phases", flags.phases, "write, read, random, pool, restart")->delimiter(',');
  option("--fio", flags.fio, "fio binary");
  option("--fio_engine", flags.fio_engine, "fio --ioengine (libaio, io_uring)");
  option("--fio_iodepth", flags.fio_iodepth, "fio --iodepth of the 2 MiB jobs");
  option("--fio_reference_rows", flags.fio_reference_rows,
         "Also run fio writing with an fdatasync every --batch writes, and reading with "
         "--read_threads I/Os in flight (reference rows)");
  option("--huge_buffers", flags.huge_buffers,
         "Write from and read into buffers on transparent huge pages (as the host pool's) in "
         "the write, read and random phases; fio's buffers are always small pages");
  app.add_flag("--sweep", flags.sweep,
               "Only measure tierkv 2 MiB writes and reads over --sweep_threads x "
               "--sweep_batches (for choosing defaults)");
  option("--sweep_threads", flags.sweep_threads, "Thread counts of --sweep")->delimiter(',');
  option("--sweep_batches", flags.sweep_batches, "Blocks per Write of --sweep")->delimiter(',');
  option("--json", flags.json, "Also write the figures as JSON to this file");
  app.add_flag("--keep", flags.keep, "Keep the scratch directory");
  CLI11_PARSE(app, argc, argv);
  return tierkv::bench::Main(flags);
}
