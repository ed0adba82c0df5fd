// The bytes the transfer engine puts on the wire or hands to callers to ship through the
// control plane: worker addresses, remote keys, and the active-message headers of the
// two-sided protocol. Plain C++ (no UCX), so tests can build, forge and damage them.
//
// Byte order: little-endian throughout (static_assert below); peers must agree, which all
// x86-64 and AArch64 hosts do.
//
// Remote key (what MemoryRegion::remote_key() returns), 36 bytes + the UCX packed rkey:
//   "TKRK" | u8 version (1) | 3 bytes zero | u64 base | u64 length | u64 region id
//   | u32 n | n bytes: ucp_rkey_pack output
// Worker address (what TransferEngine::worker_address() returns):
//   "TKWA" | u8 version (1) | 3 bytes zero | u32 n | n bytes: ucp_worker_get_address output
//
// Two-sided protocol (engine.cc has the whole exchange):
//   GET: the reader posts a tag receive into its buffer with a tag of its own, then sends
//        kAmGetRequest {tag, addr, length}; the owner tag-sends the bytes with that tag, or
//        answers kAmReply {tag, kGetError, code}.
//   PUT: the writer sends kAmPutData {tag, addr, length} with the bytes as the message's
//        data (large ones by rendezvous, so nothing moves before the owner asks for it);
//        the owner checks the range, receives the bytes at addr and answers kAmReply {tag,
//        kPutDone, code}, or refuses with {tag, kPutError, code} without receiving.
//   Tags carry kTagNamespace in their top byte; each engine draws them from one counter,
//   so a tag names one operation of the engine that receives with it.
#ifndef TIERKV_TRANSFER_INTERNAL_WIRE_H_
#define TIERKV_TRANSFER_INTERNAL_WIRE_H_

#include <bit>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace tierkv::transfer::internal {

static_assert(std::endian::native == std::endian::little,
              "the transfer wire formats are written in host order, which must be little-endian");

inline constexpr uint8_t kWireVersion = 1;

struct RemoteKey {
  uint64_t base = 0;
  uint64_t length = 0;
  uint64_t region_id = 0;
  std::string_view ucx_rkey;  // Points into the decoded blob.
};

std::string EncodeRemoteKey(uint64_t base, uint64_t length, uint64_t region_id,
                            std::string_view ucx_rkey);
// INVALID_ARGUMENT for anything that is not a remote key of this version.
absl::StatusOr<RemoteKey> DecodeRemoteKey(std::string_view blob);

std::string EncodeWorkerAddress(std::string_view ucx_address);
// The UCX address inside; INVALID_ARGUMENT for anything that is not a worker address.
absl::StatusOr<std::string_view> DecodeWorkerAddress(std::string_view bytes);

// Whether [addr, addr + length) is non-empty and lies inside [base, base + region_length),
// without overflow for any inputs.
inline bool RangeInside(uint64_t addr, uint64_t length, uint64_t base, uint64_t region_length) {
  if (length == 0 || addr < base) return false;
  uint64_t offset = addr - base;
  return offset <= region_length && length <= region_length - offset;
}

// Active-message ids of the two-sided protocol.
enum AmId : unsigned {
  kAmGetRequest = 0x7b01,
  kAmReply = 0x7b03,
  kAmPutData = 0x7b04,
};

// Header of kAmGetRequest and kAmPutData.
struct RequestHeader {
  uint64_t tag = 0;     // The initiator's tag for this operation.
  uint64_t addr = 0;    // Address in the owner's memory.
  uint64_t length = 0;  // Bytes.
};

enum class ReplyKind : uint32_t {
  kGetError = 1,  // code: why the owner refused a GET (no bytes follow).
  kPutError = 3,  // code: why the owner refused a PUT (its bytes were not received).
  kPutDone = 4,   // code: OK when the bytes have landed, else why not.
};

// Header of kAmReply.
struct ReplyHeader {
  uint64_t tag = 0;   // The initiator's tag of the operation answered.
  uint32_t kind = 0;  // A ReplyKind.
  uint32_t code = 0;  // An absl::StatusCode.
};

inline constexpr uint64_t kTagNamespace = uint64_t{0x7b} << 56;
inline constexpr uint64_t kTagCounterMask = (uint64_t{1} << 56) - 1;
inline constexpr uint64_t kTagFullMask = ~uint64_t{0};

}  // namespace tierkv::transfer::internal

#endif  // TIERKV_TRANSFER_INTERNAL_WIRE_H_
