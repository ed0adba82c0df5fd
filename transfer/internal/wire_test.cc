#include "transfer/internal/wire.h"

#include <cstdint>
#include <string>

#include "gtest/gtest.h"
#include "transfer/internal/ucx.h"

namespace tierkv::transfer::internal {
namespace {

TEST(RemoteKey, RoundTrips) {
  std::string rkey("\x01\x02\x00\x03", 4);
  std::string blob = EncodeRemoteKey(0x1000, 0x2000, 42, rkey);
  absl::StatusOr<RemoteKey> key = DecodeRemoteKey(blob);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key->base, 0x1000u);
  EXPECT_EQ(key->length, 0x2000u);
  EXPECT_EQ(key->region_id, 42u);
  EXPECT_EQ(key->ucx_rkey, rkey);
}

TEST(RemoteKey, RejectsAnythingElse) {
  std::string blob = EncodeRemoteKey(0x1000, 0x2000, 1, "rkey");
  EXPECT_EQ(DecodeRemoteKey("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeRemoteKey(blob.substr(0, blob.size() - 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeRemoteKey(blob + "x").status().code(), absl::StatusCode::kInvalidArgument);
  std::string other_version = blob;
  other_version[4] = 2;
  EXPECT_EQ(DecodeRemoteKey(other_version).status().code(), absl::StatusCode::kInvalidArgument);
  std::string address = EncodeWorkerAddress("abc");
  EXPECT_EQ(DecodeRemoteKey(address).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeRemoteKey(EncodeRemoteKey(1, 0, 1, "r")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeRemoteKey(EncodeRemoteKey(~uint64_t{0} - 1, 10, 1, "r")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(WorkerAddress, RoundTripsAndRejectsAnythingElse) {
  std::string encoded = EncodeWorkerAddress("ucx-bytes");
  absl::StatusOr<std::string_view> address = DecodeWorkerAddress(encoded);
  ASSERT_TRUE(address.ok());
  EXPECT_EQ(*address, "ucx-bytes");
  EXPECT_FALSE(DecodeWorkerAddress("").ok());
  EXPECT_FALSE(DecodeWorkerAddress(EncodeWorkerAddress("")).ok());
  EXPECT_FALSE(DecodeWorkerAddress(EncodeRemoteKey(1, 1, 1, "r")).ok());
  std::string truncated = EncodeWorkerAddress("ucx-bytes");
  truncated.pop_back();
  EXPECT_FALSE(DecodeWorkerAddress(truncated).ok());
}

TEST(RangeInside, HoldsExactlyForNonEmptyRangesWithinTheRegion) {
  EXPECT_TRUE(RangeInside(100, 10, 100, 10));
  EXPECT_TRUE(RangeInside(105, 5, 100, 10));
  EXPECT_FALSE(RangeInside(105, 6, 100, 10));
  EXPECT_FALSE(RangeInside(99, 1, 100, 10));
  EXPECT_FALSE(RangeInside(110, 1, 100, 10));
  EXPECT_FALSE(RangeInside(100, 0, 100, 10));
  EXPECT_FALSE(RangeInside(105, ~uint64_t{0}, 100, 10));
  EXPECT_FALSE(RangeInside(~uint64_t{0}, 2, 100, ~uint64_t{0} - 100));
}

TEST(UcsToStatus, MapsToCodesACallerCanActOn) {
  EXPECT_TRUE(UcsToStatus(UCS_OK, "x").ok());
  EXPECT_EQ(UcsToStatus(UCS_ERR_CANCELED, "x").code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(UcsToStatus(UCS_ERR_ENDPOINT_TIMEOUT, "x").code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(UcsToStatus(UCS_ERR_CONNECTION_RESET, "x").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(UcsToStatus(UCS_ERR_UNREACHABLE, "x").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(UcsToStatus(UCS_ERR_NO_MEMORY, "x").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(UcsToStatus(UCS_ERR_INVALID_PARAM, "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(UcsToStatus(UCS_ERR_UNSUPPORTED, "x").code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(UcsToStatus(UCS_ERR_MESSAGE_TRUNCATED, "x").code(), absl::StatusCode::kInternal);
  absl::Status status = UcsToStatus(UCS_ERR_CONNECTION_RESET, "GET of block 7");
  EXPECT_NE(status.message().find("GET of block 7"), absl::string_view::npos) << status;
}

}  // namespace
}  // namespace tierkv::transfer::internal
