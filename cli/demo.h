// The demo request `tierkv up --demo` sends: a long prompt, the same prompt again, and a
// prompt sharing its prefix through the prefill worker, then a generation from the decode
// worker; it prints time to first token and cached vs computed tokens for each, and the
// cache's stats.
#ifndef TIERKV_CLI_DEMO_H_
#define TIERKV_CLI_DEMO_H_

#include <cstdint>
#include <ostream>
#include <string>

#include "absl/status/status.h"

namespace tierkv {

// Runs the demo against `tierkv up` at `address` (prompts drawn below `vocab`).
absl::Status RunDemo(const std::string& address, uint32_t vocab, std::ostream& out);

}  // namespace tierkv

#endif  // TIERKV_CLI_DEMO_H_
