// kvctl: the operator's command line for a tierkv cache manager. Every command is one or a
// few gRPC calls to AdminService, CacheService or grpc.health.v1.Health, printed as aligned
// text or, with --json, as the response message in JSON (cli/kvctl_json.h says how).
//
// kvctl never writes blocks: it inspects and steers (evict, pin, drain), nothing more.
//
// Exit codes: 0 success; 1 the server refused or failed the call (or is not serving);
// 2 bad usage or input, found before any call; 3 the server is unreachable (UNAVAILABLE,
// or a deadline passed before a connection was made).
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/health.grpc.pb.h"
#include "cli/kvctl_format.h"
#include "cli/kvctl_json.h"
#include "core/block_key.h"
#include "core/process.h"
#include "tierkv/v1/admin_service.grpc.pb.h"
#include "tierkv/v1/cache_service.grpc.pb.h"

namespace tierkv::kvctl {
namespace {

enum ExitCode : int { kOk = 0, kFailed = 1, kUsage = 2, kUnreachable = 3 };

// Debian 12's abseil has its own string_view type: StrCat does not take std::string_view.
std::string S(std::string_view s) { return std::string(s); }

// The message of a status as a std::string (absl's string_view is another type here).
std::string Msg(const absl::Status& status) { return std::string(status.message()); }

void Print(std::string_view text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
}

// Options every command shares.
struct Globals {
  std::string server;
  bool json = false;
  std::string timeout_text = "10s";
  absl::Duration timeout = absl::Seconds(10);
};

// Bad input found before any call: says what is wrong and returns kUsage.
int BadInput(std::string_view command, std::string_view message) {
  std::fprintf(stderr, "kvctl: %s: %s\n", S(command).c_str(), S(message).c_str());
  return kUsage;
}

// The channel and stubs to the cache manager named by --server. Used by one thread.
// `globals` must outlive the client (both live in Main).
class Client {
 public:
  explicit Client(const Globals& globals) : globals_(globals) {
    grpc::ChannelArguments args;
    // An inspect of a long prompt or a page of blocks can exceed gRPC's 4 MiB default.
    args.SetMaxReceiveMessageSize(256 << 20);
    channel_ = grpc::CreateCustomChannel(globals.server, grpc::InsecureChannelCredentials(),
                                         args);
    admin_ = v1::AdminService::NewStub(channel_);
    cache_ = v1::CacheService::NewStub(channel_);
    health_ = grpc::health::v1::Health::NewStub(channel_);
  }

  const Globals& globals() const { return globals_; }
  bool json() const { return globals_.json; }
  v1::AdminService::Stub& admin() { return *admin_; }
  v1::CacheService::Stub& cache() { return *cache_; }
  grpc::health::v1::Health::Stub& health() { return *health_; }

  // A context whose deadline is --timeout from now: every unary call gets its own.
  std::unique_ptr<grpc::ClientContext> Context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + globals_.timeout));
    return ctx;
  }

  // Waits up to --timeout for a connection; UNAVAILABLE at once when a connection attempt
  // fails (refused, unresolvable) and DEADLINE_EXCEEDED when none completes in time. For
  // streams, which carry no deadline of their own.
  grpc::Status Connect() {
    const auto deadline = absl::ToChronoTime(absl::Now() + globals_.timeout);
    grpc_connectivity_state state = channel_->GetState(/*try_to_connect=*/true);
    while (state != GRPC_CHANNEL_READY) {
      if (state == GRPC_CHANNEL_TRANSIENT_FAILURE || state == GRPC_CHANNEL_SHUTDOWN) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            absl::StrCat("cannot connect to ", globals_.server));
      }
      if (!channel_->WaitForStateChange(state, deadline)) {
        return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                            absl::StrCat("no connection to ", globals_.server, " within ",
                                         absl::FormatDuration(globals_.timeout)));
      }
      state = channel_->GetState(/*try_to_connect=*/true);
    }
    return grpc::Status::OK;
  }

  // Reports a failed call as `kvctl: <command>: <CODE>: <message>` and returns its exit
  // code. A server that was never reached gets a hint on how to start one.
  int Fail(std::string_view command, const grpc::Status& status) {
    const std::string code =
        absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
    std::fprintf(stderr, "kvctl: %s: %s: %s\n", S(command).c_str(), code.c_str(),
                 status.error_message().c_str());
    const bool connected = channel_->GetState(false) == GRPC_CHANNEL_READY;
    const bool unavailable = status.error_code() == grpc::StatusCode::UNAVAILABLE;
    const bool timed_out = status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    if (!connected && (unavailable || timed_out)) {
      std::fprintf(stderr,
                   "kvctl: is a cache manager running at %s? start one with `tierkv up`, "
                   "or point kvctl elsewhere with --server or TIERKV_SERVER\n",
                   globals_.server.c_str());
      return kUnreachable;
    }
    return unavailable ? kUnreachable : kFailed;
  }

 private:
  const Globals& globals_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AdminService::Stub> admin_;
  std::unique_ptr<v1::CacheService::Stub> cache_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

