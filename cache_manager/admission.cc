#include "cache_manager/admission.h"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <string>

#include "absl/strings/str_cat.h"

namespace tierkv {
namespace {

// One key in this many feeds the miniatures; they hold this fraction of the tier.
constexpr uint64_t kSampleRate = 16;
// Decide (and halve the miniatures' hit counts) every this many sampled references per
// miniature block.
constexpr uint64_t kDecisionPeriod = 2;
constexpr uint64_t kMinMiniature = 8;
// The rules kAuto chooses among, most admitting first: all; second use or at most this many
// new blocks in the request; second use only.
constexpr uint32_t kAutoRules[] = {AdmissionController::kAdmitAll, 64, 16, 4, 0};
// Default sketch width: sixteen counters per page, within these bounds. The sketch must
// remember lookups for longer than blocks take to come back, which depends on the traffic
// more than on the tier: below 1M counters a small tier's sketch saturated on the
// conversation trace and let one-off blocks in (docs/cache-policy.md).
constexpr uint64_t kMinSketchWidth = uint64_t{1} << 20;
constexpr uint64_t kMaxSketchWidth = uint64_t{1} << 22;

uint64_t Word(const BlockKey& key, int i) {
  uint64_t w;
  std::memcpy(&w, key.data() + 8 * i, sizeof(w));
  return w;
}

}  // namespace

AdmissionController::AdmissionController(Mode mode, uint64_t capacity_pages,
                                         uint64_t sketch_width)
    : mode_(mode),
      capacity_pages_(std::max<uint64_t>(1, capacity_pages)),
      sketch_(sketch_width != 0
                  ? sketch_width
                  : std::clamp<uint64_t>(16 * capacity_pages_, kMinSketchWidth, kMaxSketchWidth)) {
  switch (mode_) {
    case Mode::kAll:
      rules_.emplace_back(kAdmitAll);
      break;
    case Mode::kSecondUse:
      rules_.emplace_back(0);
      break;
    case Mode::kAuto:
      for (uint32_t rule : kAutoRules) rules_.emplace_back(rule);
      static_assert(std::size(kAutoRules) <= kMaxRules);
      break;
  }
}

void AdmissionController::Unlink(size_t r, uint32_t e) {
  Entry& x = entries_[e];
  Miniature& m = rules_[r];
  if (x.prev[r] != kNone) entries_[x.prev[r]].next[r] = x.next[r];
  else m.head = x.next[r];
  if (x.next[r] != kNone) entries_[x.next[r]].prev[r] = x.prev[r];
  else m.tail = x.prev[r];
}

void AdmissionController::PushFront(size_t r, uint32_t e) {
  Entry& x = entries_[e];
  Miniature& m = rules_[r];
  x.prev[r] = kNone;
  x.next[r] = m.head;
  if (m.head != kNone) entries_[m.head].prev[r] = e;
  m.head = e;
  if (m.tail == kNone) m.tail = e;
}

void AdmissionController::Flush(size_t r) {
  Miniature& m = rules_[r];
  const uint32_t first = m.run_head;
  const uint32_t last = m.run_tail;
  if (first == kNone) return;
  m.run_head = m.run_tail = kNone;
  if (m.head == first) return;  // Already in front.
  // Cut the segment [first, last] out and put it before the head.
  const uint32_t before = entries_[first].prev[r];  // Not kNone: `first` is not the head.
  const uint32_t after = entries_[last].next[r];
  entries_[before].next[r] = after;
  if (after != kNone) entries_[after].prev[r] = before;
  else m.tail = before;
  entries_[first].prev[r] = kNone;
  entries_[last].next[r] = m.head;
  entries_[m.head].prev[r] = last;
  m.head = first;
}

void AdmissionController::Reference(const BlockKey& full_key, uint32_t pending,
                                    uint64_t missed, uint64_t capacity) {
  const uint64_t key = Word(full_key, 0);
  uint32_t seen = UINT32_MAX;  // Not yet estimated.
  uint32_t e = kNone;
  if (next_hint_ != kNone && entries_[next_hint_].in != 0 && entries_[next_hint_].key == key) {
    e = next_hint_;
  } else {
    auto it = entry_of_.find(key);
    if (it != entry_of_.end()) e = it->second;
  }
  for (size_t r = 0; r < rules_.size(); ++r) {
    Miniature& m = rules_[r];
    const uint8_t bit = static_cast<uint8_t>(1u << r);
    if (e != kNone && (entries_[e].in & bit) != 0) {
      m.hits += 1;
      if (!shortcuts_) {
        if (m.head != e) {
          Unlink(r, e);
          PushFront(r, e);
        }
        continue;
      }
      // Lists do not move while a run is pending: `e` lies head-side of the run, next to
      // it, exactly when its successor is the run's head.
      if (m.run_head != kNone && entries_[e].next[r] == m.run_head) {
        m.run_head = e;
      } else {
        Flush(r);
        m.run_head = m.run_tail = e;
      }
      continue;
    }
    Flush(r);
    if (m.max_new_blocks != kAdmitAll && missed > m.max_new_blocks) {
      if (seen == UINT32_MAX) {
        seen = std::min<uint32_t>(FrequencySketch::kMax, sketch_.Estimate(full_key) + pending);
      }
      if (seen < 2) continue;
    }
    if (e == kNone) {
      if (free_entries_.empty()) {
        e = static_cast<uint32_t>(entries_.size());
        entries_.emplace_back();
      } else {
        e = free_entries_.back();
        free_entries_.pop_back();
      }
      entries_[e].key = key;
      entries_[e].in = 0;
      entry_of_.emplace(key, e);
    }
    PushFront(r, e);
    entries_[e].in |= bit;
    ++m.size;
    while (m.size > capacity) {  // The tail is never `e`: capacity is at least kMinMiniature.
      const uint32_t last = m.tail;
      Unlink(r, last);
      --m.size;
      entries_[last].in &= static_cast<uint8_t>(~bit);
      if (entries_[last].in == 0) {
        entry_of_.erase(entries_[last].key);
        free_entries_.push_back(last);
      }
    }
  }
  // The next key of a chain referenced in the same order last time lies head-side of this
  // one (while this one has not moved: in a pending run).
  next_hint_ = shortcuts_ && e != kNone && (entries_[e].in & 1) != 0 ? entries_[e].prev[0] : kNone;
}

std::vector<uint64_t> AdmissionController::MiniatureForTest(size_t rule) const {
  std::vector<uint64_t> keys;
  for (uint32_t e = rules_[rule].head; e != kNone; e = entries_[e].next[rule]) {
    keys.push_back(entries_[e].key);
  }
  return keys;
}

uint64_t AdmissionController::MiniatureCapacity() const {
  const double blocks = static_cast<double>(capacity_pages_) / pages_per_block_;
  return std::max<uint64_t>(kMinMiniature, static_cast<uint64_t>(blocks) / kSampleRate);
}

void AdmissionController::OnLookup(const std::vector<std::string_view>& keys, uint64_t found) {
  if (mode_ == Mode::kAll) return;
  std::string packed;
  packed.reserve(keys.size() * kDigestBytes);
  for (std::string_view key : keys) packed.append(key);
  OnLookup(packed, found);
}

void AdmissionController::OnLookup(std::string_view packed_keys, uint64_t found) {
  if (mode_ == Mode::kAll) return;
  found = std::min<uint64_t>(found, packed_keys.size() / kDigestBytes);
  // As the index calls it: each found key's block counted this use (one pending).
  sampled_found_.clear();
  for (size_t i = 0; i < found; ++i) {
    BlockKey key;
    std::memcpy(key.data(), packed_keys.data() + i * kDigestBytes, kDigestBytes);
    if (Sampled(key)) sampled_found_.push_back({static_cast<uint32_t>(i), 1});
  }
  OnLookup(packed_keys, found, sampled_found_);
}

void AdmissionController::OnLookup(std::string_view packed_keys, uint64_t found,
                                   std::span<const SampledUse> sampled_found) {
  if (mode_ == Mode::kAll) return;
  const char* const packed = packed_keys.data();
  const size_t n = packed_keys.size() / kDigestBytes;
  found = std::min<uint64_t>(found, n);
  const uint64_t missed = n - found;
  auto key_at = [packed](size_t i) {
    BlockKey key;
    std::memcpy(key.data(), packed + i * kDigestBytes, kDigestBytes);
    return key;
  };
  // Each key's counters are one random line of a sketch larger than the nearer caches:
  // fetch the lines a few keys ahead.
  constexpr size_t kAhead = 32;
  // Found keys: their blocks count them.
  sketch_.Advance(found);
  // Missed keys.
  for (size_t i = found; i < std::min(n, found + kAhead); ++i) sketch_.Prefetch(key_at(i));
  for (size_t i = found; i < n; ++i) {
    if (i + kAhead < n) sketch_.Prefetch(key_at(i + kAhead));
    sketch_.Add(key_at(i));
  }
  epoch_.store(sketch_.halvings(), std::memory_order_relaxed);
  if (mode_ != Mode::kAuto) return;
  const uint64_t capacity = MiniatureCapacity();
  // Decide whenever the count of sampled references reaches a multiple of the period.
  const uint64_t period = kDecisionPeriod * capacity;
  uint64_t next_decision = (sampled_ / period + 1) * period;
  auto reference = [&](const BlockKey& key, uint32_t pending) {
    Reference(key, pending, missed, capacity);
    if (++sampled_ == next_decision) {
      next_decision += period;
      size_t best = 0;
      for (size_t r = 1; r < rules_.size(); ++r) {
        if (rules_[r].hits > rules_[best].hits) best = r;
      }
      if (best != rule_now_) ++switches_;
      rule_now_ = best;
      for (Miniature& m : rules_) m.hits /= 2;
    }
  };
  for (const SampledUse& u : sampled_found) {
    if (u.index < found) reference(key_at(u.index), u.pending);
  }
  for (size_t i = found; i < n; ++i) {
    const BlockKey key = key_at(i);
    if (Sampled(key)) reference(key, 0);
  }
  for (size_t r = 0; r < rules_.size(); ++r) Flush(r);
  next_hint_ = kNone;
}

void AdmissionController::OnLeave(const BlockKey& key, uint32_t uses) {
  if (mode_ == Mode::kAll || uses == 0) return;
  sketch_.AddCounted(key, uses);
}

void AdmissionController::NoteBlockPages(uint64_t pages) {
  const double p = static_cast<double>(std::max<uint64_t>(1, pages));
  pages_per_block_ = noted_ ? 0.99 * pages_per_block_ + 0.01 * p : p;
  noted_ = true;
}

bool AdmissionController::Admit(const BlockKey& key, uint64_t new_blocks) const {
  const uint32_t rule = rule_now();
  if (rule == kAdmitAll || new_blocks <= rule) return true;
  return sketch_.Estimate(key) >= 2;
}

std::string AdmissionController::Describe() const {
  const uint32_t rule = rule_now();
  const std::string now = rule == kAdmitAll ? "all"
                          : rule == 0       ? "second-use"
                                            : absl::StrCat("second-use or up to ", rule,
                                                           " new blocks");
  return mode_ == Mode::kAuto ? absl::StrCat("auto (now ", now, ")") : now;
}

}  // namespace tierkv
