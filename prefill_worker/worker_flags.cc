#include "prefill_worker/worker_flags.h"

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
  app.add_option("--threads", threads, "compute threads (0: one per core)")->capture_default_str();
  app.add_option("--port-file", port_file, "write the bound port to this file once serving");
}

absl::StatusOr<std::unique_ptr<Model>> WorkerFlags::LoadModel() const {
  ModelOptions options;
  options.num_threads = threads;
  options.model_id = model_id;
  return Model::Load(model, options);
}

absl::StatusOr<std::unique_ptr<CacheClient>> WorkerFlags::CacheClientFor() const {
  CacheClientOptions options;
  options.address = cache;
  return CacheClient::Create(options);
}

}  // namespace tierkv