void PrintJson(const google::protobuf::Message& message) {
  Print(ProtoToJson(message, /*pretty=*/true));
  Print("\n");
}

// With --json, prints `resp` and returns true: the command has nothing more to say.
bool PrintedAsJson(const Client& client, const google::protobuf::Message& resp) {
  if (!client.json()) return false;
  PrintJson(resp);
  return true;
}

std::string TierLabel(int tier) {
  return EnumLabel(v1::Tier_Name(static_cast<v1::Tier>(tier)), "TIER_");
}

// Every tier holding a copy of the block, e.g. "host+ssd".
std::string TiersLabel(const v1::BlockInfo& b) {
  if (b.tiers().empty()) return TierLabel(b.location().tier());
  std::string out;
  for (int t : b.tiers()) absl::StrAppend(&out, out.empty() ? "" : "+", TierLabel(t));
  return out;
}

std::string CodecLabel(int codec) {
  if (codec == v1::CODEC_UNSPECIFIED) return "raw";  // The proto says: treated as raw.
  return EnumLabel(v1::Codec_Name(static_cast<v1::Codec>(codec)), "CODEC_");
}

std::string YesNo(bool b) { return b ? "yes" : "no"; }

// "1 block" / "2 blocks".
std::string Count(uint64_t n, std::string_view noun) {
  return absl::StrCat(n, " ", S(noun), n == 1 ? "" : "s");
}

// Parses every key argument; on the first malformed one reports it and returns false.
bool ParseKeys(std::string_view command, const std::vector<std::string>& args,
               std::vector<BlockKey>& keys) {
  for (size_t i = 0; i < args.size(); ++i) {
    absl::StatusOr<BlockKey> key = ParseKeyArg(args[i]);
    if (!key.ok()) {
      BadInput(command, args.size() == 1 ? Msg(key.status())
                                         : absl::StrCat("key ", i + 1, ": ",
                                                        key.status().message()));
      return false;
    }
    keys.push_back(*key);
  }
  return true;
}

// ---------------------------------------------------------------------------------------
// stats

