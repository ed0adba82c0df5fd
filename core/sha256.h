// Incremental SHA-256 (OpenSSL underneath): block keys, fingerprints and weight digests.
//
// Not thread-safe; one hash per object.
#ifndef TIERKV_CORE_SHA256_H_
#define TIERKV_CORE_SHA256_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/block_key.h"

namespace tierkv {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t size);
  void Update(std::string_view s) { Update(s.data(), s.size()); }
  // Little-endian fixed-width integers.
  void UpdateU32(uint32_t v);
  void UpdateU64(uint64_t v);
  // The digest; the object must not be updated afterwards.
  Digest Finish();

 private:
  void* ctx_;  // Owned EVP_MD_CTX.
};

}  // namespace tierkv

#endif  // TIERKV_CORE_SHA256_H_
