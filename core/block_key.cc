#include "core/block_key.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "absl/strings/str_cat.h"
#include "core/sha256.h"

namespace tierkv {
namespace {

constexpr std::string_view kFingerprintDomain = "tierkv.v1";
constexpr std::string_view kRootDomain = "tierkv.v1/root";

// A fingerprint field: u32le(length) || bytes.
void UpdateField(Sha256& h, std::string_view s) {
  h.UpdateU32(static_cast<uint32_t>(s.size()));
  h.Update(s);
}

bool IsPowerOfTwo(uint32_t v) { return v != 0 && (v & (v - 1)) == 0; }

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

uint32_t ModelSpec::DtypeBytes() const {
  if (kv_dtype == "bf16" || kv_dtype == "fp16") return 2;
  if (kv_dtype == "fp32") return 4;
  return 0;
}

uint64_t ModelSpec::RawBlockBytes() const {
  return uint64_t{num_layers} * 2 * block_tokens * num_kv_heads * head_dim * DtypeBytes();
}

absl::Status ModelSpec::Validate() const {
  if (model_id.empty()) return absl::InvalidArgumentError("model spec: model_id is empty");
  if (num_layers == 0) return absl::InvalidArgumentError("model spec: num_layers is 0");
  if (num_kv_heads == 0) return absl::InvalidArgumentError("model spec: num_kv_heads is 0");
  if (head_dim == 0) return absl::InvalidArgumentError("model spec: head_dim is 0");
  if (DtypeBytes() == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model spec: kv_dtype '", kv_dtype, "' is not one of bf16, fp16, fp32"));
  }
  if (!IsPowerOfTwo(block_tokens) || block_tokens > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model spec: block_tokens ", block_tokens, " is not a power of two in [1, 65536]"));
  }
  if (tp_size == 0) return absl::InvalidArgumentError("model spec: tp_size is 0");
  if (tp_rank >= tp_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("model spec: tp_rank ", tp_rank, " is not below tp_size ", tp_size));
  }
  return absl::OkStatus();
}

ModelSpec BuiltinTinyModelSpec() {
  ModelSpec spec;
  spec.model_id = "builtin:tiny";
  spec.weights_digest = "seed:1234";
  spec.num_layers = 4;
  spec.num_kv_heads = 4;
  spec.head_dim = 64;
  spec.kv_dtype = "fp32";
  spec.block_tokens = 16;
  return spec;
}

Digest ModelFingerprint(const ModelSpec& spec) {
  Sha256 h;
  UpdateField(h, kFingerprintDomain);
  UpdateField(h, spec.model_id);
  UpdateField(h, spec.weights_digest);
  UpdateField(h, absl::StrCat(spec.num_layers));
  UpdateField(h, absl::StrCat(spec.num_kv_heads));
  UpdateField(h, absl::StrCat(spec.head_dim));
  UpdateField(h, spec.kv_dtype);
  UpdateField(h, absl::StrCat(spec.block_tokens));
  UpdateField(h, absl::StrCat(spec.tp_rank));
  UpdateField(h, absl::StrCat(spec.tp_size));
  return h.Finish();
}

Digest RootKey(const Digest& fingerprint, std::string_view salt) {
  Sha256 h;
  h.Update(kRootDomain);
  h.Update(fingerprint.data(), fingerprint.size());
  UpdateField(h, salt);
  return h.Finish();
}

BlockKey NextBlockKey(const Digest& parent, std::span<const uint32_t> tokens) {
  Sha256 h;
  h.Update(parent.data(), parent.size());
  for (uint32_t t : tokens) h.UpdateU32(t);
  return h.Finish();
}

std::vector<BlockKey> BlockKeyChain(const Digest& root, std::span<const uint32_t> tokens,
                                    uint32_t block_tokens) {
  std::vector<BlockKey> keys;
  if (block_tokens == 0) return keys;
  const size_t full = tokens.size() / block_tokens;
  keys.reserve(full);
  Digest prev = root;
  for (size_t i = 0; i < full; ++i) {
    prev = NextBlockKey(prev, tokens.subspan(i * block_tokens, block_tokens));
    keys.push_back(prev);
  }
  return keys;
}

absl::StatusOr<std::vector<BlockKey>> ComputeBlockKeys(const ModelSpec& spec,
                                                       std::string_view salt,
                                                       std::span<const uint32_t> tokens) {
  if (absl::Status s = spec.Validate(); !s.ok()) return s;
  return BlockKeyChain(RootKey(ModelFingerprint(spec), salt), tokens, spec.block_tokens);
}

std::string ToHex(std::span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 15];
  }
  return out;
}

absl::StatusOr<std::string> FromHex(std::string_view hex) {
  if (hex.size() % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("hex string has odd length ", hex.size()));
  }
  std::string out(hex.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); ++i) {
    int hi = HexValue(hex[2 * i]);
    int lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("hex string has a non-hex character at position ",
                       hi < 0 ? 2 * i : 2 * i + 1));
    }
    out[i] = static_cast<char>(hi << 4 | lo);
  }
  return out;
}

absl::StatusOr<BlockKey> BlockKeyFromHex(std::string_view hex) {
  if (hex.size() != 2 * kDigestBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a block key is 64 hex digits; got ", hex.size(), " characters"));
  }
  auto bytes = FromHex(hex);
  if (!bytes.ok()) return bytes.status();
  return BlockKeyFromBytes(*bytes);
}

absl::StatusOr<BlockKey> BlockKeyFromBytes(std::string_view bytes) {
  if (bytes.size() != kDigestBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a block key is 32 bytes; got ", bytes.size()));
  }
  BlockKey key;
  std::memcpy(key.data(), bytes.data(), kDigestBytes);
  return key;
}

uint64_t BlockChecksum(const void* data, size_t size) { return XXH3_64bits(data, size); }

uint64_t BlockChecksum(std::span<const PayloadPiece> pieces) {
  if (pieces.size() == 1) return BlockChecksum(pieces[0].data, pieces[0].size);
  ChecksumBuilder b;
  for (const PayloadPiece& p : pieces) b.Update(p.data, p.size);
  return b.Finish();
}

ChecksumBuilder::ChecksumBuilder() : state_(XXH3_createState()) {
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}
ChecksumBuilder::~ChecksumBuilder() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }
void ChecksumBuilder::Update(const void* data, size_t size) {
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), data, size);
}
uint64_t ChecksumBuilder::Finish() const {
  return XXH3_64bits_digest(static_cast<const XXH3_state_t*>(state_));
}

}  // namespace tierkv