int RunStats(Client& client) {
  v1::StatsResponse resp;
  grpc::Status status = client.admin().Stats(client.Context().get(), {}, &resp);
  if (!status.ok()) return client.Fail("stats", status);
  if (PrintedAsJson(client, resp)) return kOk;

  std::string out = absl::StrCat("node ", resp.node(), "\n\n");
  if (resp.tiers().empty()) {
    out += "no tiers configured\n";
  } else {
    TextTable table({"TIER", "BLOCKS", "BYTES", "USED", "CAPACITY", "USE%", "HITS", "MISSES",
                     "HIT RATE", "EVICTIONS"},
                    {false, true, true, true, true, true, true, true, true, true});
    for (const v1::TierStats& t : resp.tiers()) {
      table.AddRow({TierLabel(t.tier()), absl::StrCat(t.blocks()), HumanBytes(t.bytes()),
                    HumanBytes(t.used_bytes()), HumanBytes(t.capacity_bytes()),
                    Percent(t.used_bytes(), t.capacity_bytes()), absl::StrCat(t.hits()),
                    absl::StrCat(t.misses()), Percent(t.hits(), t.hits() + t.misses()),
                    absl::StrCat(t.evictions())});
    }
    out += table.Render();
  }
  out += "\n";
  out += RenderKeyValues({
      {"pending allocations", absl::StrCat(resp.pending_allocations())},
      {"pending blocks", absl::StrCat(resp.pending_blocks())},
      {"read leases", absl::StrCat(resp.read_leases())},
      {"pinned blocks", absl::StrCat(resp.pinned_blocks())},
      {"lookups", absl::StrCat(resp.lookups())},
      {"commits", absl::StrCat(resp.commits())},
      {"aborts", absl::StrCat(resp.aborts())},
      {"expired allocations", absl::StrCat(resp.expired_allocations())},
      {"checksum failures", absl::StrCat(resp.checksum_failures())},
      {"allocation failures", absl::StrCat(resp.allocation_failures())},
      {"last event seq", absl::StrCat(resp.last_event_sequence())},
      {"draining", resp.draining() ? "yes (new allocations are refused)" : "no"},
      {"uptime", HumanDuration(absl::Milliseconds(resp.uptime_ms()))},
      {"page size", HumanBytes(resp.page_bytes())},
  });
  out += "\n";
  out += RenderKeyValues({
      {"admission", resp.admission()},
      {"not admitted", absl::StrCat(resp.not_admitted())},
      {"admission switches", absl::StrCat(resp.admission_switches())},
      {"evicted for room", absl::StrCat(resp.evicted_capacity())},
      {"evicted by request", absl::StrCat(resp.evicted_requested())},
      {"evicted for ssd room", absl::StrCat(resp.evicted_ssd_capacity())},
      {"dropped (checksum)", absl::StrCat(resp.dropped_checksum())},
  });
  if (!resp.ssd_mode().empty()) {
    out += "\n";
    out += RenderKeyValues({
        {"ssd mode", resp.ssd_mode()},
        {"demotions", absl::StrCat(resp.demotions())},
        {"promotions", absl::StrCat(resp.promotions())},
        {"host copies dropped", absl::StrCat(resp.host_drops())},
        {"admissions refused", absl::StrCat(resp.admissions_refused())},
        {"ssd write failures", absl::StrCat(resp.ssd_write_failures())},
        {"ssd read failures", absl::StrCat(resp.ssd_read_failures())},
        {"recovered at start", absl::StrCat(resp.ssd_recovered_blocks())},
    });
  }
  if (!resp.gpu_device().empty()) {
    out += "\n";
    out += RenderKeyValues({
        {"gpu device", resp.gpu_device()},
        {"gpu demotions", absl::StrCat(resp.gpu_demotions())},
        {"gpu copies dropped", absl::StrCat(resp.gpu_drops())},
        {"copied to host", absl::StrCat(resp.gpu_to_host())},
        {"gpu copy failures", absl::StrCat(resp.gpu_copy_failures())},
        {"gpu fallbacks", absl::StrCat(resp.gpu_fallbacks())},
    });
  }
  Print(out);
  return kOk;
}

// ---------------------------------------------------------------------------------------
// ls

struct LsOptions {
  uint32_t limit = 100;
  bool all = false;
  bool full_keys = false;
};

int RunLs(Client& client, const LsOptions& opts) {
  // ListBlocks caps a page at 10,000; 1,000 keeps each response small.
  constexpr uint32_t kPage = 1000;
  v1::ListBlocksResponse listed;
  std::string token;
  do {
    uint32_t want = kPage;
    if (!opts.all) {
      uint32_t left = opts.limit - static_cast<uint32_t>(listed.blocks_size());
      if (left == 0) break;
      want = std::min(want, left);
    }
    v1::ListBlocksRequest req;
    req.set_page_size(want);
    req.set_page_token(token);
    v1::ListBlocksResponse page;
    grpc::Status status = client.admin().ListBlocks(client.Context().get(), req, &page);
    if (!status.ok()) return client.Fail("ls", status);
    for (auto& b : *page.mutable_blocks()) *listed.add_blocks() = std::move(b);
    listed.set_total_blocks(page.total_blocks());
    token = page.next_page_token();
    if (page.blocks().empty()) break;  // A server that pages without progress ends here.
  } while (!token.empty());
  // Where --limit cut the listing, the token says where to go on.
  listed.set_next_page_token(token);

  if (PrintedAsJson(client, listed)) return kOk;
  if (listed.blocks().empty()) {
    Print(listed.total_blocks() == 0 ? "no committed blocks\n"
                                     : absl::StrCat("no blocks listed of ",
                                                    listed.total_blocks(), "\n"));
    return kOk;
  }
  TextTable table({"KEY", "SIZE", "TIER", "CODEC", "PINNED", "READERS", "CHILDREN", "HITS",
                   "AGE"},
                  {false, true, false, false, false, true, true, true, true});
  const absl::Time now = absl::Now();
  uint64_t bytes = 0;
  for (const v1::BlockInfo& b : listed.blocks()) {
    bytes += b.size();
    table.AddRow({KeyHex(b.key(), opts.full_keys), HumanBytes(b.size()),
                  TiersLabel(b), CodecLabel(b.codec()), YesNo(b.pinned()),
                  absl::StrCat(b.readers()), absl::StrCat(b.children()),
                  absl::StrCat(b.hits()),
                  HumanDuration(now - absl::FromUnixMillis(b.committed_unix_ms()))});
  }
  std::string out = table.Render();
  const uint64_t shown = listed.blocks_size();
  if (shown >= listed.total_blocks()) {
    out += absl::StrCat(Count(shown, "block"), ", ", HumanBytes(bytes), "\n");
  } else {
    out += absl::StrCat("showing the ", shown, " oldest of ", listed.total_blocks(),
                        " blocks (", HumanBytes(bytes), "); --limit N or --all for more\n");
  }
  Print(out);
  return kOk;
}

