// The prefill worker's sparse pattern file: which sparse attention each (layer, query head) of
// the model runs during a long prefill, its budgets, and when sparse attention is used at all.
// The format is JSON, "tierkv-sparse-patterns/v1", described in docs/sparse-patterns.md.
//
// All functions are pure (no shared state) and may be called from several threads at once.
#ifndef TIERKV_PREFILL_WORKER_SPARSE_PATTERNS_H_
#define TIERKV_PREFILL_WORKER_SPARSE_PATTERNS_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "model/sparse_plan.h"

namespace tierkv {

// The value of the file's "format" key.
inline constexpr std::string_view kSparsePatternsFormat = "tierkv-sparse-patterns/v1";

// Parses a pattern file's text for a model of `num_layers` layers and `num_q_heads` query
// heads per layer.
//
// On success the plan holds min_tokens, max_coverage and the default pattern (the SparsePlan
// and kernels::*Params defaults for what the file leaves out). `layers` is empty when the file
// lists no head at all; otherwise it is num_layers x num_q_heads, each head the file does not
// list holding the default pattern. Budgets of patterns other than a head's own keep their
// struct defaults.
//
// INVALID_ARGUMENT for anything malformed or out of range, with a message that starts with
// the JSON path of the offending value ("layers.5.0.top_blocks: must be at least 1",
// "layers.40: the model has 32 layers"; the root is "(root)", keys other than plain words
// are quoted). Text that is not JSON gives "not valid JSON: <where and why>"; a key repeated
// in one object gives "<path>: duplicate key" (a JSON parser would keep only one of them).
// Also INVALID_ARGUMENT when num_layers or num_q_heads is not positive. Nothing is returned on
// failure: the plan is all of the file or nothing.
absl::StatusOr<SparsePlan> ParseSparsePatterns(std::string_view json, int num_layers,
                                               int num_q_heads);

// Reads the file at `path` and parses it as ParseSparsePatterns does. A file that cannot be
// read gives the errno's code (NOT_FOUND, PERMISSION_DENIED, ...) with `path` in the message;
// a malformed file gives INVALID_ARGUMENT "<path>: <ParseSparsePatterns message>".
absl::StatusOr<SparsePlan> LoadSparsePatterns(const std::string& path, int num_layers,
                                              int num_q_heads);

// The pattern file of `plan` for a model of `num_layers` x `num_q_heads`: indented JSON with
// keys in a fixed order (format, min_tokens, max_coverage, default, layers; layers and heads
// in numeric order; "pattern" first, then the pattern's budgets in struct order), ending in a
// newline. Every budget of a written pattern is written, never those of other patterns.
//
// Heads are read through plan.For(), so a plan whose `layers` is shorter than the model
// means the default for the rest; entries beyond num_layers x num_q_heads are not written.
// "layers" lists the heads whose pattern or budgets differ from the default; when `layers` is
// non-empty but no head differs, it lists head 0 of layer 0 so that the parsed plan is full
// again. Thus ParseSparsePatterns(SparsePatternsToJson(plan)) equals `plan` field for field
// for every plan ParseSparsePatterns returns (more generally: any plan with values in range,
// `layers` empty or full, and each head's other-pattern budgets at their defaults), and
// SparsePatternsToJson of a parsed file's plan is a fixed point of the pair. A plan with
// out-of-range values is written as it is (and the text does not parse).
std::string SparsePatternsToJson(const SparsePlan& plan, int num_layers, int num_q_heads);

}  // namespace tierkv

#endif  // TIERKV_PREFILL_WORKER_SPARSE_PATTERNS_H_
