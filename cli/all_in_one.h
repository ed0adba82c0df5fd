// Every role of tierkv in one process on one gRPC port: the cache manager (CacheService,
// AdminService), a prefill worker and a decode worker sharing one model. What `tierkv up`
// runs, and what end-to-end tests start in-process.
//
// Thread-safe.
#ifndef TIERKV_CLI_ALL_IN_ONE_H_
#define TIERKV_CLI_ALL_IN_ONE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "cache_manager/server.h"
#include "model/runtime.h"

namespace tierkv {

struct AllInOneOptions {
  CacheManagerOptions cache;
  // "builtin:tiny" or a Hugging Face model directory.
  std::string model = "builtin:tiny";
  // Device ("auto": the GPU when one is usable), CPU threads, model_id.
  RuntimeOptions runtime;
  // Sparse attention pattern file of the prefill worker (docs/sparse-patterns.md); empty:
  // dense attention everywhere. On the GPU only vertical_slash (one budget) and dense heads.
  std::string sparse_patterns;
  // GPU tier of the cache manager, on the model's GPU (nothing on the CPU runtime): new
  // blocks of the prefill worker stay there and are demoted to host memory for room. 0: no
  // GPU tier. When the GPU cannot give it, tierkv runs without one and says so.
  uint64_t gpu_capacity_bytes = 4ull << 30;
};

class AllInOne {
 public:
  // Loads the model, then serves every role on options.cache.listen_address (port 0: a
  // free port). Errors of Runtime::Load and CacheManagerServer::Start.
  static absl::StatusOr<std::unique_ptr<AllInOne>> Start(const AllInOneOptions& options);
  virtual ~AllInOne() = default;

  virtual std::string address() const = 0;
  virtual int port() const = 0;
  virtual const Runtime& model() const = 0;
  virtual CacheManagerServer& cache_manager() = 0;
  // The GPU tier's size (0 without one).
  virtual uint64_t gpu_tier_bytes() const = 0;
  // Stops serving; idempotent.
  virtual void Shutdown() = 0;
};

}  // namespace tierkv

#endif  // TIERKV_CLI_ALL_IN_ONE_H_