// ---------------------------------------------------------------------------------------
// inspect

struct InspectOptions {
  std::string tokens;
  std::string tokens_file;
  std::vector<std::string> key_flags;
  std::vector<std::string> key_args;
  ModelSpec spec = BuiltinTinyModelSpec();
  std::string salt;
  std::string salt_hex;
  bool full_keys = false;
  // Options that only make sense with a token query, to refuse them with keys.
  std::vector<CLI::Option*> token_only;
};

void ToProto(const ModelSpec& spec, v1::ModelSpec* out) {
  out->set_model_id(spec.model_id);
  out->set_weights_digest(spec.weights_digest);
  out->set_num_layers(spec.num_layers);
  out->set_num_kv_heads(spec.num_kv_heads);
  out->set_head_dim(spec.head_dim);
  out->set_kv_dtype(spec.kv_dtype);
  out->set_block_tokens(spec.block_tokens);
  out->set_tp_rank(spec.tp_rank);
  out->set_tp_size(spec.tp_size);
}

std::string StateLabel(v1::InspectPrefixResponse::State state) {
  using R = v1::InspectPrefixResponse;
  switch (state) {
    case R::STATE_FOUND: return "found";
    case R::STATE_NEVER_STORED: return "never stored";
    case R::STATE_EVICTED: return "evicted";
    case R::STATE_UNCOMMITTED: return "uncommitted";
    case R::STATE_FINGERPRINT_MISMATCH: return "fingerprint mismatch";
    case R::STATE_UNREACHABLE: return "unreachable";
    case R::STATE_CHECKSUM_FAILURE: return "checksum failure";
    default: return EnumLabel(R::State_Name(state), "STATE_");
  }
}

// Reads a token list from `path` ("-" is standard input).
absl::StatusOr<std::string> ReadTokensFile(const std::string& path) {
  std::ostringstream text;
  if (path == "-") {
    text << std::cin.rdbuf();
    return text.str();
  }
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read --tokens-file ", path, ": ", std::strerror(errno)));
  }
  text << in.rdbuf();
  return text.str();
}

// The request for a token query: tokens, model and salt validated here so that a typo is
// a usage error, not a server round trip.
absl::StatusOr<v1::InspectPrefixRequest> TokenRequest(const InspectOptions& opts) {
  std::string text = opts.tokens;
  if (!opts.tokens_file.empty()) {
    absl::StatusOr<std::string> file = ReadTokensFile(opts.tokens_file);
    if (!file.ok()) return file.status();
    text = *std::move(file);
  }
  absl::StatusOr<std::vector<uint32_t>> tokens = ParseTokenList(text);
  if (!tokens.ok()) return tokens.status();
  if (absl::Status s = opts.spec.Validate(); !s.ok()) {
    return s;
  }
  std::string salt = opts.salt;
  if (!opts.salt_hex.empty()) {
    absl::StatusOr<std::string> bytes = FromHex(opts.salt_hex);
    if (!bytes.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--salt-hex: ", bytes.status().message()));
    }
    salt = *std::move(bytes);
  }
  v1::InspectPrefixRequest req;
  auto* q = req.mutable_tokens();
  ToProto(opts.spec, q->mutable_model());
  q->set_salt(salt);
  q->mutable_tokens()->Assign(tokens->begin(), tokens->end());
  return req;
}

