#!/usr/bin/env python3
"""kvctl against a real cache manager on loopback.

Starts tierkv-cache-manager on 127.0.0.1 with a free port (--listen 127.0.0.1:0 --port-file),
drives kvctl as an operator would, and checks output and exit codes. The server is stopped by
its PID (SIGTERM, then SIGKILL) however the test ends. Standard library only.

    kvctl_test.py --kvctl build/cli/kvctl --tierkv build/cli/tierkv \\
        --cache-manager build/cache_manager/tierkv-cache-manager [unittest args]

KvctlTest covers every command on an empty cache, the JSON output, the key chain kvctl asks
about, and the error paths (bad input, unknown keys, no server). KvctlWithBlocksTest runs
kvctl against `tierkv up --demo`, whose demo request fills the cache: listing, inspecting,
pinning, evicting and watching real blocks.
"""

import argparse
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent.parent
# Bounds every wait, so that a hung process fails the test instead of hanging ctest.
KVCTL_TIMEOUT_S = 30
SERVER_START_TIMEOUT_S = 30
SERVER_STOP_TIMEOUT_S = 10


def load_key_spec():
    """The independent Python implementation of docs/block-keys.md."""
    path = SOURCE_DIR / "scripts" / "gen_block_key_vectors.py"
    spec = importlib.util.spec_from_file_location("gen_block_key_vectors", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CacheManager:
    """A tierkv-cache-manager process on 127.0.0.1, on a port the kernel picks."""

    def __init__(self, binary, workdir, prefix=(), extra=()):
        """`prefix` goes before the flags (a subcommand), `extra` after them."""
        self.binary = binary
        self.workdir = Path(workdir)
        self.log_path = self.workdir / "cache_manager.log"
        self.proc = None
        self.port = None
        self.prefix = list(prefix)
        self.extra = list(extra)

    def __enter__(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        port_file = self.workdir / "port"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, *self.prefix, "--listen", "127.0.0.1:0",
                 "--port-file", str(port_file),
                 "--host-capacity", "64MiB", "--page-size", "64KiB",
                 "--write-lease-ttl", "30s", "--read-lease-ttl", "30s", *self.extra],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self.port = self._wait_for_port(port_file)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"

    def _wait_for_port(self, port_file):
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"cache manager exited with {self.proc.returncode}:\n{self.log()}")
            try:
                # The server writes the file through a rename, so it is whole once present.
                text = port_file.read_text().strip()
            except FileNotFoundError:
                text = ""
            if text:
                return int(text)
            time.sleep(0.05)
        raise RuntimeError(
            f"cache manager wrote no port file in {SERVER_START_TIMEOUT_S}s:\n{self.log()}")

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=SERVER_STOP_TIMEOUT_S)


