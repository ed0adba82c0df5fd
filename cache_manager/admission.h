// Which new blocks may displace cached ones when the host tier is full.
//
// kAll admits every block (the cache is then plain prefix-aware LRU). kSecondUse admits only
// blocks that Lookups asked for at least twice lately (a count-min sketch), so one-off
// prompts cannot flush reused prefixes; it wins when the tier is small against the traffic's
// reuse distances and loses when the tier is big enough to keep new blocks until their first
// reuse. Between the two lie the short-request rules: second use, or a request that brings
// at most N new blocks (its Lookup missed at most N keys), so that short turns come in at
// once and long one-off prompts only on second use. kAuto picks among all of them by
// measurement: one miniature LRU cache per rule simulates a 1-in-16 sample of the keys
// looked up (at a sixteenth of the tier's capacity in blocks), and the rule whose miniature
// hit most lately governs admission (docs/cache-policy.md).
//
// Not thread-safe: the block index serializes its calls (its admission mutex).
#ifndef TIERKV_CACHE_MANAGER_ADMISSION_H_
#define TIERKV_CACHE_MANAGER_ADMISSION_H_

#include <atomic>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <string>
#include <span>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "cache_manager/frequency_sketch.h"
#include "core/block_key.h"

namespace tierkv {

// A cached block's uses since it entered the cache (or since they were last aged), halved
// with the sketch, for AdmissionController::OnLeave. Kept in the block itself.
struct BlockUses {
  uint8_t count = 0;
  uint16_t epoch = 0;  // The sketch's epoch (low bits) `count` is aged to.

  // Ages `count` to `now` (one halving per epoch since). A `now` older than `epoch` (a
  // walk that read the epoch before another Lookup's newer one stamped this block) ages
  // nothing.
  uint32_t AgedTo(uint64_t now) const {
    const int16_t age = Age(now);
    return age <= 0 ? count : age >= 8 ? 0 : count >> age;
  }
  // The epoch (low bits) `count` is aged to.
  uint16_t aged_epoch() const { return epoch; }
  // Add(now), `times` times over.
  void AddTimes(uint64_t now, uint64_t times) {
    if (times == 0) return;
    Add(now);
    // Nothing left to age: each further Add counts one, up to the cap.
    count = static_cast<uint8_t>(
        std::min<uint64_t>(FrequencySketch::kMax, count + std::min<uint64_t>(times - 1, 255)));
  }
  void Add(uint64_t now) {
    if (Age(now) <= 0) {  // Nothing to age (the common case); never move epoch back.
      count += count < FrequencySketch::kMax;
      return;
    }
    count = static_cast<uint8_t>(std::min<uint32_t>(FrequencySketch::kMax, AgedTo(now) + 1));
    epoch = static_cast<uint16_t>(now);
  }

 private:
  int16_t Age(uint64_t now) const {
    return static_cast<int16_t>(static_cast<uint16_t>(static_cast<uint16_t>(now) - epoch));
  }
};

class AdmissionController {
 public:
  enum class Mode { kAll, kSecondUse, kAuto };

  // `capacity_pages`: the host tier's size in pages; `sketch_width`: counters per sketch row
  // (0: sixteen per page, at least 1M and at most 4M: the sketch must remember longer than
  // blocks take to come back).
  AdmissionController(Mode mode, uint64_t capacity_pages, uint64_t sketch_width);

  // A rule: admit blocks asked for twice lately, or all blocks of a request that brings at
  // most `max_new_blocks` new ones. kAdmitAll: every block; 0: second use only.
  static constexpr uint32_t kAdmitAll = UINT32_MAX;

  // The keys of one Lookup, in chain order, of which the first `found` were found: counted
  // as asked for, and fed to the miniatures.
  //
  // Every key a Lookup asks for counts, but the sketch counts only the missed ones at once.
  // Found blocks count their own uses instead (BlockUses, in a line the Lookup writes
  // anyway) and hand them over with OnLeave when they leave the cache: the sketch is read
  // only for keys that are not cached (Admit) and for sampled keys (the miniatures, which
  // add a found block's pending uses to it), so the estimates stay what counting every
  // key would give, while a long cached prefix costs no sketch line per block. The
  // halving clock moves for every key.
  void OnLookup(std::string_view packed_keys, uint64_t found);
  // The same for a caller whose found blocks count all their uses (BlockUses), with the
  // sampled ones among them listed in order: each by its place in `packed_keys`, with its
  // uses not yet in the sketch (this one included).
  struct SampledUse {
    uint32_t index = 0;
    uint8_t pending = 0;
  };
  void OnLookup(std::string_view packed_keys, uint64_t found,
                std::span<const SampledUse> sampled_found);
  // The same with the keys as views (tests).
  void OnLookup(const std::vector<std::string_view>& keys, uint64_t found);
  // A cached block leaves: its uses counted since (BlockUses) go into the sketch.
  void OnLeave(const BlockKey& key, uint32_t uses);

