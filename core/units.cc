#include "core/units.h"

#include <cctype>
#include <cstdio>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace tierkv {

absl::StatusOr<uint64_t> ParseBytes(std::string_view text) {
  size_t i = 0;
  uint64_t value = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    const uint64_t digit = text[i] - '0';
    if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) {
      return absl::InvalidArgumentError(absl::StrCat("size '", std::string(text), "' overflows"));
    }
    value = value * 10 + digit;
    ++i;
  }
  if (i == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "size '", std::string(text), "' does not start with a number (try 64KiB, 1GiB)"));
  }
  std::string unit = absl::AsciiStrToLower(std::string(text.substr(i)));
  uint64_t scale = 0;
  if (unit.empty() || unit == "b") scale = 1;
  else if (unit == "kib") scale = 1ull << 10;
  else if (unit == "mib") scale = 1ull << 20;
  else if (unit == "gib") scale = 1ull << 30;
  else if (unit == "tib") scale = 1ull << 40;
  else if (unit == "k" || unit == "kb") scale = 1000ull;
  else if (unit == "m" || unit == "mb") scale = 1000ull * 1000;
  else if (unit == "g" || unit == "gb") scale = 1000ull * 1000 * 1000;
  else if (unit == "t" || unit == "tb") scale = 1000ull * 1000 * 1000 * 1000;
  if (scale == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "size '", std::string(text), "' has an unknown unit (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"));
  }
  if (value > std::numeric_limits<uint64_t>::max() / scale) {
    return absl::InvalidArgumentError(absl::StrCat("size '", std::string(text), "' overflows"));
  }
  return value * scale;
}

std::string FormatBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %s", v, kUnits[u]);
  return buf;
}

}  // namespace tierkv
