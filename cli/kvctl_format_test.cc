#include "cli/kvctl_format.h"

#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cli/kvctl_json.h"
#include "tierkv/v1/admin_service.pb.h"
#include "tierkv/v1/common.pb.h"

namespace tierkv::kvctl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

TEST(ParseTokenList, AcceptsCommasAndWhitespace) {
  auto tokens = ParseTokenList("1,2, 3\n4\t5 ,6");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_THAT(*tokens, ElementsAre(1, 2, 3, 4, 5, 6));
}

TEST(ParseTokenList, BlankInputIsNoTokens) {
  auto tokens = ParseTokenList(" \n ");
  ASSERT_TRUE(tokens.ok());
  EXPECT_THAT(*tokens, IsEmpty());
}

TEST(ParseTokenList, AcceptsTheLargestTokenId) {
  auto tokens = ParseTokenList("4294967295");
  ASSERT_TRUE(tokens.ok());
  EXPECT_THAT(*tokens, ElementsAre(4294967295u));
}

TEST(ParseTokenList, NamesTheBadEntry) {
  for (const char* bad : {"1,x,3", "1,-2", "1,4294967296", "1,2.5"}) {
    auto tokens = ParseTokenList(bad);
    ASSERT_FALSE(tokens.ok()) << bad;
    EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(tokens.status().message()), HasSubstr("token 2 is")) << bad;
  }
}

