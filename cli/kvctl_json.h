// JSON output of `kvctl --json`.
//
// kvctl prints response messages through their descriptors rather than with
// google::protobuf::util::MessageToJsonString, because the standard proto3 JSON mapping
// prints bytes as base64 and 64-bit integers as strings, and every tierkv tool and log
// writes block keys as lowercase hex. The mapping here is proto3 JSON with these choices:
//   - field names as in the .proto file (snake_case), in declaration order;
//   - every scalar and repeated field is printed, defaults included, so scripts need not
//     know proto3's omission rules; a singular message field is printed only when set;
//   - enums by name ("TIER_HOST"), booleans as true/false;
//   - bytes as lowercase hex (keys, fingerprints, rkeys);
//   - 32- and 64-bit integers as JSON numbers (counts, sizes and times stay far below
//     2^53, so JavaScript and jq read them exactly), except fixed64 fields, which hold
//     checksums and print as 16 hex digits;
//   - map fields (none in the API today) as arrays of {"key", "value"} objects.
//
// Thread-safe.
#ifndef TIERKV_CLI_KVCTL_JSON_H_
#define TIERKV_CLI_KVCTL_JSON_H_

#include <string>

#include <google/protobuf/message.h>

namespace tierkv::kvctl {

// `message` as one JSON object: indented by two spaces when `pretty`, else on one line.
std::string ProtoToJson(const google::protobuf::Message& message, bool pretty);

}  // namespace tierkv::kvctl

#endif  // TIERKV_CLI_KVCTL_JSON_H_
