#include "transfer/internal/wire.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace tierkv::transfer::internal {
namespace {

constexpr std::string_view kKeyMagic = "TKRK";
constexpr std::string_view kAddressMagic = "TKWA";
constexpr size_t kPreamble = 8;  // magic, version, 3 zero bytes.
constexpr size_t kKeyFixed = kPreamble + 8 + 8 + 8 + 4;
constexpr size_t kAddressFixed = kPreamble + 4;

void AppendPreamble(std::string& out, std::string_view magic) {
  out.append(magic);
  out.push_back(static_cast<char>(kWireVersion));
  out.append(3, '\0');
}

template <typename T>
void AppendScalar(std::string& out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}

template <typename T>
T ReadScalar(std::string_view bytes, size_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

bool HasPreamble(std::string_view bytes, std::string_view magic) {
  return bytes.size() >= kPreamble && bytes.substr(0, 4) == magic &&
         static_cast<uint8_t>(bytes[4]) == kWireVersion && bytes[5] == 0 && bytes[6] == 0 &&
         bytes[7] == 0;
}

}  // namespace

std::string EncodeRemoteKey(uint64_t base, uint64_t length, uint64_t region_id,
                            std::string_view ucx_rkey) {
  std::string out;
  out.reserve(kKeyFixed + ucx_rkey.size());
  AppendPreamble(out, kKeyMagic);
  AppendScalar(out, base);
  AppendScalar(out, length);
  AppendScalar(out, region_id);
  AppendScalar(out, static_cast<uint32_t>(ucx_rkey.size()));
  out.append(ucx_rkey);
  return out;
}

absl::StatusOr<RemoteKey> DecodeRemoteKey(std::string_view blob) {
  if (blob.size() < kKeyFixed || !HasPreamble(blob, kKeyMagic)) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a tierkv remote key (", blob.size(), " bytes)"));
  }
  RemoteKey key;
  key.base = ReadScalar<uint64_t>(blob, kPreamble);
  key.length = ReadScalar<uint64_t>(blob, kPreamble + 8);
  key.region_id = ReadScalar<uint64_t>(blob, kPreamble + 16);
  uint32_t n = ReadScalar<uint32_t>(blob, kPreamble + 24);
  if (blob.size() != kKeyFixed + n) {
    return absl::InvalidArgumentError(absl::StrCat("remote key of ", blob.size(),
                                                   " bytes says it holds ", n, " rkey bytes"));
  }
  if (key.length == 0 || key.base + key.length < key.base) {
    return absl::InvalidArgumentError("remote key with an empty or wrapping region");
  }
  key.ucx_rkey = blob.substr(kKeyFixed);
  return key;
}

std::string EncodeWorkerAddress(std::string_view ucx_address) {
  std::string out;
  out.reserve(kAddressFixed + ucx_address.size());
  AppendPreamble(out, kAddressMagic);
  AppendScalar(out, static_cast<uint32_t>(ucx_address.size()));
  out.append(ucx_address);
  return out;
}

absl::StatusOr<std::string_view> DecodeWorkerAddress(std::string_view bytes) {
  if (bytes.size() < kAddressFixed || !HasPreamble(bytes, kAddressMagic)) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a tierkv worker address (", bytes.size(), " bytes)"));
  }
  uint32_t n = ReadScalar<uint32_t>(bytes, kPreamble);
  if (n == 0 || bytes.size() != kAddressFixed + n) {
    return absl::InvalidArgumentError(absl::StrCat("worker address of ", bytes.size(),
                                                   " bytes says it holds ", n));
  }
  return bytes.substr(kAddressFixed);
}

}  // namespace tierkv::transfer::internal