// Per block where it is or why it is a miss, then what a Lookup of the prompt would get.
std::string RenderInspect(const v1::InspectPrefixRequest& req,
                          const v1::InspectPrefixResponse& resp, bool full_keys) {
  const bool by_tokens = req.has_tokens();
  const uint32_t block_tokens = by_tokens ? req.tokens().model().block_tokens() : 0;
  std::string out;
  if (by_tokens) {
    const auto& q = req.tokens();
    out = absl::StrCat(
        "model ", q.model().model_id(), " (fingerprint ", KeyHex(resp.fingerprint(), full_keys),
        "), ", q.salt().empty() ? "no salt" : absl::StrCat("salt of ", q.salt().size(), " bytes"),
        ", ", Count(q.tokens_size(), "token"), " in blocks of ", block_tokens, "\n");
  }
  const uint32_t total = resp.blocks_size();
  if (total > 0) {
    if (by_tokens) out += "\n";
    TextTable table({"BLOCK", "KEY", "STATE", "DETAIL"}, {true});
    for (const auto& b : resp.blocks()) {
      table.AddRow({absl::StrCat(b.index()), KeyHex(b.key(), full_keys), StateLabel(b.state()),
                    b.detail()});
    }
    out += table.Render();
    out += "\n";
  }

  const uint32_t prefix = resp.prefix_blocks();
  out += absl::StrCat("prefix: ", prefix, " of ", Count(total, "block"), " cached");
  if (by_tokens) {
    const uint32_t tail = resp.tail_tokens();
    out += tail == 0 ? "; no tail tokens"
                     : absl::StrCat("; ", Count(tail, "tail token"), tail == 1 ? " has" : " have",
                                    " no key");
  }
  out += "\n";

  if (by_tokens && total == 0 && req.tokens().tokens_size() > 0) {
    out += absl::StrCat("the prompt is shorter than one block (", block_tokens,
                        " tokens): none of it can be cached\n");
  } else if (prefix < total) {
    // The first miss decides what a Lookup returns; later blocks cannot help.
    const auto& miss = resp.blocks(static_cast<int>(prefix));
    out += absl::StrCat("first miss: block ", miss.index(), " (", StateLabel(miss.state()),
                        "); a Lookup stops there");
    if (by_tokens) {
      out += absl::StrCat(", so tokens ", uint64_t{prefix} * block_tokens, "..",
                          req.tokens().tokens_size() - 1, " are recomputed\n");
    } else {
      out += absl::StrCat(" and returns ", Count(prefix, "block"), "\n");
    }
  }
  return out;
}

int RunInspect(Client& client, const InspectOptions& opts) {
  std::vector<std::string> key_args = opts.key_flags;
  key_args.insert(key_args.end(), opts.key_args.begin(), opts.key_args.end());
  const int queries = !opts.tokens.empty() + !opts.tokens_file.empty() + !key_args.empty();
  if (queries != 1) {
    return BadInput("inspect",
                    "give exactly one of --tokens, --tokens-file or block keys (--key or "
                    "positional)");
  }

  v1::InspectPrefixRequest req;
  if (key_args.empty()) {
    absl::StatusOr<v1::InspectPrefixRequest> token_req = TokenRequest(opts);
    if (!token_req.ok()) return BadInput("inspect", Msg(token_req.status()));
    req = *std::move(token_req);
  } else {
    for (const CLI::Option* opt : opts.token_only) {
      if (opt->count() > 0) {
        return BadInput("inspect", absl::StrCat(opt->get_name(),
                                                " applies to --tokens queries only: keys "
                                                "already encode model and salt"));
      }
    }
    std::vector<BlockKey> keys;
    if (!ParseKeys("inspect", key_args, keys)) return kUsage;
    for (const BlockKey& key : keys) req.mutable_keys()->add_keys(S(KeyBytes(key)));
  }

  v1::InspectPrefixResponse resp;
  grpc::Status status = client.admin().InspectPrefix(client.Context().get(), req, &resp);
  if (!status.ok()) return client.Fail("inspect", status);
  if (client.json()) {
    PrintJson(resp);
  } else {
    Print(RenderInspect(req, resp, opts.full_keys));
  }
  return kOk;
}

// ---------------------------------------------------------------------------------------
// evict, pin, unpin

enum class KeyCommand { kEvict, kPin, kUnpin };