def closed_port():
    """A loopback port nothing listens on (freed just now, so almost surely still free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KvctlTest(unittest.TestCase):
    kvctl_path = None
    server = None
    workdir = None
    keyspec = None

    def kvctl(self, *args, server="", env_server=None):
        """Runs kvctl and returns the result: with --server this test's server by default,
        `server` when given, no --server when None; TIERKV_SERVER only from `env_server`."""
        env = {k: v for k, v in os.environ.items() if k != "TIERKV_SERVER"}
        if env_server is not None:
            env["TIERKV_SERVER"] = env_server
        cmd = [self.kvctl_path]
        if server is not None:
            cmd += ["--server", server or self.server.address]
        return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env,
                              timeout=KVCTL_TIMEOUT_S, stdin=subprocess.DEVNULL)

    def assertExit(self, result, code):
        self.assertEqual(
            result.returncode, code,
            f"{result.args} exited {result.returncode}, want {code}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")

    def json_of(self, *args):
        result = self.kvctl("--json", *args)
        self.assertExit(result, 0)
        return json.loads(result.stdout)

    # health, stats, ls, nodes ------------------------------------------------------------

    def test_health_is_serving(self):
        result = self.kvctl("health")
        self.assertExit(result, 0)
        self.assertEqual(result.stdout.strip(), "SERVING")
        self.assertEqual(self.json_of("health"), {"status": "SERVING"})

    def test_stats_on_empty_cache(self):
        result = self.kvctl("stats")
        self.assertExit(result, 0)
        out = result.stdout
        self.assertIn(f"node {self.server.address}", out)
        self.assertRegex(out, r"TIER\s+BLOCKS\s+BYTES\s+USED\s+CAPACITY\s+USE%\s+HITS\s+MISSES"
                              r"\s+HIT RATE\s+EVICTIONS")
        self.assertRegex(out, r"\nhost\s+0\s+0 B\s+0 B\s+64 MiB\s+0\.0%\s+0\s+0\s+-\s+0\n")
        for counter in ("pending allocations", "pending blocks", "read leases", "pinned blocks",
                        "lookups", "commits", "aborts", "expired allocations",
                        "checksum failures", "allocation failures"):
            self.assertRegex(out, rf"\n{counter}\s+0\n")
        self.assertRegex(out, r"\ndraining\s+no\n")
        self.assertRegex(out, r"\nuptime\s+\d+(ms|s|m\d\ds)\n")
        self.assertRegex(out, r"\npage size\s+64 KiB\n")
        self.assertRegex(out, r"\nadmission\s+auto \(now all\)\n")
        for counter in ("not admitted", "admission switches", "evicted for room",
                        "evicted by request", "evicted for ssd room", "dropped \\(checksum\\)"):
            self.assertRegex(out, rf"\n{counter}\s+0\n")

    def test_json_stats_parses(self):
        stats = self.json_of("stats")
        self.assertEqual(stats["node"], self.server.address)
        self.assertEqual(len(stats["tiers"]), 1)
        host = stats["tiers"][0]
        self.assertEqual(host["tier"], "TIER_HOST")
        self.assertEqual(host["capacity_bytes"], 64 << 20)  # A number, not a string.
        self.assertEqual(host["blocks"], 0)
        self.assertEqual(stats["page_bytes"], 64 << 10)
        self.assertIs(stats["draining"], False)
        self.assertEqual(stats["commits"], 0)  # Defaults are printed, not left out.

    def test_ls_empty(self):
        result = self.kvctl("ls")
        self.assertExit(result, 0)
        self.assertEqual(result.stdout, "no committed blocks\n")
        listed = self.json_of("ls", "--all")
        self.assertEqual(listed["blocks"], [])
        self.assertEqual(listed["total_blocks"], 0)

    def test_ls_refuses_zero_limit(self):
        self.assertExit(self.kvctl("ls", "--limit", "0"), 2)

    def test_nodes_lists_this_server(self):
        result = self.kvctl("nodes")
        self.assertExit(result, 0)
        self.assertRegex(result.stdout, r"ADDRESS\s+DRAINING\s+USED\s+CAPACITY")
        self.assertRegex(result.stdout, rf"\n{re.escape(self.server.address)}\s+no\s+0 B\s+64 MiB")

    def test_drain_and_resume(self):
        try:
            result = self.kvctl("drain")
            self.assertExit(result, 0)
            self.assertIn("new allocations are refused", result.stdout)
            self.assertIs(self.json_of("stats")["draining"], True)
        finally:
            result = self.kvctl("drain", "--resume")
        self.assertExit(result, 0)
        self.assertIn("accepts allocations", result.stdout)
        self.assertIs(self.json_of("stats")["draining"], False)

    # inspect -----------------------------------------------------------------------------

    def test_inspect_uncached_prompt_says_never_stored(self):
        tokens = ",".join(str(t) for t in range(1, 41))  # Two blocks of 16 and 8 tail tokens.
        result = self.kvctl("inspect", "--tokens", tokens)
        self.assertExit(result, 0)
        out = result.stdout
        self.assertIn("model builtin:tiny", out)
        self.assertIn("40 tokens in blocks of 16", out)
        self.assertRegex(out, r"\n\s+0\s+[0-9a-f]{16}\s+never stored\s+\S")
        self.assertRegex(out, r"\n\s+1\s+[0-9a-f]{16}\s+never stored\s+\S")
        self.assertIn("prefix: 0 of 2 blocks cached; 8 tail tokens have no key\n", out)
        self.assertIn("first miss: block 0 (never stored)", out)
        self.assertIn("tokens 0..39 are recomputed", out)

    def test_inspect_asks_about_the_key_chain_of_the_spec(self):
        # Explicit model flags and a salt: the keys the server explains must be the ones the
        # independent Python implementation of the key spec computes.
        spec = {"model_id": "test/model", "weights_digest": "sha256:0123", "num_layers": 2,
                "num_kv_heads": 8, "head_dim": 128, "kv_dtype": "bf16", "block_tokens": 4,
                "tp_rank": 1, "tp_size": 2}
        salt = b"tenant-7"
        tokens = [5, 0, 4294967295, 17, 9, 9, 9, 9, 1, 2]
        inspected = self.json_of(
            "inspect", "--tokens", " ".join(str(t) for t in tokens),
            "--model-id", spec["model_id"], "--weights-digest", spec["weights_digest"],
            "--layers", str(spec["num_layers"]), "--kv-heads", str(spec["num_kv_heads"]),
            "--head-dim", str(spec["head_dim"]), "--kv-dtype", spec["kv_dtype"],
            "--block-tokens", str(spec["block_tokens"]), "--tp-rank", str(spec["tp_rank"]),
            "--tp-size", str(spec["tp_size"]), "--salt-hex", salt.hex())
        fp = self.keyspec.fingerprint(spec)
        root = self.keyspec.root(fp, salt)
        keys = self.keyspec.key_chain(root, tokens, spec["block_tokens"])
        self.assertEqual(inspected["fingerprint"], fp.hex())
        self.assertEqual(inspected["root"], root.hex())
        self.assertEqual([b["key"] for b in inspected["blocks"]], [k.hex() for k in keys])
        self.assertEqual([b["state"] for b in inspected["blocks"]], ["STATE_NEVER_STORED"] * 2)
        self.assertEqual(inspected["prefix_blocks"], 0)
        self.assertEqual(inspected["tail_tokens"], 2)

        # --salt is the same salt given as text.
        again = self.json_of("inspect", "--tokens", " ".join(str(t) for t in tokens),
                             "--model-id", spec["model_id"],
                             "--weights-digest", spec["weights_digest"],
                             "--layers", "2", "--kv-heads", "8", "--head-dim", "128",
                             "--kv-dtype", "bf16", "--block-tokens", "4", "--tp-rank", "1",
                             "--tp-size", "2", "--salt", salt.decode())
        self.assertEqual(again["root"], root.hex())

    def test_inspect_tokens_file(self):
        path = Path(self.workdir) / "tokens.txt"
        path.write_text("1 2 3 4\n5,6,7,8\n\t9 10 11 12 13 14 15 16\n17\n")
        from_file = self.json_of("inspect", "--tokens-file", str(path))
        inline = self.json_of("inspect", "--tokens", ",".join(str(t) for t in range(1, 18)))
        self.assertEqual(from_file, inline)
        self.assertEqual(len(from_file["blocks"]), 1)
        self.assertEqual(from_file["tail_tokens"], 1)

    def test_inspect_short_prompt_has_no_blocks(self):
        result = self.kvctl("inspect", "--tokens", "1,2,3")
        self.assertExit(result, 0)
        self.assertIn("prefix: 0 of 0 blocks cached; 3 tail tokens have no key", result.stdout)
        self.assertIn("shorter than one block", result.stdout)

    def test_inspect_by_keys(self):
        k0, k1 = "ab" * 32, "CD" * 32
        result = self.kvctl("inspect", "--key", k0, "--key", k1, "--full-keys")
        self.assertExit(result, 0)
        self.assertRegex(result.stdout, rf"\n\s+0\s+{k0}\s+never stored")
        self.assertRegex(result.stdout, rf"\n\s+1\s+{k1.lower()}\s+never stored")
        self.assertIn("prefix: 0 of 2 blocks cached\n", result.stdout)
        positional = self.json_of("inspect", k0, k1)
        self.assertEqual([b["key"] for b in positional["blocks"]], [k0, k1.lower()])

    def test_inspect_bad_input_is_a_usage_error(self):
        cases = [
            (("inspect", "--tokens", "1,2,x"), "token 3 is 'x'"),
            (("inspect", "--tokens", "1", "--block-tokens", "3"), "block_tokens"),
            (("inspect", "--tokens", "1", "--salt-hex", "xyz"), "--salt-hex"),
            (("inspect", "--tokens", "1", "--tokens-file", "/nonexistent"), "exactly one"),
            (("inspect",), "exactly one"),
            (("inspect", "--tokens-file", "/nonexistent/tokens"), "cannot read"),
            (("inspect", "--key", "ab" * 32, "--layers", "2"), "--tokens queries only"),
            (("inspect", "--key", "ab" * 31), "64 hex digits"),
        ]
        for args, message in cases:
            with self.subTest(args=args):
                result = self.kvctl(*args)
                self.assertExit(result, 2)
                self.assertIn(message, result.stderr)
                self.assertEqual(result.stdout, "")

    # evict, pin, unpin -------------------------------------------------------------------

    def test_malformed_key_is_refused_before_any_call(self):
        for command in ("evict", "pin", "unpin"):
            with self.subTest(command=command):
                result = self.kvctl(command, "xyz")
                self.assertExit(result, 2)
                self.assertIn(f"kvctl: {command}: 'xyz' is not a block key", result.stderr)
                self.assertIn("64 hex digits", result.stderr)
        # With several keys, the message says which one is wrong.
        result = self.kvctl("evict", "ab" * 32, "0" * 63 + "g")
        self.assertExit(result, 2)
        self.assertIn("key 2:", result.stderr)
        self.assertIn("non-hex", result.stderr)

    def test_unknown_key_is_not_found(self):
        for command in ("evict", "pin", "unpin"):
            with self.subTest(command=command):
                result = self.kvctl(command, "ab" * 32)
                self.assertExit(result, 1)
                self.assertTrue(result.stderr.startswith(f"kvctl: {command}: NOT_FOUND: "),
                                result.stderr)

    # watch -------------------------------------------------------------------------------

    def test_watch_for_a_duration_ends_cleanly(self):
        started = time.monotonic()
        result = self.kvctl("watch", "--duration", "1s")
        self.assertExit(result, 0)
        self.assertEqual(result.stdout, "")  # Nothing happened on this cache.
        self.assertGreaterEqual(time.monotonic() - started, 0.9)

    # errors and global options -----------------------------------------------------------

    def test_closed_port_exits_3_with_a_hint(self):
        address = f"127.0.0.1:{closed_port()}"
        for args in (("stats",), ("health",), ("ls",), ("watch",), ("evict", "ab" * 32)):
            with self.subTest(args=args):
                result = self.kvctl(*args, server=address)
                self.assertExit(result, 3)
                self.assertIn(f"kvctl: {args[0]}: UNAVAILABLE: ", result.stderr)
                self.assertIn(f"is a cache manager running at {address}?", result.stderr)
                self.assertIn("`tierkv up`", result.stderr)

    def test_server_from_environment(self):
        result = self.kvctl("health", server=None, env_server=self.server.address)
        self.assertExit(result, 0)
        self.assertEqual(result.stdout.strip(), "SERVING")
        # --server wins over the environment.
        result = self.kvctl("health", env_server=f"127.0.0.1:{closed_port()}")
        self.assertExit(result, 0)

    def test_usage_errors_exit_2(self):
        for args in ((), ("frobnicate",), ("--timeout", "soon", "stats"),
                     ("--timeout", "0s", "stats"), ("evict",), ("watch", "--duration", "x")):
            with self.subTest(args=args):
                self.assertExit(self.kvctl(*args), 2)

    def test_help_exits_0(self):
        result = self.kvctl("--help")
        self.assertExit(result, 0)
        for command in ("stats", "ls", "inspect", "evict", "pin", "unpin", "watch", "health",
                        "nodes", "drain"):
            self.assertIn(command, result.stdout)


class KvctlWithBlocksTest(unittest.TestCase):
    """kvctl on a cache that holds blocks: `tierkv up --demo` stores a 4096-token prompt
    (256 blocks in one chain) and a prompt sharing its first 192 blocks (64 more), then
    writes its port file."""

    tierkv_path = None
    server = None
    kvctl = KvctlTest.kvctl
    assertExit = KvctlTest.assertExit
    json_of = KvctlTest.json_of
    kvctl_path = None

    def chain(self):
        """Keys of the first chain (the long prompt), block 0 first, from ListBlocks."""
        blocks = self.json_of("ls", "--all")["blocks"]
        by_parent = {b["parent_key"]: b["key"] for b in blocks}
        roots = [b["key"] for b in blocks if b["parent_key"] == ""]
        self.assertEqual(len(roots), 1, "the demo's prompts share block 0")
        keys = [roots[0]]
        while keys[-1] in by_parent:
            keys.append(by_parent[keys[-1]])
        return keys

    # Named to run first (unittest orders tests by name): a later test evicts blocks.
    def test_0_stats_and_ls_show_the_demo_blocks(self):
        stats = self.json_of("stats")
        host = stats["tiers"][0]
        self.assertEqual(host["tier"], "TIER_HOST")
        self.assertEqual(host["blocks"], 320)
        self.assertEqual(host["bytes"], 320 * 128 * 1024)
        # `tierkv up` runs with an SSD tier (--data-dir); nothing was demoted yet.
        ssd = stats["tiers"][1]
        self.assertEqual(ssd["tier"], "TIER_SSD")
        self.assertEqual(ssd["capacity_bytes"], 256 << 20)
        self.assertEqual(ssd["blocks"], 0)
        self.assertEqual(stats["ssd_mode"], "write-back")
        text = self.kvctl("stats")
        self.assertExit(text, 0)
        self.assertRegex(text.stdout, r"\nssd\s+0\s+0 B\s+0 B\s+256 MiB\s")
        self.assertRegex(text.stdout, r"\nssd mode\s+write-back\n")
        self.assertRegex(text.stdout, r"\ndemotions\s+0\n")
        listed = self.json_of("ls", "--all")
        self.assertEqual(len(listed["blocks"]), 320)
        result = self.kvctl("ls", "--limit", "2")
        self.assertExit(result, 0)
        self.assertIn("of 320 blocks", result.stdout)

    def test_inspect_by_keys_finds_the_chain(self):
        keys = self.chain()
        self.assertGreaterEqual(len(keys), 192)
        result = self.kvctl("inspect", *keys[:5])
        self.assertExit(result, 0)
        states = re.findall(r"^\s*\d+\s+[0-9a-f]+\s+(\w+)", result.stdout, re.M)
        self.assertEqual(states, ["found"] * 5, result.stdout)
        self.assertIn("prefix: 5 of 5 blocks cached", result.stdout)

    def test_pin_blocks_evict_until_unpinned_and_inspect_says_evicted(self):
        keys = self.chain()
        leaf = keys[-1]
        parent = keys[-2]
        self.assertExit(self.kvctl("pin", leaf), 0)
        # Evicting the parent would take the pinned leaf with it: refused, nothing changes.
        refused = self.kvctl("evict", parent)
        self.assertExit(refused, 1)
        self.assertIn("FAILED_PRECONDITION", refused.stderr)
        self.assertIn("pinned", refused.stderr)
        before = self.json_of("stats")["tiers"][0]["blocks"]
        self.assertExit(self.kvctl("unpin", leaf), 0)
        self.assertExit(self.kvctl("evict", parent), 0)
        after = self.json_of("stats")["tiers"][0]["blocks"]
        self.assertEqual(before - after, 2)  # The parent and its descendant.
        explained = self.kvctl("inspect", *keys[-3:])
        self.assertExit(explained, 0)
        states = re.findall(r"^\s*\d+\s+[0-9a-f]+\s+(\w+)", explained.stdout, re.M)
        self.assertEqual(states, ["found", "evicted", "evicted"], explained.stdout)
        self.assertIn("requested", explained.stdout)

    def test_watch_replays_stored_events(self):
        result = self.kvctl("watch", "--from", "1", "--count", "3")
        self.assertExit(result, 0)
        lines = [l for l in result.stdout.splitlines() if l.strip()]
        self.assertEqual(len(lines), 3, result.stdout)
        for line in lines:
            self.assertIn("stored", line.lower())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kvctl", required=True, help="path of the kvctl binary")
    parser.add_argument("--cache-manager", required=True,
                        help="path of the tierkv-cache-manager binary")
    parser.add_argument("--tierkv", required=True,
                        help="path of the tierkv binary (its `up --demo` fills a cache)")
    args, unittest_args = parser.parse_known_args()

    KvctlTest.kvctl_path = args.kvctl
    KvctlWithBlocksTest.kvctl_path = args.kvctl
    KvctlTest.keyspec = load_key_spec()
    with tempfile.TemporaryDirectory(prefix="kvctl_test.") as workdir:
        with CacheManager(args.cache_manager, workdir) as server, \
                CacheManager(args.tierkv, Path(workdir) / "up", prefix=["up"],
                             extra=["--demo", "--data-dir", str(Path(workdir) / "up" / "data"),
                                    "--ssd-capacity", "256MiB"]) as filled:
            KvctlTest.server = server
            KvctlTest.workdir = workdir
            KvctlWithBlocksTest.server = filled
            program = unittest.main(argv=[sys.argv[0], *unittest_args], exit=False)
            ok = program.result.wasSuccessful()
            if not ok:
                print(f"--- cache manager log ---\n{server.log()}", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
