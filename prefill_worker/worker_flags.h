// Flags and start-up shared by the worker binaries (tierkv-prefill-worker,
// tierkv-decode-worker): which model, which cache manager, where to listen.
#ifndef TIERKV_PREFILL_WORKER_WORKER_FLAGS_H_
#define TIERKV_PREFILL_WORKER_WORKER_FLAGS_H_

#include <memory>
#include <string>

#include <grpcpp/impl/service_type.h>

#include "CLI/CLI.hpp"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "cache_client/cache_client.h"
#include "model/runtime.h"

namespace tierkv {

struct WorkerFlags {
  std::string listen;
  std::string cache = "127.0.0.1:7471";
  std::string model = "builtin:tiny";
  std::string model_id;
  int threads = 0;
  std::string device = "auto";
  std::string port_file;
  // Prefill worker only: a sparse pattern file (docs/sparse-patterns.md); empty: dense.
  std::string sparse_patterns;

  // Registers the flags on `app` with `default_listen` as --listen's default.
  void Register(CLI::App& app, const std::string& default_listen);
  // Registers --sparse-patterns (the prefill worker's).
  void RegisterSparse(CLI::App& app);
  // Loads the model the flags name (with the sparse plan of --sparse-patterns, checked
  // against the model's layers and heads).
  absl::StatusOr<std::unique_ptr<Runtime>> LoadModel() const;
  // A client of the cache manager the flags name.
  absl::StatusOr<std::unique_ptr<CacheClient>> CacheClientFor() const;
};

// The life of a worker binary named `name`: loads the model and the cache client the flags
// name, serves the service `make` builds over them (with health and reflection) until
// SIGINT or SIGTERM, and returns the process's exit status (1 for a failed start, 2 for a
// bad flag).
int RunWorker(const char* name, const WorkerFlags& flags,
              absl::FunctionRef<std::unique_ptr<grpc::Service>(const Runtime*, CacheClient*)> make);

}  // namespace tierkv

#endif  // TIERKV_PREFILL_WORKER_WORKER_FLAGS_H_
