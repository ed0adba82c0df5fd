// How often block keys were asked for lately: a count-min sketch of small counters, halved
// every `sample` increments so that old popularity fades. Estimates never undercount
// (before a halving) and overcount only through collisions, which the width keeps rare.
// A key's four counters share one 64-byte line (a blocked sketch), so counting a key costs
// one cache miss, not four.
//
// Not thread-safe: the block index serializes its calls (its admission mutex).
#ifndef TIERKV_CACHE_MANAGER_FREQUENCY_SKETCH_H_
#define TIERKV_CACHE_MANAGER_FREQUENCY_SKETCH_H_

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "core/block_key.h"

namespace tierkv {

class FrequencySketch {
 public:
  // About `width` counters per hash (rounded up to a power of two, at least 64).
  explicit FrequencySketch(uint64_t width) {
    width_ = 64;
    while (width_ < width) width_ <<= 1;
    lines_ = kRows * width_ / kLine;
    // A sketch of 2 MiB and more is read at random: back it with huge pages where the
    // kernel allows (one TLB entry instead of 512), aligned so that it can be.
    const size_t bytes = lines_ * kLine;
    const size_t align = bytes >= kHugePage ? kHugePage : kLine;
    counters_.reset(static_cast<uint8_t*>(
        std::aligned_alloc(align, (bytes + align - 1) / align * align)));
    if (align == kHugePage) madvise(counters_.get(), bytes, MADV_HUGEPAGE);
    std::memset(counters_.get(), 0, bytes);
    sample_ = 10 * width_;
  }

  void Add(const BlockKey& key) {
    uint8_t* line = counters_.get() + LineOffset(key);
    for (int r = 0; r < kRows; ++r) {
      uint8_t& c = line[Position(key, r)];
      if (c < kMax) ++c;
    }
    if (++additions_ >= sample_) Halve();
  }

  // Adds `count` uses of `key` counted elsewhere meanwhile: the counters only, since Advance
  // already moved the halving clock for them.
  void AddCounted(const BlockKey& key, uint32_t count) {
    uint8_t* line = counters_.get() + LineOffset(key);
    for (int r = 0; r < kRows; ++r) {
      uint8_t& c = line[Position(key, r)];
      c = static_cast<uint8_t>(std::min<uint32_t>(kMax, c + count));
    }
  }

  // Moves the halving clock by `count` uses that are counted elsewhere for now (see
  // AdmissionController::OnLookup).
  void Advance(uint64_t count) {
    additions_ += count;
    if (additions_ >= sample_) Halve();
  }

  // How many times the counters were halved so far.
  uint64_t halvings() const { return halvings_; }

  // A counter's ceiling.
  static constexpr uint8_t kMax = 15;

  // Starts fetching `key`'s counters into the cache (Add and Estimate read them).
  void Prefetch(const BlockKey& key) const {
    __builtin_prefetch(counters_.get() + LineOffset(key), 1, 3);
  }

  uint32_t Estimate(const BlockKey& key) const {
    const uint8_t* line = counters_.get() + LineOffset(key);
    uint32_t m = kMax;
    for (int r = 0; r < kRows; ++r) {
      const uint32_t c = line[Position(key, r)];
      if (c < m) m = c;
    }
    return m;
  }

 private:
  static constexpr int kRows = 4;
  static constexpr uint64_t kLine = 64;
  static constexpr size_t kHugePage = 2 << 20;
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };

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
    // Eight counters a step: each byte halved, no bit carried into its neighbour.
    uint8_t* const bytes = counters_.get();
    for (size_t i = 0; i < lines_ * kLine; i += sizeof(uint64_t)) {
      uint64_t w;
      std::memcpy(&w, bytes + i, sizeof(w));
      w = (w >> 1) & 0x7f7f7f7f7f7f7f7full;
      std::memcpy(bytes + i, &w, sizeof(w));
    }
    additions_ /= 2;
    ++halvings_;
  }

  uint64_t width_ = 0;
  uint64_t lines_ = 0;
  uint64_t sample_ = 0;
  uint64_t additions_ = 0;
  uint64_t halvings_ = 0;
  std::unique_ptr<uint8_t[], Free> counters_;
};

}  // namespace tierkv

#endif  // TIERKV_CACHE_MANAGER_FREQUENCY_SKETCH_H_
