// The demo request `tierkv up --demo` sends: a frontend's view of the cache for three
// prompts (a long one, the same again, and one sharing its prefix), printing what was
// cached and what had to be stored.
#ifndef TIERKV_CLI_DEMO_H_
#define TIERKV_CLI_DEMO_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"

namespace tierkv {

// Runs the demo against the cache manager at `address`, writing a report to `out`.
absl::Status RunDemo(const std::string& address, std::ostream& out);

}  // namespace tierkv

#endif  // TIERKV_CLI_DEMO_H_
