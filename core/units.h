// Human-friendly sizes for flags and output: "64KiB", "1GiB", "512MB", "4096".
#ifndef TIERKV_CORE_UNITS_H_
#define TIERKV_CORE_UNITS_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace tierkv {

// Parses a byte count with an optional unit: B, KiB/MiB/GiB/TiB (powers of 1024), K/M/G/T
// and KB/MB/GB/TB (powers of 1000), case-insensitive. INVALID_ARGUMENT for anything else,
// or on overflow.
absl::StatusOr<uint64_t> ParseBytes(std::string_view text);

// "1.5 GiB", "64.0 KiB", "512 B".
std::string FormatBytes(uint64_t bytes);

}  // namespace tierkv

#endif  // TIERKV_CORE_UNITS_H_
