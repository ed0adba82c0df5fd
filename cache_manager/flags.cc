#include "cache_manager/flags.h"


#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "core/units.h"

namespace tierkv {
namespace {

absl::Status ParseDurationFlag(const char* name, const std::string& text, absl::Duration* out) {
  if (!absl::ParseDuration(text, out) || *out <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", name, " '", text, "' is not a positive duration (try 30s, 500ms, 2m)"));
  }
  return absl::OkStatus();
}

absl::Status ParseBytesFlag(const char* name, const std::string& text, uint64_t* out) {
  auto v = ParseBytes(text);
  if (!v.ok()) return absl::InvalidArgumentError(absl::StrCat("--", name, ": ", v.status().message()));
  *out = *v;
  return absl::OkStatus();
}

}  // namespace

void CacheManagerFlags::Register(CLI::App& app) {
  app.add_option("--listen", listen, "host:port to serve on (port 0: any free port)")
      ->capture_default_str();
  app.add_option("--host-capacity", host_capacity, "host tier size, e.g. 1GiB")
      ->capture_default_str();
  app.add_option("--page-size", page_size, "host tier allocation unit (power of two >= 4KiB)")
      ->capture_default_str();
  app.add_option("--write-lease-ttl", write_lease_ttl, "default write lease")
      ->capture_default_str();
  app.add_option("--read-lease-ttl", read_lease_ttl, "default read lease")
      ->capture_default_str();
  app.add_option("--max-lease-ttl", max_lease_ttl, "longest lease a request may ask for")
      ->capture_default_str();
  app.add_option("--event-buffer", event_buffer, "events kept for WatchEvents")
      ->capture_default_str();
  app.add_option("--node-name", node_name, "name advertised to clients (default: the address)");
  app.add_flag("--no-data-plane", no_data_plane,
               "serve block bytes over gRPC only (no UCX engine)");
  app.add_option("--transports", transports,
                 "UCX transports of the data plane, e.g. tcp or shm (default: UCX_TLS)");
  app.add_option("--data-dir", data_dir,
                 "directory of the SSD tier (slab files and catalog); empty: no SSD tier")
      ->capture_default_str();
  app.add_option("--ssd-capacity", ssd_capacity, "SSD tier size, e.g. 100GiB")
      ->capture_default_str();
  app.add_option("--ssd-slab-size", ssd_slab_size,
                 "size of each slab file (fixed for a data directory once created)")
      ->capture_default_str();
  app.add_flag("--ssd-write-through", ssd_write_through,
               "Commit returns once blocks are durable on SSD (default: write back on demotion)");
  app.add_flag("--ssd-flush-on-shutdown", ssd_flush_on_shutdown,
               "on SIGTERM/SIGINT, write host blocks to SSD before exiting (write-back mode), "
               "so that a restart finds them");
  app.add_option("--ssd-admit-min-hits", ssd_admit_min_hits,
                 "Lookup hits a block needs to be demoted to SSD rather than dropped (0: all)")
      ->capture_default_str();
  app.add_flag("--no-direct-io", no_direct_io,
               "buffered SSD I/O, for filesystems without O_DIRECT (tmpfs)");
  app.add_option("--admission", admission,
                 "host admission when full: all (plain prefix-aware LRU), second-use (only "
                 "blocks looked up twice lately displace others), or auto (whichever of these "
                 "two, or second use plus requests of at most 4, 16 or 64 new blocks, a "
                 "sampled simulation says hits most)")
      ->capture_default_str();
  app.add_option("--port-file", port_file,
                 "write the bound port to this file once ready (after --demo, if given)");
}

absl::Status CacheManagerFlags::Resolve(CacheManagerOptions* options) const {
  options->listen_address = listen;
  options->event_buffer = event_buffer;
  options->node_name = node_name;
  options->data_plane = !no_data_plane;
  options->transports = transports;
  absl::Status s = ParseBytesFlag("host-capacity", host_capacity, &options->host_capacity_bytes);
  if (s.ok()) s = ParseBytesFlag("page-size", page_size, &options->page_bytes);
  if (s.ok()) s = ParseDurationFlag("write-lease-ttl", write_lease_ttl, &options->write_lease_ttl);
  if (s.ok()) s = ParseDurationFlag("read-lease-ttl", read_lease_ttl, &options->read_lease_ttl);
  if (s.ok()) s = ParseDurationFlag("max-lease-ttl", max_lease_ttl, &options->max_lease_ttl);
  options->data_dir = data_dir;
  options->ssd_write_through = ssd_write_through;
  options->ssd_flush_on_shutdown = ssd_flush_on_shutdown;
  options->ssd_admit_min_hits = ssd_admit_min_hits;
  options->ssd_direct_io = !no_direct_io;
  if (admission == "all") {
    options->admission = BlockIndexOptions::Admission::kAll;
  } else if (admission == "second-use") {
    options->admission = BlockIndexOptions::Admission::kSecondUse;
  } else if (admission == "auto") {
    options->admission = BlockIndexOptions::Admission::kAuto;
  } else {
    s = absl::InvalidArgumentError(absl::StrCat(
        "--admission '", admission, "' is not a policy; use auto, all or second-use"));
  }
  if (s.ok()) s = ParseBytesFlag("ssd-capacity", ssd_capacity, &options->ssd_capacity_bytes);
  if (s.ok()) s = ParseBytesFlag("ssd-slab-size", ssd_slab_size, &options->ssd_slab_bytes);
  return s;
}

}  // namespace tierkv
