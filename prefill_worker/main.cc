// tierkv-prefill-worker: serves PrefillService for one model, storing KV in a cache manager.
#include "CLI/CLI.hpp"
#include "core/process.h"
#include "prefill_worker/prefill_service.h"
#include "prefill_worker/worker_flags.h"

int main(int argc, char** argv) {
  tierkv::DisableMutexDeadlockDetection();
  CLI::App app{"tierkv prefill worker: prompts to KV cache and a first token"};
  tierkv::WorkerFlags flags;
  flags.Register(app, "127.0.0.1:7472");
  flags.RegisterSparse(app);
  CLI11_PARSE(app, argc, argv);
  return tierkv::RunWorker("tierkv-prefill-worker", flags,
                           [](const tierkv::Runtime* model, tierkv::CacheClient* cache) {
                             return std::make_unique<tierkv::PrefillServiceImpl>(model, cache);
                           });
}