TEST(ParseTokenList, RefusesEmptyEntries) {
  for (const char* bad : {"1,,2", ",1", "1,"}) {
    EXPECT_EQ(ParseTokenList(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(ParseKeyArg, AcceptsEitherCase) {
  const std::string hex(64, 'a');
  auto lower = ParseKeyArg(hex);
  auto upper = ParseKeyArg(std::string(64, 'A'));
  ASSERT_TRUE(lower.ok() && upper.ok());
  EXPECT_EQ(*lower, *upper);
  EXPECT_EQ(ToHex(KeyBytes(*lower)), hex);
}

TEST(ParseKeyArg, SaysWhatIsWrongAndQuotesTheInput) {
  auto short_key = ParseKeyArg("abc");
  EXPECT_EQ(short_key.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(short_key.status().message()), HasSubstr("'abc'"));
  EXPECT_THAT(std::string(short_key.status().message()), HasSubstr("64 hex digits"));

  auto not_hex = ParseKeyArg(std::string(63, '0') + "g");
  EXPECT_EQ(not_hex.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(not_hex.status().message()), HasSubstr("non-hex"));
}

TEST(ParseTimeout, AcceptsDurationsAndSeconds) {
  EXPECT_EQ(*ParseTimeout("10s"), absl::Seconds(10));
  EXPECT_EQ(*ParseTimeout("500ms"), absl::Milliseconds(500));
  EXPECT_EQ(*ParseTimeout("1m30s"), absl::Seconds(90));
  EXPECT_EQ(*ParseTimeout("2.5"), absl::Milliseconds(2500));
}

TEST(ParseTimeout, RefusesNonPositiveAndGarbage) {
  for (const char* bad : {"0", "0s", "-1s", "soon", "", "inf"}) {
    EXPECT_EQ(ParseTimeout(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(HumanBytes, UsesBinaryUnitsWithOneDecimalUnlessExact) {
  EXPECT_EQ(HumanBytes(0), "0 B");
  EXPECT_EQ(HumanBytes(1023), "1023 B");
  EXPECT_EQ(HumanBytes(1024), "1 KiB");
  EXPECT_EQ(HumanBytes(1536), "1.5 KiB");
  EXPECT_EQ(HumanBytes(64ull << 20), "64 MiB");
  EXPECT_EQ(HumanBytes((1ull << 20) - 1), "1.0 MiB");  // Not "1024.0 KiB".
  EXPECT_EQ(HumanBytes(3ull << 40), "3 TiB");
}

TEST(HumanDuration, ShowsTheTwoLargestUnits) {
  EXPECT_EQ(HumanDuration(absl::Milliseconds(-5)), "0s");
  EXPECT_EQ(HumanDuration(absl::Milliseconds(850)), "850ms");
  EXPECT_EQ(HumanDuration(absl::Seconds(12)), "12s");
  EXPECT_EQ(HumanDuration(absl::Seconds(192)), "3m12s");
  EXPECT_EQ(HumanDuration(absl::Minutes(125)), "2h05m");
  EXPECT_EQ(HumanDuration(absl::Hours(76)), "3d04h");
}

TEST(Percent, DashWhenTheWholeIsZero) {
  EXPECT_EQ(Percent(1, 8), "12.5%");
  EXPECT_EQ(Percent(0, 0), "-");
}

TEST(EnumLabel, StripsPrefixAndUsesDashes) {
  EXPECT_EQ(EnumLabel("TIER_HOST", "TIER_"), "host");
  EXPECT_EQ(EnumLabel("CODEC_FP8_E4M3", "CODEC_"), "fp8-e4m3");
  EXPECT_EQ(EnumLabel("OTHER", "TIER_"), "other");
}

TEST(TextTable, AlignsColumnsAndLeavesNoTrailingSpaces) {
  TextTable table({"NAME", "N", "NOTE"}, {false, true});
  table.AddRow({"a", "100", "long note"});
  table.AddRow({"bbbb", "7"});
  EXPECT_EQ(table.Render(),
            "NAME    N  NOTE\n"
            "a     100  long note\n"
            "bbbb    7\n");
}

TEST(RenderKeyValues, AlignsValues) {
  EXPECT_EQ(RenderKeyValues({{"a", "1"}, {"long key", "2"}}),
            "a         1\n"
            "long key  2\n");
}

TEST(ProtoToJson, PrintsKeysAsHexAndDefaultsExplicitly) {
  v1::BlockInfo info;
  info.set_key(std::string(32, '\xab'));
  info.set_size(4096);
  info.set_checksum(0x0123456789abcdefull);
  info.set_codec(v1::CODEC_INT8);
  const std::string json = ProtoToJson(info, /*pretty=*/false);
  std::string key_hex;
  for (int i = 0; i < 32; ++i) key_hex += "ab";
  EXPECT_THAT(json, HasSubstr("\"key\":\"" + key_hex + "\""));
  EXPECT_THAT(json, HasSubstr("\"parent_key\":\"\""));
  EXPECT_THAT(json, HasSubstr("\"size\":4096"));
  EXPECT_THAT(json, HasSubstr("\"checksum\":\"0123456789abcdef\""));
  EXPECT_THAT(json, HasSubstr("\"codec\":\"CODEC_INT8\""));
  EXPECT_THAT(json, HasSubstr("\"pinned\":false"));
  // An unset message field is left out rather than printed empty.
  EXPECT_THAT(json, Not(HasSubstr("location")));
}

TEST(ProtoToJson, PrettyPrintsNestedAndRepeatedFields) {
  v1::StatsResponse stats;
  stats.set_node("n\"1");
  v1::TierStats* tier = stats.add_tiers();
  tier->set_tier(v1::TIER_HOST);
  tier->set_capacity_bytes(64ull << 20);
  const std::string json = ProtoToJson(stats, /*pretty=*/true);
  EXPECT_THAT(json, HasSubstr("{\n  \"node\": \"n\\\"1\",\n  \"tiers\": [\n    {\n"
                              "      \"tier\": \"TIER_HOST\",\n"));
  EXPECT_THAT(json, HasSubstr("\"capacity_bytes\": 67108864"));
  EXPECT_THAT(json, HasSubstr("\"draining\": false"));
  EXPECT_EQ(json.back(), '}');
}

TEST(ProtoToJson, EmptyRepeatedFieldIsAnEmptyArray) {
  v1::ListBlocksResponse resp;
  EXPECT_EQ(ProtoToJson(resp, false),
            "{\"blocks\":[],\"next_page_token\":\"\",\"total_blocks\":0}");
}

}  // namespace
}  // namespace tierkv::kvctl