int RunKeyCommand(Client& client, KeyCommand which, const std::vector<std::string>& args) {
  const std::string name = which == KeyCommand::kEvict ? "evict"
                           : which == KeyCommand::kPin ? "pin"
                                                       : "unpin";
  std::vector<BlockKey> keys;
  if (!ParseKeys(name, args, keys)) return kUsage;
  const uint64_t n = keys.size();

  if (which == KeyCommand::kEvict) {
    v1::EvictRequest req;
    for (const BlockKey& key : keys) req.add_keys(S(KeyBytes(key)));
    v1::EvictResponse resp;
    grpc::Status status = client.cache().Evict(client.Context().get(), req, &resp);
    if (!status.ok()) return client.Fail(name, status);
    if (PrintedAsJson(client, resp)) return kOk;
    std::string out = absl::StrCat("evicted ", Count(resp.evicted(), "block"));
    if (resp.evicted() > n) {
      out += absl::StrCat(" (", resp.evicted() - n, " of them cached descendants, which would "
                          "have been unreachable)");
    }
    Print(absl::StrCat(out, ", freed ", HumanBytes(resp.bytes_freed()), "\n"));
    return kOk;
  }

  v1::PinRequest req;
  for (const BlockKey& key : keys) req.add_keys(S(KeyBytes(key)));
  v1::PinResponse resp;
  grpc::Status status = which == KeyCommand::kPin
                            ? client.cache().Pin(client.Context().get(), req, &resp)
                            : client.cache().Unpin(client.Context().get(), req, &resp);
  if (!status.ok()) return client.Fail(name, status);
  if (PrintedAsJson(client, resp)) return kOk;
  const std::string verb = which == KeyCommand::kPin ? "pinned" : "unpinned";
  if (resp.changed() >= n) {
    Print(absl::StrCat(verb, " ", Count(resp.changed(), "block"), "\n"));
  } else {
    const uint64_t same = n - resp.changed();
    Print(absl::StrCat(verb, " ", resp.changed(), " of ", Count(n, "block"), "; ", same,
                       same == 1 ? " was" : " were",
                       which == KeyCommand::kPin ? " already pinned" : " not pinned", "\n"));
  }
  return kOk;
}

// ---------------------------------------------------------------------------------------
// watch

struct WatchOptions {
  uint64_t from = 0;
  uint64_t count = 0;
  std::string duration_text;
  bool full_keys = false;
};

std::string EventLine(const v1::Event& e, bool full_keys) {
  if (e.type() == v1::Event::TYPE_MISSED) {
    return absl::StrCat("missed events ", e.missed_from(), "..", e.missed_to(),
                        ": resynchronize with kvctl ls\n");
  }
  const std::string when = absl::FormatTime("%H:%M:%E3S", absl::FromUnixMillis(e.unix_ms()),
                                            absl::LocalTimeZone());
  std::string line = absl::StrFormat(
      "%8d  %s  %-7s  %s  %9s  %s", e.sequence(), when,
      EnumLabel(v1::Event::Type_Name(e.type()), "TYPE_"), KeyHex(e.key(), full_keys),
      HumanBytes(e.size()), TierLabel(e.tier()));
  if (!e.reason().empty()) line += absl::StrCat("  reason=", e.reason());
  return line + "\n";
}

int RunWatch(Client& client, const WatchOptions& opts) {
  absl::Duration duration = absl::InfiniteDuration();
  if (!opts.duration_text.empty()) {
    absl::StatusOr<absl::Duration> d = ParseTimeout(opts.duration_text);
    if (!d.ok()) return BadInput("watch", absl::StrCat("--duration: ", d.status().message()));
    duration = *d;
  }
  // A stream has no deadline unless --duration gives one; --timeout bounds the connection.
  if (grpc::Status status = client.Connect(); !status.ok()) return client.Fail("watch", status);

  grpc::ClientContext ctx;
  if (duration != absl::InfiniteDuration()) {
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + duration));
  }
  v1::WatchEventsRequest req;
  req.set_from_sequence(opts.from);
  std::unique_ptr<grpc::ClientReader<v1::Event>> reader = client.cache().WatchEvents(&ctx, req);
  v1::Event event;
  uint64_t seen = 0;
  bool done = false;
  while (reader->Read(&event)) {
    Print(client.json() ? ProtoToJson(event, /*pretty=*/false) + "\n"
                        : EventLine(event, opts.full_keys));
    std::fflush(stdout);  // Lines go out as they come, also into a pipe.
    if (opts.count > 0 && ++seen >= opts.count) {
      done = true;
      ctx.TryCancel();
      break;
    }
  }
  grpc::Status status = reader->Finish();
  if (done || status.ok()) return kOk;
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
      duration != absl::InfiniteDuration()) {
    return kOk;  // --duration ran out: the normal end of a bounded watch.
  }
  return client.Fail("watch", status);
}

