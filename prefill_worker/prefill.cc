#include "prefill_worker/prefill.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/status.h"

namespace tierkv {

absl::Status ValidateRequest(const Runtime& model, const std::string& model_id,
                             std::span<const uint32_t> tokens,
                             const v1::SamplingParams& sampling, int64_t extra_tokens) {
  const ModelSpec& spec = model.spec();
  if (!model_id.empty() && model_id != spec.model_id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "this worker serves model '", spec.model_id, "', not '", model_id,
        "'; send the request to a worker of that model (or leave model_id empty)"));
  }
  if (tokens.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] >= static_cast<uint64_t>(model.vocab_size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token ", i, " is ", tokens[i], ", outside the vocabulary of ", model.vocab_size(),
          " tokens"));
    }
  }
  if (static_cast<int64_t>(tokens.size()) + extra_tokens > model.max_positions()) {
    return absl::OutOfRangeError(absl::StrCat(
        "the prompt has ", tokens.size(), " tokens", extra_tokens > 0 ? " plus " : "",
        extra_tokens > 0 ? absl::StrCat(extra_tokens, " to generate") : "",
        "; the model's context holds ", model.max_positions()));
  }
  return kernels::ValidateSamplingParams(ToSamplingParams(sampling));
}

kernels::SamplingParams ToSamplingParams(const v1::SamplingParams& sampling) {
  kernels::SamplingParams params;
  params.temperature = sampling.temperature();
  params.top_p = sampling.top_p() == 0 ? 1.0f : sampling.top_p();
  params.seed = sampling.seed();
  return params;
}

absl::StatusOr<PreparedSequence> PrepareSequence(const Runtime& model, CacheClient* cache,
                                                 const std::string& salt,
                                                 std::span<const uint32_t> tokens,
                                                 bool cache_required, int64_t extra_tokens) {
  const ModelSpec& spec = model.spec();
  PreparedSequence out;
  const int64_t capacity = std::min<int64_t>(model.max_positions(),
                                             static_cast<int64_t>(tokens.size()) + extra_tokens);
  TIERKV_ASSIGN_OR_RETURN(out.seq, model.NewSequence(capacity));
  absl::Time t0 = absl::Now();
  TIERKV_ASSIGN_OR_RETURN(out.keys, ComputeBlockKeys(spec, salt, tokens));
  // Reuse at most the blocks before the last prompt token.
  const size_t reusable = (tokens.size() - 1) / spec.block_tokens;
  // A cache that cannot be reached fails the call when it is required, and is noted otherwise.
  auto unreachable = [&](const absl::Status& s) -> absl::Status {
    if (cache_required) {
      return absl::Status(s.code(), absl::StrCat("cache manager: ", s.message()));
    }
    out.cache_unavailable = true;
    return absl::OkStatus();
  };
  if (cache != nullptr && reusable > 0 && cache->HasLocalHostTier()) {
    // The host tier (and the GPU tier, if any) is in this process: the sequence reads
    // blocks where they lie, checking their checksums while the bytes move (on the GPU for
    // blocks in GPU memory). Runs of blocks in one tier go in one call each.
    bool bad_block = false;
    size_t bad_at = 0;  // Index in out.keys of the block that failed its checksum.
    auto used = cache->UsePrefixInPlace(
        spec, std::span(out.keys).first(reusable),
        [&](std::span<const std::span<const PayloadPiece>> blocks,
            std::span<const uint64_t> checksums, std::span<const uint8_t> on_gpu) -> size_t {
          size_t taken = 0;
          while (taken < blocks.size()) {
            size_t end = taken + 1;
            while (end < blocks.size() && on_gpu[end] == on_gpu[taken]) ++end;
            const auto run = blocks.subspan(taken, end - taken);
            const auto sums = checksums.subspan(taken, end - taken);
            size_t intact = run.size();
            absl::StatusOr<size_t> kept;
            if (on_gpu[taken]) {
              kept = out.seq->AppendDeviceBlocks(run, sums);
              if (kept.ok()) intact = *kept;
            } else {
              kept = out.seq->AppendBlocksInPlace(run, [&](auto bytes) {
                intact = IntactPrefix(bytes, sums);
                return intact;
              });
            }
            if (!kept.ok()) break;  // Nothing of the run was kept: compute from here.
            if (intact < run.size() && !bad_block) {
              bad_block = true;
              bad_at = taken + intact;
            }
            taken += *kept;
            if (*kept < run.size()) break;
          }
          return taken;
        });
    if (!used.ok()) {
      TIERKV_RETURN_IF_ERROR(unreachable(used.status()));
    } else {
      out.lookup_time = used->lookup_time;
      out.fetch_time = used->use_time;
      out.cached_blocks = std::min<uint32_t>(used->used, static_cast<uint32_t>(reusable));
      // A block whose bytes did not match ends the prefix (a checksum failure). The lease is
      // gone: ask the cache manager to drop it (it checks the bytes itself), so the block
      // this prefill recomputes can replace it instead of being skipped as already cached.
      if (bad_block) {
        ++out.checksum_failures;
        (void)cache->ReportCorrupt(out.keys[bad_at]);  // Best effort: another reader retries.
      }
      if (used->lease_lost && out.cached_blocks > 0) {
        // The blocks may have changed under the read: start over and compute everything.
        out.seq.reset();  // Its device memory goes back before the new one is taken.
        TIERKV_ASSIGN_OR_RETURN(out.seq, model.NewSequence(capacity));
        out.cached_blocks = 0;
      }
    }
  } else if (cache != nullptr && reusable > 0) {
    auto fetched = cache->FetchPrefix(spec, std::span(out.keys).first(reusable));
    if (!fetched.ok()) {
      TIERKV_RETURN_IF_ERROR(unreachable(fetched.status()));
    } else {
      out.lookup_time = fetched->lookup_time;
      out.fetch_time = fetched->fetch_time;
      out.checksum_failures = fetched->checksum_failures;
      if (fetched->checksum_failures > 0 && fetched->blocks.size() < reusable) {
        // The first block not delivered failed its checksum (or vanished): let the cache
        // manager check it and drop it if its bytes are wrong (best effort, as above).
        (void)cache->ReportCorrupt(out.keys[fetched->blocks.size()]);
      }
      // A block of the wrong size cannot be used: the prefix ends before it.
      size_t usable = 0;
      while (usable < fetched->blocks.size() &&
             fetched->blocks[usable].size() == spec.RawBlockBytes()) {
        ++usable;
      }
      out.checksum_failures += usable < fetched->blocks.size() ? 1 : 0;
      absl::Status s = out.seq->AppendBlocks(std::span(fetched->blocks).first(usable));
      if (s.ok()) {
        out.cached_blocks = static_cast<uint32_t>(usable);
      } else {
        ++out.checksum_failures;  // Recompute the whole prompt instead.
      }
    }
  }
  if (out.lookup_time == absl::ZeroDuration()) out.lookup_time = absl::Now() - t0;
  out.cached_tokens = out.cached_blocks * spec.block_tokens;
  out.computed_tokens = tokens.size() - out.cached_tokens;
  t0 = absl::Now();
  TIERKV_ASSIGN_OR_RETURN(out.logits,
                          model.Prefill(tokens.subspan(out.cached_tokens), out.seq.get()));
  out.compute_time = absl::Now() - t0;
  return out;
}

