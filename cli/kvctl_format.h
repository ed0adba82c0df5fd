// Text helpers of kvctl: parsing what an operator types (token lists, block keys, durations)
// and formatting what kvctl prints (human units, aligned tables).
//
// All functions are pure and thread-safe; TextTable is a value type used by one thread.
#ifndef TIERKV_CLI_KVCTL_FORMAT_H_
#define TIERKV_CLI_KVCTL_FORMAT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/block_key.h"

namespace tierkv::kvctl {

// Token ids separated by commas and/or whitespace ("1,2, 3\n4"). INVALID_ARGUMENT naming
// the first entry that is not a decimal integer in [0, 2^32), or an empty entry between
// two commas. An empty or blank input gives no tokens.
absl::StatusOr<std::vector<uint32_t>> ParseTokenList(std::string_view text);

// A block key from 64 hex digits (either case). INVALID_ARGUMENT saying what is wrong
// (length, the first non-hex character) and quoting `text`.
absl::StatusOr<BlockKey> ParseKeyArg(std::string_view text);

// A positive duration: "10s", "500ms", "1m30s", or a plain number of seconds ("2.5").
// INVALID_ARGUMENT otherwise.
absl::StatusOr<absl::Duration> ParseTimeout(std::string_view text);

// "0 B", "512 B", "4 KiB", "1.5 MiB", "64 GiB": binary units, one decimal unless exact.
std::string HumanBytes(uint64_t bytes);

// "850ms", "12s", "3m12s", "2h05m", "3d04h": the two largest units. Negative gives "0s".
std::string HumanDuration(absl::Duration d);

// part / whole as "12.5%", or "-" when whole is 0.
std::string Percent(uint64_t part, uint64_t whole);

// "TIER_HOST" with prefix "TIER_" -> "host"; underscores become dashes
// ("CODEC_FP8_E4M3" -> "fp8-e4m3"). A name without the prefix is lowercased whole.
std::string EnumLabel(std::string_view name, std::string_view prefix);

// The first 16 hex digits of a key (the short form kvctl prints by default), or all 64.
std::string KeyHex(std::string_view key_bytes, bool full);

// Rows of cells printed as aligned columns, two spaces apart. Columns marked numeric are
// right-aligned; the last column is never padded, so long text (details) may run on.
class TextTable {
 public:
  // `numeric[i]` right-aligns column i; missing entries mean left-aligned.
  explicit TextTable(std::vector<std::string> header, std::vector<bool> numeric = {});

  // Rows shorter than the header are padded with empty cells.
  void AddRow(std::vector<std::string> cells);
  size_t rows() const { return rows_.size(); }

  // The header line and every row, each ending in '\n'.
  std::string Render() const;

 private:
  std::vector<std::string> header_;
  std::vector<bool> numeric_;
  std::vector<std::vector<std::string>> rows_;
};

// "key  value" lines with the values aligned after the longest key.
std::string RenderKeyValues(const std::vector<std::pair<std::string, std::string>>& pairs);

}  // namespace tierkv::kvctl

#endif  // TIERKV_CLI_KVCTL_FORMAT_H_
