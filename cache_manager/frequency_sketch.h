// How often block keys were asked for lately: a count-min sketch of small counters, halved
// every `sample` increments so that old popularity fades. Estimates never undercount
// (before a halving) and overcount only through collisions, which the width keeps rare.
// A key's four counters share one 64-byte line (a blocked sketch), so counting a key costs
// one cache miss, not four.
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
  // About `width` counters per hash (rounded up to a power of two, at least 64).
  explicit FrequencySketch(uint64_t width) {
    width_ = 64;
    while (width_ < width) width_ <<= 1;
    lines_ = kRows * width_ / kLine;
    counters_.assign(lines_ * kLine, 0);
    sample_ = 10 * width_;
  }

  void Add(const BlockKey& key) {
    uint8_t* line = counters_.data() + LineOffset(key);
    for (int r = 0; r < kRows; ++r) {
      uint8_t& c = line[Position(key, r)];
      if (c < kMax) ++c;
    }
    if (++additions_ >= sample_) Halve();
  }

  uint32_t Estimate(const BlockKey& key) const {
    const uint8_t* line = counters_.data() + LineOffset(key);
    uint32_t m = kMax;
    for (int r = 0; r < kRows; ++r) {
      const uint32_t c = line[Position(key, r)];
      if (c < m) m = c;
    }
    return m;
  }

 private:
  static constexpr int kRows = 4;
  static constexpr uint8_t kMax = 15;
  static constexpr uint64_t kLine = 64;

  // Keys are SHA-256 outputs: the first word picks the line, the top bits of four disjoint
  // words the counters within it.
  uint64_t LineOffset(const BlockKey& key) const {
    uint64_t word;
    std::memcpy(&word, key.data(), sizeof(word));
    return (word & (lines_ - 1)) * kLine;  // lines_ is a power of two.
  }
  static uint64_t Position(const BlockKey& key, int row) {
    uint64_t word;
    std::memcpy(&word, key.data() + 8 * row, sizeof(word));
    return word >> 58;
  }

  void Halve() {
    for (uint8_t& c : counters_) c >>= 1;
    additions_ /= 2;
  }

  uint64_t width_ = 0;
  uint64_t lines_ = 0;
  uint64_t sample_ = 0;
  uint64_t additions_ = 0;
  std::vector<uint8_t> counters_;
};

}  // namespace tierkv

#endif  // TIERKV_CACHE_MANAGER_FREQUENCY_SKETCH_H_
