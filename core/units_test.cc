#include "core/units.h"

#include "gtest/gtest.h"

namespace tierkv {
namespace {

TEST(ParseBytes, AcceptsBinaryAndDecimalUnits) {
  EXPECT_EQ(*ParseBytes("4096"), 4096u);
  EXPECT_EQ(*ParseBytes("64KiB"), 65536u);
  EXPECT_EQ(*ParseBytes("1gib"), 1ull << 30);
  EXPECT_EQ(*ParseBytes("2MB"), 2000000u);
  EXPECT_EQ(*ParseBytes("3G"), 3000000000u);
}

TEST(ParseBytes, RejectsGarbageAndOverflow) {
  EXPECT_EQ(ParseBytes("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseBytes("GiB").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseBytes("12 apples").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseBytes("-5").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseBytes("99999999999999999999").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseBytes("20000000000TiB").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(FormatBytes, PicksReadableUnits) {
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(65536), "64.0 KiB");
  EXPECT_EQ(FormatBytes(3ull << 30), "3.0 GiB");
}

}  // namespace
}  // namespace tierkv
