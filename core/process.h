// What every tierkv binary does around its servers: take SIGINT/SIGTERM synchronously and
// publish the port it bound.
#ifndef TIERKV_CORE_PROCESS_H_
#define TIERKV_CORE_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tierkv {

// Turns absl::Mutex's deadlock detection off for the process. Debian builds abseil without
// NDEBUG, so by default every lock and unlock of every absl::Mutex (gRPC's own included)
// also updates a process-wide lock graph under a global lock: about 50 ns more per lock
// and unlock, and a line every core writes. Binaries call this first thing in main; tests
// keep the detection.
void DisableMutexDeadlockDetection();

// Blocks SIGINT and SIGTERM in the calling thread (and the threads it starts later) so that
// WaitForShutdownSignal() can take them; call before starting any thread.
void BlockShutdownSignals();
// Waits for SIGINT or SIGTERM and returns its number.
int WaitForShutdownSignal();

// Writes `port` to `path` atomically (through a rename), so a reader never sees half a
// number. No-op for an empty path.
absl::Status WritePortFile(const std::string& path, int port);

// Child processes of tests and benchmarks (a server started on 127.0.0.1 with --port-file).

// Starts argv[0] with `argv`, its stdout and stderr going to `log_path` (appended to, or
// truncated first). UNAVAILABLE when it cannot be started.
absl::StatusOr<pid_t> SpawnLogged(const std::vector<std::string>& argv,
                                  const std::string& log_path, bool truncate_log);
// Waits until `port_file` holds a port and returns it. UNAVAILABLE when the process exits
// first (it is reaped), DEADLINE_EXCEEDED after `timeout`.
absl::StatusOr<int> WaitForPortFile(pid_t pid, const std::string& port_file,
                                    absl::Duration timeout);
// Sends `sig` and waits for the exit; after `grace`, SIGKILL and wait.
void StopProcess(pid_t pid, int sig, absl::Duration grace);

}  // namespace tierkv

#endif  // TIERKV_CORE_PROCESS_H_
