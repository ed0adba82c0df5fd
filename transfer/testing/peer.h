// A peer process for tests and benchmarks of the transfer engine: a child that owns one
// registered region filled with a known pattern and serves GET and PUT on it until told to
// quit, killed, or its alarm fires.
//
// The child is the calling program itself (/proc/self/exe), started with posix_spawn and
// the TIERKV_TRANSFER_PEER environment variable; the program must call MaybeRunPeer() first
// thing (a test does it from a static initializer, before gtest sees its flags; a benchmark
// from main) so that the child runs the peer instead of the program.
//
// Parent and child talk over pipes, one line each way:
//   child -> "READY <worker address hex> <remote key hex> <base> <length>" once started
//   "SUM <addr> <length>"  -> "SUM <BlockChecksum in hex>"  (or "ERR <text>")
//   "STATS"                -> "STATS <gets> <puts> <refused> <bytes> <corrupted>"
//   "QUIT"                 -> the child exits 0; EOF on its stdin does the same.
#ifndef TIERKV_TRANSFER_TESTING_PEER_H_
#define TIERKV_TRANSFER_TESTING_PEER_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transfer/engine.h"

namespace tierkv::transfer::testing {

struct PeerOptions {
  std::string transports = "tcp";  // UCX_TLS of the child's engine.
  std::string net_devices;         // UCX_NET_DEVICES; "lo" keeps tcp on loopback.
  uint64_t region_bytes = 64 << 20;
  // Take the region from TransferEngine::Allocate rather than registering mmap'ed memory.
  bool allocate = false;
  uint64_t seed = 1;               // Of the region's initial content (FillPattern).
  uint64_t corrupt_every_n = 0;    // EngineOptions::fault_corrupt_every_n of the child.
  int alarm_seconds = 120;         // The child dies by SIGALRM after this long at most.
  absl::Duration op_timeout = absl::Seconds(10);
};

// Fills `data` with the pseudo-random bytes that `seed` names; the same everywhere.
void FillPattern(void* data, size_t length, uint64_t seed);

// In the child (TIERKV_TRANSFER_PEER set): runs the peer and exits the process, never
// returning. Otherwise returns false at once.
bool MaybeRunPeer();

// The parent's handle on a child. Not thread-safe.
class PeerProcess {
 public:
  // Starts the child and waits (up to 30 s) for its READY line.
  static absl::StatusOr<std::unique_ptr<PeerProcess>> Start(const PeerOptions& options);
  // Kills the child (SIGKILL, by its pid) and reaps it, if still running.
  ~PeerProcess();
  PeerProcess(const PeerProcess&) = delete;
  PeerProcess& operator=(const PeerProcess&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& worker_address() const { return address_; }
  const std::string& remote_key() const { return key_; }
  uint64_t base() const { return base_; }
  uint64_t length() const { return length_; }

  // The checksum of [addr, addr + length) of the child's memory, computed by the child.
  absl::StatusOr<uint64_t> Checksum(uint64_t addr, uint64_t length);
  absl::StatusOr<EngineStats> Stats();
  // SIGKILL now, then reap. Idempotent.
  void Kill();

 private:
  PeerProcess() = default;
  absl::StatusOr<std::string> Call(const std::string& line);
  absl::StatusOr<std::string> ReadLine(absl::Duration timeout);

  pid_t pid_ = -1;
  int to_child_ = -1;
  int from_child_ = -1;
  std::string buffered_;
  std::string address_;
  std::string key_;
  uint64_t base_ = 0;
  uint64_t length_ = 0;
};

}  // namespace tierkv::transfer::testing

#endif  // TIERKV_TRANSFER_TESTING_PEER_H_