// ---------------------------------------------------------------------------------------
// health, nodes, drain

int RunHealth(Client& client, const std::string& service) {
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status status = client.health().Check(client.Context().get(), req, &resp);
  if (!status.ok()) return client.Fail("health", status);
  if (client.json()) {
    PrintJson(resp);
  } else {
    Print(absl::StrCat(grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status()),
                       "\n"));
  }
  return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? kOk : kFailed;
}

int RunNodes(Client& client) {
  v1::ListNodesResponse resp;
  grpc::Status status = client.admin().ListNodes(client.Context().get(), {}, &resp);
  if (!status.ok()) return client.Fail("nodes", status);
  if (PrintedAsJson(client, resp)) return kOk;
  if (resp.nodes().empty()) {
    Print("no nodes\n");
    return kOk;
  }
  TextTable table({"ADDRESS", "DRAINING", "USED", "CAPACITY", "USE%", "UPTIME"},
                  {false, false, true, true, true, true});
  for (const v1::NodeInfo& n : resp.nodes()) {
    table.AddRow({n.address(), YesNo(n.draining()), HumanBytes(n.used_bytes()),
                  HumanBytes(n.capacity_bytes()), Percent(n.used_bytes(), n.capacity_bytes()),
                  HumanDuration(absl::Milliseconds(n.uptime_ms()))});
  }
  Print(table.Render());
  return kOk;
}

int RunDrain(Client& client, bool resume) {
  v1::DrainRequest req;
  req.set_drain(!resume);
  v1::DrainResponse resp;
  grpc::Status status = client.admin().Drain(client.Context().get(), req, &resp);
  if (!status.ok()) return client.Fail("drain", status);
  if (client.json()) {
    PrintJson(resp);
  } else if (resp.draining()) {
    Print(absl::StrCat("draining ", client.globals().server,
                       ": new allocations are refused, reads keep working; "
                       "`kvctl drain --resume` undoes it\n"));
  } else {
    Print(absl::StrCat(client.globals().server, " accepts allocations\n"));
  }
  return kOk;
}

// ---------------------------------------------------------------------------------------

