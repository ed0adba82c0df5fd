#include "cli/kvctl_format.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tierkv::kvctl {
namespace {

// Debian 12's abseil has its own string_view type: StrCat does not take std::string_view.
std::string S(std::string_view s) { return std::string(s); }

bool IsSeparator(char c) { return c == ',' || std::isspace(static_cast<unsigned char>(c)); }

}  // namespace

absl::StatusOr<std::vector<uint32_t>> ParseTokenList(std::string_view text) {
  std::vector<uint32_t> tokens;
  size_t i = 0;
  bool after_comma = false;
  while (i < text.size()) {
    if (IsSeparator(text[i])) {
      if (text[i] == ',') {
        if (after_comma || tokens.empty()) {
          return absl::InvalidArgumentError(
              absl::StrCat("empty token entry before the comma at character ", i + 1));
        }
        after_comma = true;
      }
      ++i;
      continue;
    }
    size_t end = i;
    while (end < text.size() && !IsSeparator(text[end])) ++end;
    std::string_view word = text.substr(i, end - i);
    uint32_t value = 0;
    auto [ptr, ec] = std::from_chars(word.data(), word.data() + word.size(), value);
    if (ec != std::errc() || ptr != word.data() + word.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token ", tokens.size() + 1, " is '", S(word),
          "': token ids are decimal integers from 0 to 4294967295"));
    }
    tokens.push_back(value);
    after_comma = false;
    i = end;
  }
  if (after_comma) return absl::InvalidArgumentError("the token list ends with a comma");
  return tokens;
}

absl::StatusOr<BlockKey> ParseKeyArg(std::string_view text) {
  absl::StatusOr<BlockKey> key = BlockKeyFromHex(text);
  if (key.ok()) return key;
  std::string shown = text.size() > 72 ? absl::StrCat(S(text.substr(0, 69)), "...") : S(text);
  return absl::InvalidArgumentError(absl::StrCat("'", shown, "' is not a block key (",
                                                 key.status().message(), ")"));
}

absl::StatusOr<absl::Duration> ParseTimeout(std::string_view text) {
  absl::Duration d;
  double seconds = 0;
  if (absl::SimpleAtod(absl::string_view(text.data(), text.size()), &seconds)) {
    d = absl::Seconds(seconds);
  } else if (!absl::ParseDuration(absl::string_view(text.data(), text.size()), &d)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", S(text), "' is not a duration: write it as 10s, 500ms, 1m30s or seconds"));
  }
  if (d <= absl::ZeroDuration() || d == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", S(text), "' is not a positive, finite duration"));
  }
  return d;
}

std::string HumanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int unit = 0;
  uint64_t scale = 1;
  while (unit < 6 && bytes / scale >= 1024) {
    scale *= 1024;
    ++unit;
  }
  if (bytes % scale == 0) return absl::StrCat(bytes / scale, " ", kUnits[unit]);
  double value = static_cast<double>(bytes) / static_cast<double>(scale);
  // 1023.96 KiB would round to "1024.0 KiB": say "1.0 MiB" instead.
  if (value >= 1023.95 && unit < 6) {
    value /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", value, kUnits[unit]);
}

std::string HumanDuration(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return "0s";
  int64_t ms = absl::ToInt64Milliseconds(d);
  if (ms < 1000) return absl::StrCat(ms, "ms");
  int64_t s = ms / 1000;
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  if (s < 86400) return absl::StrFormat("%dh%02dm", s / 3600, s % 3600 / 60);
  return absl::StrFormat("%dd%02dh", s / 86400, s % 86400 / 3600);
}

std::string Percent(uint64_t part, uint64_t whole) {
  if (whole == 0) return "-";
  return absl::StrFormat("%.1f%%", 100.0 * static_cast<double>(part) / static_cast<double>(whole));
}

std::string EnumLabel(std::string_view name, std::string_view prefix) {
  if (name.substr(0, prefix.size()) == prefix) name.remove_prefix(prefix.size());
  std::string out = absl::AsciiStrToLower(absl::string_view(name.data(), name.size()));
  std::replace(out.begin(), out.end(), '_', '-');
  return out;
}

std::string KeyHex(std::string_view key_bytes, bool full) {
  std::string hex = ToHex(key_bytes);
  if (!full && hex.size() > 16) hex.resize(16);
  return hex;
}

TextTable::TextTable(std::vector<std::string> header, std::vector<bool> numeric)
    : header_(std::move(header)), numeric_(std::move(numeric)) {
  numeric_.resize(header_.size(), false);
}

void TextTable::AddRow(std::vector<std::string> cells) {
  cells.resize(std::max(cells.size(), header_.size()));
  rows_.push_back(std::move(cells));
}

std::string TextTable::Render() const {
  std::vector<size_t> width(header_.size(), 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (size_t c = 0; c < width.size(); ++c) width[c] = std::max(width[c], row[c].size());
  };
  measure(header_);
  for (const auto& row : rows_) measure(row);

  std::string out;
  auto render = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      if (c > 0) line += "  ";
      size_t pad = c < width.size() ? width[c] - row[c].size() : 0;
      bool last = c + 1 == row.size();
      if (c < numeric_.size() && numeric_[c]) {
        line.append(pad, ' ');
        line += row[c];
      } else {
        line += row[c];
        if (!last) line.append(pad, ' ');
      }
    }
    // Empty trailing cells would leave trailing spaces.
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line;
    out += '\n';
  };
  render(header_);
  for (const auto& row : rows_) render(row);
  return out;
}

std::string RenderKeyValues(const std::vector<std::pair<std::string, std::string>>& pairs) {
  size_t width = 0;
  for (const auto& [key, value] : pairs) width = std::max(width, key.size());
  std::string out;
  for (const auto& [key, value] : pairs) {
    out += key;
    out.append(width - key.size() + 2, ' ');
    out += value;
    out += '\n';
  }
  return out;
}

}  // namespace tierkv::kvctl
