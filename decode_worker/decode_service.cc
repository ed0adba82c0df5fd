#include "decode_worker/decode_service.h"

#include <algorithm>
#include <deque>
#include <memory>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "prefill_worker/prefill.h"
#include "proto/grpc_status.h"

namespace tierkv {
namespace {

// A server stream fed from the compute thread: Send queues a message and starts the next
// write when none is in flight. Shared between the reactor and the job, so either may
// outlive the other.
class TokenStream : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  // Queues `message`; with `last`, the stream finishes OK once it is written. Ignored after
  // the stream finished (cancelled caller).
  void Send(v1::GenerateResponse message, bool last) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    queue_.push_back(std::move(message));
    last_queued_ = last;
    if (!writing_) WriteNextLocked();
  }

  void Fail(const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
    Finish(ToGrpcStatus(status));
  }

  bool cancelled() {
    absl::MutexLock lock(&mu_);
    return finished_;
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (finished_) return;
    if (!ok) {
      finished_ = true;
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "caller stopped reading"));
      return;
    }
    queue_.pop_front();
    WriteNextLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
    Finish(grpc::Status(grpc::StatusCode::CANCELLED, "generation cancelled"));
  }

  void OnDone() override {
    bool release;
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
      release = !job_holds_;
    }
    if (release) delete this;
  }

  // The job's hold on the stream: the stream is deleted by whichever of OnDone and the
  // job's release comes last.
  void ReleaseFromJob() {
    bool release;
    {
      absl::MutexLock lock(&mu_);
      job_holds_ = false;
      release = done_;
    }
    if (release) delete this;
  }

 private:
  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (queue_.empty()) return;
    if (queue_.size() == 1 && last_queued_) {
      // The last message goes out with the status.
      finished_ = true;
      FinishWithLast();
      return;
    }
    writing_ = true;
    StartWrite(&queue_.front());
  }

  void FinishWithLast() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    StartWriteAndFinish(&queue_.front(), grpc::WriteOptions(), grpc::Status::OK);
  }

  absl::Mutex mu_;
  std::deque<v1::GenerateResponse> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool last_queued_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool job_holds_ ABSL_GUARDED_BY(mu_) = true;
};

void RunGenerate(const Runtime& model, CacheClient* cache, const v1::GenerateRequest& request,
                 TokenStream* stream) {
  const absl::Time start = absl::Now();
  std::span<const uint32_t> tokens(request.tokens().data(), request.tokens().size());
  if (request.max_new_tokens() == 0) {
    stream->Fail(absl::InvalidArgumentError("max_new_tokens must be at least 1"));
    return;
  }
  absl::Status valid = ValidateRequest(model, request.model_id(), tokens, request.sampling(),
                                       /*extra_tokens=*/0);
  if (!valid.ok()) {
    stream->Fail(valid);
    return;
  }
  auto seq = PrepareSequence(model, cache, request.salt(), tokens, /*cache_required=*/false,
                             request.max_new_tokens());
  if (!seq.ok()) {
    stream->Fail(seq.status());
    return;
  }
  kernels::Sampler sampler(ToSamplingParams(request.sampling()));
  const std::vector<uint32_t> stops(request.stop_tokens().begin(), request.stop_tokens().end());
  absl::Duration decode_time;
  double first_token_ms = 0;
  uint32_t token = sampler.Next(seq->logits);
  for (uint32_t produced = 1;; ++produced) {
    std::string reason;
    if (std::find(stops.begin(), stops.end(), token) != stops.end()) {
      reason = "stop";
    } else if (produced >= request.max_new_tokens()) {
      reason = "length";
    } else if (seq->seq->tokens() + 1 >= model.max_positions()) {
      reason = "context";
    }
    v1::GenerateResponse message;
    message.add_tokens(token);
    if (produced == 1) {
      first_token_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
      message.set_cached_tokens(seq->cached_tokens);
      message.set_computed_tokens(seq->computed_tokens);
      message.set_checksum_failures(seq->checksum_failures);
    }
    if (!reason.empty()) {
      message.set_done(true);
      message.set_finish_reason(reason);
      message.set_cached_tokens(seq->cached_tokens);
      message.set_computed_tokens(seq->computed_tokens);
      message.set_checksum_failures(seq->checksum_failures);
      v1::TimingBreakdown* timing = message.mutable_timing();
      timing->set_lookup_ms(absl::ToDoubleMilliseconds(seq->lookup_time));
      timing->set_fetch_ms(absl::ToDoubleMilliseconds(seq->fetch_time));
      timing->set_compute_ms(absl::ToDoubleMilliseconds(seq->compute_time + decode_time));
      timing->set_first_token_ms(first_token_ms);
      timing->set_total_ms(absl::ToDoubleMilliseconds(absl::Now() - start));
      stream->Send(std::move(message), /*last=*/true);
      return;
    }
    stream->Send(std::move(message), /*last=*/false);
    if (stream->cancelled()) return;
    const absl::Time t0 = absl::Now();
    auto logits = model.Decode(token, seq->seq.get());
    decode_time += absl::Now() - t0;
    if (!logits.ok()) {
      stream->Fail(logits.status());
      return;
    }
    token = sampler.Next(*logits);
  }
}

}  // namespace

DecodeServiceImpl::DecodeServiceImpl(const Runtime* model, CacheClient* cache, size_t max_queued)
    : model_(model), cache_(cache), executor_(max_queued) {}

grpc::ServerWriteReactor<v1::GenerateResponse>* DecodeServiceImpl::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  auto* stream = new TokenStream();
  // The job keeps its own copy: a cancelled call may free the request before the job ends.
  absl::Status queued = executor_.Submit([this, copy = *request, stream] {
    if (!stream->cancelled()) RunGenerate(*model_, cache_, copy, stream);
    stream->ReleaseFromJob();
  });
  if (!queued.ok()) {
    stream->Fail(queued);
    stream->ReleaseFromJob();
  }
  return stream;
}

}  // namespace tierkv