int Main(int argc, char** argv) {
  CLI::App app("kvctl: inspect and steer a tierkv cache manager", "kvctl");
  app.require_subcommand(1);
  app.footer(
      "Exit codes: 0 success; 1 the call failed (or health is not SERVING); 2 bad usage or "
      "input; 3 the server is unreachable.");

  Globals globals;
  const char* env_server = std::getenv("TIERKV_SERVER");
  globals.server = env_server != nullptr && *env_server != '\0' ? env_server : "127.0.0.1:7471";
  app.add_option("--server", globals.server,
                 "cache manager HOST:PORT (default: $TIERKV_SERVER, else 127.0.0.1:7471)")
      ->capture_default_str();
  app.add_flag("--json", globals.json,
               "print responses as JSON (proto field names, keys as hex; watch: one object "
               "a line)");
  app.add_option("--timeout", globals.timeout_text,
                 "deadline of each call, e.g. 10s, 500ms (watch: of the connection)")
      ->capture_default_str();

  CLI::App* stats = app.add_subcommand("stats", "per-tier usage, hit rates and counters");

  LsOptions ls_opts;
  CLI::App* ls = app.add_subcommand("ls", "committed blocks, oldest commit first");
  ls->add_option("--limit", ls_opts.limit, "list at most N blocks")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  ls->add_flag("--all", ls_opts.all, "list every block (pages through them)");
  ls->add_flag("--full-keys", ls_opts.full_keys, "print 64-digit keys");

  InspectOptions in_opts;
  CLI::App* inspect = app.add_subcommand(
      "inspect", "explain a prompt's or key chain's cache state: per block, found or why not");
  inspect->add_option("--tokens", in_opts.tokens, "token ids, comma or space separated");
  inspect->add_option("--tokens-file", in_opts.tokens_file,
                      "file of token ids, comma or whitespace separated ('-': stdin)");
  inspect->add_option("--key", in_opts.key_flags, "block key, 64 hex digits (repeatable)");
  inspect->add_option("keys", in_opts.key_args, "block keys of a chain, block 0 first");
  inspect->add_flag("--full-keys", in_opts.full_keys, "print 64-digit keys");
  {
    ModelSpec& spec = in_opts.spec;
    const std::string group = "Model (token queries; default: the built-in model)";
    auto token_only = [&](CLI::Option* opt) {
      opt->group(group)->capture_default_str();
      in_opts.token_only.push_back(opt);
    };
    token_only(inspect->add_option("--model-id", spec.model_id, "model name"));
    token_only(inspect->add_option("--weights-digest", spec.weights_digest, "weights digest"));
    token_only(inspect->add_option("--layers", spec.num_layers, "transformer layers"));
    token_only(inspect->add_option("--kv-heads", spec.num_kv_heads, "KV heads per layer"));
    token_only(inspect->add_option("--head-dim", spec.head_dim, "head dimension"));
    token_only(inspect->add_option("--kv-dtype", spec.kv_dtype, "bf16, fp16 or fp32"));
    token_only(inspect->add_option("--block-tokens", spec.block_tokens, "tokens per block"));
    token_only(inspect->add_option("--tp-rank", spec.tp_rank, "tensor-parallel rank"));
    token_only(inspect->add_option("--tp-size", spec.tp_size, "tensor-parallel size"));
    CLI::Option* salt = inspect->add_option("--salt", in_opts.salt, "tenant cache salt");
    CLI::Option* salt_hex =
        inspect->add_option("--salt-hex", in_opts.salt_hex, "tenant cache salt as hex");
    salt->excludes(salt_hex);
    token_only(salt);
    token_only(salt_hex);
  }

  std::vector<std::string> evict_keys, pin_keys, unpin_keys;
  CLI::App* evict = app.add_subcommand(
      "evict", "evict blocks now (with their cached descendants); pinned or leased ones refuse");
  evict->add_option("keys", evict_keys, "block keys, 64 hex digits")->required();
  CLI::App* pin = app.add_subcommand("pin", "keep blocks from eviction until unpinned");
  pin->add_option("keys", pin_keys, "block keys, 64 hex digits")->required();
  CLI::App* unpin = app.add_subcommand("unpin", "let pinned blocks be evicted again");
  unpin->add_option("keys", unpin_keys, "block keys, 64 hex digits")->required();

  WatchOptions watch_opts;
  CLI::App* watch = app.add_subcommand("watch", "stream stored/evicted events, one a line");
  watch->add_option("--from", watch_opts.from, "first sequence number (default: the next event)");
  watch->add_option("--count", watch_opts.count, "stop after N events (default: never)");
  watch->add_option("--duration", watch_opts.duration_text, "stop after this long, e.g. 30s");
  watch->add_flag("--full-keys", watch_opts.full_keys, "print 64-digit keys");

  std::string health_service;
  CLI::App* health = app.add_subcommand(
      "health", "grpc.health.v1 check: prints SERVING etc.; exit 0 only when serving");
  health->add_option("--service", health_service, "service name (default: the whole server)");

  CLI::App* nodes = app.add_subcommand("nodes", "cache manager nodes and their usage");

  bool resume = false;
  CLI::App* drain = app.add_subcommand(
      "drain", "refuse new allocations on the node (reads keep working)");
  drain->add_flag("--resume", resume, "accept allocations again");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kOk : kUsage;
  }

  absl::StatusOr<absl::Duration> timeout = ParseTimeout(globals.timeout_text);
  if (!timeout.ok()) return BadInput("--timeout", Msg(timeout.status()));
  globals.timeout = *timeout;
  if (globals.server.empty()) return BadInput("--server", "the address is empty");

  Client client(globals);
  if (stats->parsed()) return RunStats(client);
  if (ls->parsed()) return RunLs(client, ls_opts);
  if (inspect->parsed()) return RunInspect(client, in_opts);
  if (evict->parsed()) return RunKeyCommand(client, KeyCommand::kEvict, evict_keys);
  if (pin->parsed()) return RunKeyCommand(client, KeyCommand::kPin, pin_keys);
  if (unpin->parsed()) return RunKeyCommand(client, KeyCommand::kUnpin, unpin_keys);
  if (watch->parsed()) return RunWatch(client, watch_opts);
  if (health->parsed()) return RunHealth(client, health_service);
  if (nodes->parsed()) return RunNodes(client);
  if (drain->parsed()) return RunDrain(client, resume);
  return BadInput("kvctl", "no command given");  // require_subcommand(1) prevents this.
}

}  // namespace
}  // namespace tierkv::kvctl

int main(int argc, char** argv) {
  tierkv::DisableMutexDeadlockDetection();
  return tierkv::kvctl::Main(argc, argv);
}
