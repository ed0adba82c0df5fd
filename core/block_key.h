// The identity contract every tierkv client shares: model spec, model fingerprint, block
// key chain and block checksums, exactly as docs/block-keys.md specifies.
//
// All functions are pure and thread-safe.
#ifndef TIERKV_CORE_BLOCK_KEY_H_
#define TIERKV_CORE_BLOCK_KEY_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tierkv {

// A SHA-256 digest: fingerprints, roots and block keys.
using Digest = std::array<uint8_t, 32>;
using BlockKey = Digest;

inline constexpr size_t kDigestBytes = 32;
inline constexpr uint32_t kDefaultBlockTokens = 16;

// The model a block's KV belongs to. KV is reusable only between identical specs.
struct ModelSpec {
  std::string model_id;
  std::string weights_digest;
  uint32_t num_layers = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  std::string kv_dtype = "bf16";  // "bf16", "fp16" or "fp32".
  uint32_t block_tokens = kDefaultBlockTokens;
  uint32_t tp_rank = 0;
  uint32_t tp_size = 1;

  // OK, or INVALID_ARGUMENT naming the first bad field: empty model_id, zero layers / heads
  // / head_dim, an unknown kv_dtype, block_tokens not a power of two (or above 65536),
  // tp_size 0 or tp_rank >= tp_size.
  absl::Status Validate() const;

  // Bytes per element of kv_dtype (2 or 4); 0 for an unknown dtype.
  uint32_t DtypeBytes() const;

  // Size of one uncompressed block object (K and V of every layer, docs/block-object.md).
  uint64_t RawBlockBytes() const;

  bool operator==(const ModelSpec&) const = default;
};

// The spec of the embedded default model `builtin:tiny` that `tierkv up` serves and that
// kvctl assumes when no model flags are given.
ModelSpec BuiltinTinyModelSpec();

// SHA-256 over the length-prefixed fields of `spec` (docs/block-keys.md). Does not validate.
Digest ModelFingerprint(const ModelSpec& spec);

// root = SHA-256("tierkv.v1/root" || fingerprint || u32le(len(salt)) || salt).
Digest RootKey(const Digest& fingerprint, std::string_view salt);

// Key of the block that follows `parent` (the root for block 0) and holds `tokens`.
BlockKey NextBlockKey(const Digest& parent, std::span<const uint32_t> tokens);

// Keys of every full block of `tokens`; a partial trailing block has no key.
// `block_tokens` must be positive.
std::vector<BlockKey> BlockKeyChain(const Digest& root, std::span<const uint32_t> tokens,
                                    uint32_t block_tokens);

// Convenience: fingerprint, root and chain in one call. INVALID_ARGUMENT for a bad spec.
absl::StatusOr<std::vector<BlockKey>> ComputeBlockKeys(const ModelSpec& spec,
                                                       std::string_view salt,
                                                       std::span<const uint32_t> tokens);

// Lowercase hex of any bytes.
std::string ToHex(std::span<const uint8_t> bytes);
inline std::string ToHex(std::string_view bytes) {
  return ToHex(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()),
                                        bytes.size()));
}
// Bytes of a hex string (either case); INVALID_ARGUMENT for odd length or a non-hex digit.
absl::StatusOr<std::string> FromHex(std::string_view hex);

// A key from 64 hex digits; INVALID_ARGUMENT otherwise.
absl::StatusOr<BlockKey> BlockKeyFromHex(std::string_view hex);
// A key from exactly 32 raw bytes (as carried in protos); INVALID_ARGUMENT otherwise.
absl::StatusOr<BlockKey> BlockKeyFromBytes(std::string_view bytes);

inline std::string_view KeyBytes(const BlockKey& key) {
  return std::string_view(reinterpret_cast<const char*>(key.data()), key.size());
}

// XXH3-64 with seed 0 of a stored payload: the checksum carried by every block.
uint64_t BlockChecksum(const void* data, size_t size);

// A piece of a block payload in this process's memory (a payload may lie in several).
struct PayloadPiece {
  const void* data = nullptr;
  size_t size = 0;
};
// A piece of memory in this process that a block payload is to be written into.
struct PayloadTarget {
  void* data = nullptr;
  size_t size = 0;
};
// BlockChecksum of the concatenation of `pieces`.
uint64_t BlockChecksum(std::span<const PayloadPiece> pieces);

// Streaming form of BlockChecksum for payloads held in several pieces. Not thread-safe.
class ChecksumBuilder {
 public:
  ChecksumBuilder();
  ~ChecksumBuilder();
  ChecksumBuilder(const ChecksumBuilder&) = delete;
  ChecksumBuilder& operator=(const ChecksumBuilder&) = delete;
  void Update(const void* data, size_t size);
  uint64_t Finish() const;

 private:
  void* state_;  // Owned XXH3_state_t.
};

// Hash functor for hash maps keyed by BlockKey: keys are SHA-256 outputs, so their first
// eight bytes are already uniformly distributed.
struct BlockKeyHash {
  size_t operator()(const BlockKey& key) const {
    uint64_t h;
    std::memcpy(&h, key.data(), sizeof(h));
    return static_cast<size_t>(h);
  }
};

// Equality for BlockKey-keyed maps: four 8-byte compares inline instead of a memcmp call,
// which matters when a Lookup probes thousands of keys.
struct BlockKeyEq {
  bool operator()(const BlockKey& a, const BlockKey& b) const {
    uint64_t x[4], y[4];
    std::memcpy(x, a.data(), sizeof(x));
    std::memcpy(y, b.data(), sizeof(y));
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
  }
};

}  // namespace tierkv

#endif  // TIERKV_CORE_BLOCK_KEY_H_
