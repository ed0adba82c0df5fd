#include "prefill_worker/worker_flags.h"

#include <unistd.h>

#include <iostream>

#include "core/process.h"
#include "core/status.h"
#include "model/model.h"
#include "prefill_worker/sparse_patterns.h"
#include "proto/grpc_server.h"

namespace tierkv {

void WorkerFlags::Register(CLI::App& app, const std::string& default_listen) {
  listen = default_listen;
  app.add_option("--listen", listen, "host:port to serve on (port 0: any free port)")
      ->capture_default_str();
  app.add_option("--cache", cache, "the cache manager's host:port")->capture_default_str();
  app.add_option("--model", model, "builtin:tiny, or a Hugging Face model directory")
      ->capture_default_str();
  app.add_option("--model-id", model_id, "model_id of the spec (default: builtin:tiny or the "
                                         "directory's name)");
  app.add_option("--threads", threads, "CPU compute threads (0: one per core)")
      ->capture_default_str();
  app.add_option("--device", device,
                 "where the model runs: auto (the GPU when one is usable), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--port-file", port_file, "write the bound port to this file once serving");
}

void WorkerFlags::RegisterSparse(CLI::App& app) {
  app.add_option("--sparse-patterns", sparse_patterns,
                 "sparse attention pattern file for long prefills (docs/sparse-patterns.md)");
}

absl::StatusOr<std::unique_ptr<Runtime>> WorkerFlags::LoadModel() const {
  RuntimeOptions options;
  options.device = device;
  options.num_threads = threads;
  options.model_id = model_id;
  if (!sparse_patterns.empty()) {
    TIERKV_ASSIGN_OR_RETURN(ModelConfig config, ModelConfigOf(model));
    TIERKV_ASSIGN_OR_RETURN(SparsePlan plan,
                            LoadSparsePatterns(sparse_patterns, static_cast<int>(config.num_layers),
                                               static_cast<int>(config.num_heads)));
    options.sparse_plan = std::make_shared<const SparsePlan>(std::move(plan));
  }
  return Runtime::Load(model, options);
}

absl::StatusOr<std::unique_ptr<CacheClient>> WorkerFlags::CacheClientFor() const {
  CacheClientOptions options;
  options.address = cache;
  return CacheClient::Create(options);
}

int RunWorker(const char* name, const WorkerFlags& flags,
              absl::FunctionRef<std::unique_ptr<grpc::Service>(const Runtime*, CacheClient*)> make) {
  BlockShutdownSignals();
  auto model = flags.LoadModel();
  if (!model.ok()) {
    std::cerr << name << ": --model " << flags.model << ": " << model.status() << "\n";
    return 1;
  }
  auto cache = flags.CacheClientFor();
  if (!cache.ok()) {
    std::cerr << name << ": --cache: " << cache.status().message() << "\n";
    return 2;
  }
  std::unique_ptr<grpc::Service> service = make(model->get(), cache->get());
  grpc::Service* services[] = {service.get()};
  auto server = StartGrpcServer(flags.listen, services);
  if (!server.ok()) {
    std::cerr << name << ": " << server.status().message() << "\n";
    return 1;
  }
  std::cout << name << " serving " << (*model)->spec().model_id << " on "
            << kernels::DeviceName((*model)->device()) << " at " << server->address
            << ", cache manager " << flags.cache << " (pid " << getpid() << ")" << std::endl;
  if (absl::Status s = WritePortFile(flags.port_file, server->port); !s.ok()) {
    std::cerr << name << ": --port-file: " << s.message() << "\n";
    return 1;
  }
  WaitForShutdownSignal();
  server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}

}  // namespace tierkv