absl::StatusOr<v1::PrefillResponse> RunPrefill(const Runtime& model, CacheClient& cache,
                                               const v1::PrefillRequest& request) {
  const absl::Time start = absl::Now();
  std::span<const uint32_t> tokens(request.tokens().data(), request.tokens().size());
  TIERKV_RETURN_IF_ERROR(
      ValidateRequest(model, request.model_id(), tokens, request.sampling(), 0));
  TIERKV_ASSIGN_OR_RETURN(PreparedSequence seq,
                          PrepareSequence(model, &cache, request.salt(), tokens,
                                          /*cache_required=*/true));
  v1::PrefillResponse response;
  kernels::Sampler sampler(ToSamplingParams(request.sampling()));
  response.set_first_token(sampler.Next(seq.logits));
  const absl::Duration first_token_time = absl::Now() - start;

  // Store every full block not fetched from the cache.
  const ModelSpec& spec = model.spec();
  absl::Time t0 = absl::Now();
  const size_t first = seq.cached_blocks;
  const size_t count = seq.keys.size() - first;
  if (count > 0 && cache.HasLocalHostTier()) {
    // The host tier is in this process: the blocks go straight into the space it reserves.
    auto stored = cache.StoreInPlace(
        spec, seq.keys, first, count,
        [&](std::span<const size_t> indices,
            std::span<const std::span<const PayloadTarget>> targets,
            std::span<uint64_t> checksums) -> absl::Status {
          // One write per run of consecutive blocks (skipped blocks split runs). The
          // checksums come from the sequence's own bytes, not from where they landed.
          for (size_t j = 0; j < indices.size();) {
            size_t k = j + 1;
            while (k < indices.size() && indices[k] == indices[k - 1] + 1) ++k;
            TIERKV_RETURN_IF_ERROR(seq.seq->WriteBlocksInPlace(
                first + indices[j], targets.subspan(j, k - j), checksums.subspan(j, k - j)));
            j = k;
          }
          return absl::OkStatus();
        });
    if (stored.ok()) response.set_stored_blocks(stored->stored);
  } else if (count > 0) {
    auto blocks = seq.seq->ExtractBlocks(first, count);
    if (blocks.ok()) {
      auto stored = cache.Store(spec, seq.keys, first, *blocks);
      if (stored.ok()) response.set_stored_blocks(stored->stored);
    }
  }
  const absl::Duration store_time = absl::Now() - t0;

  response.set_cached_tokens(seq.cached_tokens);
  response.set_computed_tokens(seq.computed_tokens);
  response.set_checksum_failures(seq.checksum_failures);
  v1::TimingBreakdown* timing = response.mutable_timing();
  timing->set_lookup_ms(absl::ToDoubleMilliseconds(seq.lookup_time));
  timing->set_fetch_ms(absl::ToDoubleMilliseconds(seq.fetch_time));
  timing->set_compute_ms(absl::ToDoubleMilliseconds(seq.compute_time));
  timing->set_store_ms(absl::ToDoubleMilliseconds(store_time));
  timing->set_first_token_ms(absl::ToDoubleMilliseconds(first_token_time));
  timing->set_total_ms(absl::ToDoubleMilliseconds(absl::Now() - start));
  ModelSpecToProto(spec, response.mutable_model());
  return response;
}

}  // namespace tierkv
