// How often block keys were asked for lately: a count-min sketch of small counters, halved
// every `sample` increments so that old popularity fades. Estimates never undercount
// (before a halving) and overcount only through collisions, which the width keeps rare.
//
// Not thread-safe: the block index calls it under its lock.
#ifndef TIERKV_CACHE_MANAGER_FREQUENCY_SKETCH_H_
#define TIERKV_CACHE_MANAGER_FREQUENCY_SKETCH_H_

#include <cstdint>
#include <cstring>
#include <vector>

#include "core/block_key.h"

namespace tierkv {

class FrequencySketch {
 public:
  // `width` counters per row (rounded up to a power of two, at least 64).
  explicit FrequencySketch(uint64_t width) {
    width_ = 64;
    while (width_ < width) width_ <<= 1;
    counters_.assign(kRows * width_, 0);
    sample_ = 10 * width_;
  }

  void Add(const BlockKey& key) {
    for (int r = 0; r < kRows; ++r) {
      uint8_t& c = counters_[r * width_ + Slot(key, r)];
      if (c < kMax) ++c;
    }
    if (++additions_ >= sample_) Halve();
  }

  uint32_t Estimate(const BlockKey& key) const {
    uint32_t m = kMax;
    for (int r = 0; r < kRows; ++r) {
      const uint32_t c = counters_[r * width_ + Slot(key, r)];
      if (c < m) m = c;
    }
    return m;
  }

 private:
  static constexpr int kRows = 4;
  static constexpr uint8_t kMax = 15;

  // Keys are SHA-256 outputs: four disjoint 8-byte words are independent hashes already.
  uint64_t Slot(const BlockKey& key, int row) const {
    uint64_t word;
    std::memcpy(&word, key.data() + 8 * row, sizeof(word));
    return word & (width_ - 1);
  }

  void Halve() {
    for (uint8_t& c : counters_) c >>= 1;
    additions_ /= 2;
  }

  uint64_t width_ = 0;
  uint64_t sample_ = 0;
  uint64_t additions_ = 0;
  std::vector<uint8_t> counters_;
};

}  // namespace tierkv

#endif  // TIERKV_CACHE_MANAGER_FREQUENCY_SKETCH_H_