  // Keys that always go to the sketch and the miniatures: one in 16, by the key's bits.
  static bool Sampled(const BlockKey& key) {
    // Keys are SHA-256 outputs: the top bits of the first word are a fair sample.
    uint64_t first;
    std::memcpy(&first, key.data(), sizeof(first));
    return first >> 60 == 0;
  }
  // The sketch's halving count, readable without the controller's lock (BlockUses ages
  // with it).
  uint64_t epoch() const { return epoch_.load(std::memory_order_relaxed); }
  // A block of `pages` pages was allocated: sizes the miniatures in blocks.
  void NoteBlockPages(uint64_t pages);
  // Whether `key`, one of `new_blocks` blocks one Allocate brings, may displace cached
  // blocks now.
  bool Admit(const BlockKey& key, uint64_t new_blocks) const;

  Mode mode() const { return mode_; }
  // The rule in force: kAdmitAll (always for kAll), 0 for second use only (always for
  // kSecondUse), or the most new blocks a request may bring to come in without second use.
  uint32_t rule_now() const { return rules_[rule_now_].max_new_blocks; }
  uint64_t switches() const { return switches_; }
  // "all", "second-use", or "auto (now all)" / "auto (now second-use)" /
  // "auto (now second-use or up to 16 new blocks)".
  std::string Describe() const;

  // Tests: rule `rule`'s miniature, most recent first (the first word of each key), and its
  // hit count; and a controller that moves every hit on its own and looks every key up
  // (the plain LRU the shortcuts must agree with).
  std::vector<uint64_t> MiniatureForTest(size_t rule) const;
  double MiniatureHitsForTest(size_t rule) const { return rules_[rule].hits; }
  void DisableShortcutsForTest() { shortcuts_ = false; }

 private:
  // The miniatures: one LRU list of sampled keys per rule, over entries shared by all
  // rules, so that a reference looks its key up once, not once per rule, and the lists'
  // links lie in one array rather than in a heap node per key and rule.
  static constexpr size_t kMaxRules = 5;
  static constexpr uint32_t kNone = UINT32_MAX;
  struct Miniature {
    explicit Miniature(uint32_t max_new_blocks) : max_new_blocks(max_new_blocks) {}
    uint32_t max_new_blocks;
    double hits = 0;
    uint32_t head = kNone;  // Most recent.
    uint32_t tail = kNone;
    uint64_t size = 0;
    // The pending run (Reference): the segment from run_head to run_tail, each entry
    // head-side of the next, goes to the front at Flush; kNone when there is none.
    uint32_t run_head = kNone;
    uint32_t run_tail = kNone;
  };
  struct Entry {
    uint64_t key = 0;
    uint32_t prev[kMaxRules];
    uint32_t next[kMaxRules];
    uint8_t in = 0;  // Bit r: in rule r's miniature.
  };
  // A reference to a sampled key under every rule.
  // `seen` is computed only when a rule has to decide on admitting the key.
  //
  // Two shortcuts keep a long cached prefix cheap, where most references are hits on keys
  // the previous Lookup of the prefix referenced in the same order:
  // - Hits on keys that lie side by side in a miniature, each head-side of the one referenced
  //   before it, form a run that moves to the front as one segment when it ends (Flush):
  //   moving each to the front in turn gives the same order. A run is pending only while
  //   nothing else touches that miniature.
  // - The key referenced after a key of the first miniature is looked for first in the entry
  //   head-side of it there, by its key, before the hash table.
  void Reference(const BlockKey& key, uint32_t pending, uint64_t missed, uint64_t capacity);
  // Moves rule `r`'s pending run to the front.
  void Flush(size_t rule);
  void Unlink(size_t rule, uint32_t e);
  void PushFront(size_t rule, uint32_t e);

  uint64_t MiniatureCapacity() const;

  const Mode mode_;
  const uint64_t capacity_pages_;
  FrequencySketch sketch_;
  double pages_per_block_ = 1;  // Moving average over allocations.
  bool noted_ = false;
  // kAll and kSecondUse: their one rule. kAuto: every rule, kAdmitAll first (ties go to
  // the rule admitting more).
  std::vector<Miniature> rules_;
  std::vector<Entry> entries_;
  std::vector<uint32_t> free_entries_;
  absl::flat_hash_map<uint64_t, uint32_t> entry_of_;  // Sampled key -> entries_ index.
  std::atomic<uint64_t> epoch_{0};
  std::vector<SampledUse> sampled_found_;  // OnLookup's scratch.
  // Where Reference looks for the next key's entry first (kNone: nowhere).
  uint32_t next_hint_ = kNone;
  bool shortcuts_ = true;
  size_t rule_now_ = 0;
  uint64_t sampled_ = 0;
  uint64_t switches_ = 0;
};

}  // namespace tierkv

#endif  // TIERKV_CACHE_MANAGER_ADMISSION_H_
