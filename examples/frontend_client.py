#!/usr/bin/env python3
"""A frontend of tierkv in Python: computes block keys itself, calls Prefill then Generate.

It talks to a running `tierkv up` (all services on one port), sends a prompt to the prefill
worker, streams tokens from the decode worker, then recomputes the prompt's block keys from
the key spec (docs/block-keys.md) under the model spec the worker reported, and checks them
against what the cache manager's Lookup finds. With --check it exits 1 when anything
disagrees (the test suite runs it that way).

    python3 examples/frontend_client.py --server 127.0.0.1:7471 --stubs build/examples/python

Needs Debian's python3-grpcio and python3-protobuf, and the stubs the build generates.
"""

import argparse
import hashlib
import random
import struct
import sys
import time


def field(data: bytes) -> bytes:
    """A length-prefixed field of the fingerprint: u32le(len) || bytes."""
    return struct.pack("<I", len(data)) + data


def fingerprint(spec) -> bytes:
    parts = ["tierkv.v1", spec.model_id, spec.weights_digest, str(spec.num_layers),
             str(spec.num_kv_heads), str(spec.head_dim), spec.kv_dtype,
             str(spec.block_tokens), str(spec.tp_rank), str(spec.tp_size)]
    return hashlib.sha256(b"".join(field(p.encode("utf-8")) for p in parts)).digest()


def block_keys(spec, salt: bytes, tokens):
    """Keys of every full block of `tokens`: key[i] = SHA-256(key[i-1] || u32le tokens)."""
    prev = hashlib.sha256(b"tierkv.v1/root" + fingerprint(spec) + field(salt)).digest()
    keys = []
    n = spec.block_tokens
    for start in range(0, len(tokens) - len(tokens) % n, n):
        prev = hashlib.sha256(prev + struct.pack(f"<{n}I", *tokens[start:start + n])).digest()
        keys.append(prev)
    return keys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:7471",
                        help="tierkv up's address (every service on one port)")
    parser.add_argument("--prefill", help="prefill worker's address (default: --server)")
    parser.add_argument("--decode", help="decode worker's address (default: --server)")
    parser.add_argument("--cache", help="cache manager's address (default: --server)")
    parser.add_argument("--stubs", required=True, help="folder with the generated tierkv/v1 stubs")
    parser.add_argument("--tokens", type=int, default=600, help="prompt length")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens to generate")
    parser.add_argument("--seed", type=int, default=7, help="prompt token seed")
    parser.add_argument("--salt", default="", help="tenant cache salt")
    parser.add_argument("--check", action="store_true", help="exit 1 on any disagreement")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per call")
    args = parser.parse_args()

    sys.path.insert(0, args.stubs)
    import grpc
    from tierkv.v1 import cache_service_pb2, cache_service_pb2_grpc
    from tierkv.v1 import decode_service_pb2, decode_service_pb2_grpc
    from tierkv.v1 import prefill_service_pb2, prefill_service_pb2_grpc

    failures = []

    def expect(ok, what):
        print(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            failures.append(what)

    def channel(address):
        return grpc.insecure_channel(address or args.server)

    prefill = prefill_service_pb2_grpc.PrefillServiceStub(channel(args.prefill))
    decode = decode_service_pb2_grpc.DecodeServiceStub(channel(args.decode))
    cache = cache_service_pb2_grpc.CacheServiceStub(channel(args.cache))

    rng = random.Random(args.seed)
    tokens = [rng.randrange(1, 32000) for _ in range(args.tokens)]
    salt = args.salt.encode("utf-8")

    t0 = time.monotonic()
    first = prefill.Prefill(prefill_service_pb2.PrefillRequest(tokens=tokens, salt=salt),
                            timeout=args.timeout)
    print(f"prefill: first token {first.first_token}, {first.cached_tokens} cached / "
          f"{first.computed_tokens} computed tokens, {first.stored_blocks} blocks stored, "
          f"{(time.monotonic() - t0) * 1e3:.1f} ms")
    spec = first.model

    generated = []
    last = None
    for message in decode.Generate(
            decode_service_pb2.GenerateRequest(tokens=tokens, salt=salt,
                                               max_new_tokens=args.new_tokens),
            timeout=args.timeout):
        generated.extend(message.tokens)
        last = message
    print(f"generate: {generated} ({last.finish_reason}), {last.cached_tokens} cached / "
          f"{last.computed_tokens} computed tokens, first token after "
          f"{last.timing.first_token_ms:.1f} ms")

    keys = block_keys(spec, salt, tokens)
    found = cache.Lookup(cache_service_pb2.LookupRequest(keys=b"".join(keys),
                                                         fingerprint=fingerprint(spec)),
                         timeout=args.timeout)
    full = len(tokens) // spec.block_tokens
    expect(len(keys) == full, f"{len(keys)} keys for {len(tokens)} tokens of "
                              f"{spec.block_tokens}-token blocks")
    expect(found.found == full, f"Lookup with keys computed here finds {found.found} of "
                                f"{full} blocks")
    expect(generated and generated[0] == first.first_token,
           "Generate's first token equals Prefill's")
    expect(last.cached_tokens == full * spec.block_tokens,
           f"Generate reused {last.cached_tokens} cached tokens")

    again = prefill.Prefill(prefill_service_pb2.PrefillRequest(tokens=tokens, salt=salt),
                            timeout=args.timeout)
    expect(again.cached_tokens == full * spec.block_tokens and again.stored_blocks == 0,
           f"a second Prefill reuses {again.cached_tokens} tokens and stores nothing")
    expect(again.first_token == first.first_token, "and yields the same first token")

    other = prefill.Prefill(prefill_service_pb2.PrefillRequest(tokens=tokens, salt=b"tenant-b"),
                            timeout=args.timeout)
    expect(other.cached_tokens == 0, "another tenant's salt shares nothing")

    if failures and args.check:
        sys.exit(1)


if __name__ == "__main__":
    main()
