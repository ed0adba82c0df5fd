// Helpers shared by the block index's tests: key bytes, a payload that depends only on its
// key (so a test can check any block's bytes wherever it lies), and test chains.
#ifndef TIERKV_CACHE_MANAGER_INDEX_TEST_UTIL_H_
#define TIERKV_CACHE_MANAGER_INDEX_TEST_UTIL_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/block_key.h"

namespace tierkv::testing_util {

inline std::string Bytes(const BlockKey& k) { return std::string(KeyBytes(k)); }

inline std::string Payload(const BlockKey& key, uint64_t size) {
  std::string data(size, '\0');
  std::mt19937_64 rng(key[0] | key[1] << 8 | uint64_t{key[2]} << 16);
  for (auto& c : data) c = static_cast<char>(rng());
  return data;
}

// The key chain of n full blocks of `spec` over tokens that depend on `seed`.
inline std::vector<BlockKey> TestChain(const ModelSpec& spec, size_t n, uint32_t seed) {
  std::vector<uint32_t> tokens(n * spec.block_tokens);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = seed * 1000003 + i;
  return *ComputeBlockKeys(spec, "", tokens);
}

}  // namespace tierkv::testing_util

#endif  // TIERKV_CACHE_MANAGER_INDEX_TEST_UTIL_H_
