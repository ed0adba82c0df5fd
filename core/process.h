// What every tierkv binary does around its servers: take SIGINT/SIGTERM synchronously and
// publish the port it bound.
#ifndef TIERKV_CORE_PROCESS_H_
#define TIERKV_CORE_PROCESS_H_

#include <string>

#include "absl/status/status.h"

namespace tierkv {

// Blocks SIGINT and SIGTERM in the calling thread (and the threads it starts later) so that
// WaitForShutdownSignal() can take them; call before starting any thread.
void BlockShutdownSignals();
// Waits for SIGINT or SIGTERM and returns its number.
int WaitForShutdownSignal();

// Writes `port` to `path` atomically (through a rename), so a reader never sees half a
// number. No-op for an empty path.
absl::Status WritePortFile(const std::string& path, int port);

}  // namespace tierkv

#endif  // TIERKV_CORE_PROCESS_H_
