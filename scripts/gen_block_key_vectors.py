#!/usr/bin/env python3
"""Test vectors for the tierkv block key contract (docs/block-keys.md).

This is a second implementation of the model fingerprint, root and key chain, written from
the spec with nothing but the Python standard library, so that the C++ code in
core/block_key.cc and this script check each other: core/block_key_test.cc recomputes every
vector written here, and `--check` recomputes the committed file from scratch.

    scripts/gen_block_key_vectors.py            # rewrite docs/block_key_vectors.json
    scripts/gen_block_key_vectors.py --check    # exit 1 if the committed file differs
"""

import argparse
import hashlib
import json
import struct
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "block_key_vectors.json"

# Field order of the fingerprint after the "tierkv.v1" domain string.
SPEC_FIELDS = (
    "model_id",
    "weights_digest",
    "num_layers",
    "num_kv_heads",
    "head_dim",
    "kv_dtype",
    "block_tokens",
    "tp_rank",
    "tp_size",
)
INT_FIELDS = {"num_layers", "num_kv_heads", "head_dim", "block_tokens", "tp_rank", "tp_size"}


def u32le(n):
    return struct.pack("<I", n)


def field(value):
    """One fingerprint field: u32le(byte length) followed by the UTF-8 bytes."""
    if isinstance(value, bool):
        raise TypeError("booleans are not spec fields")
    if isinstance(value, int):
        value = str(value)  # Integers are hashed as their decimal string.
    data = value.encode("utf-8")
    return u32le(len(data)) + data


def fingerprint(spec):
    h = hashlib.sha256()
    h.update(field("tierkv.v1"))
    for name in SPEC_FIELDS:
        h.update(field(spec[name]))
    return h.digest()


def root(fp, salt):
    # The domain string here is raw (no length prefix); the salt is length-prefixed.
    return hashlib.sha256(b"tierkv.v1/root" + fp + u32le(len(salt)) + salt).digest()


def key_chain(root_digest, tokens, block_tokens):
    keys = []
    parent = root_digest
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        block = tokens[start:start + block_tokens]
        parent = hashlib.sha256(parent + struct.pack("<%dI" % len(block), *block)).digest()
        keys.append(parent)
    return keys


def tiny_spec():
    return {
        "model_id": "builtin:tiny",
        "weights_digest": "seed:1234",
        "num_layers": 4,
        "num_kv_heads": 4,
        "head_dim": 64,
        "kv_dtype": "fp32",
        "block_tokens": 16,
        "tp_rank": 0,
        "tp_size": 1,
    }


def spec_with(**overrides):
    spec = tiny_spec()
    spec.update(overrides)
    return spec


class TokenStream:
    """Pseudo-random token ids from a fixed 64-bit LCG (Knuth's MMIX constants).

    Spelled out rather than taken from `random` so the vectors cannot change with the Python
    version.
    """

    def __init__(self, seed):
        self.state = seed & 0xFFFFFFFFFFFFFFFF

    def take(self, count, vocab):
        out = []
        for _ in range(count):
            self.state = (self.state * 6364136223846793005 + 1442695040888963407) \
                & 0xFFFFFFFFFFFFFFFF
            out.append((self.state >> 33) % vocab)
        return out


def make_cases():
    """(name, spec, salt bytes, tokens); all token lists are deterministic."""
    rng = TokenStream(20240601)
    llama = {
        "model_id": "meta-llama/Llama-3.1-8B-Instruct",
        "weights_digest": "sha256:0d8f9d2b7c1e4a6f",
        "num_layers": 32,
        "num_kv_heads": 8,
        "head_dim": 128,
        "kv_dtype": "bf16",
        "block_tokens": 16,
        "tp_rank": 0,
        "tp_size": 1,
    }
    return [
        ("builtin:tiny, empty salt, two full blocks",
         tiny_spec(), b"", list(range(1, 33))),
        ("builtin:tiny, tenant salt, same tokens as the first vector",
         tiny_spec(), b"tenant-a", list(range(1, 33))),
        ("builtin:tiny, 40 tokens: two full blocks and a partial block with no key",
         tiny_spec(), b"", [1000 + 7 * i for i in range(40)]),
        ("builtin:tiny, 15 tokens: shorter than one block, no keys",
         tiny_spec(), b"", list(range(100, 115))),
        ("builtin:tiny, no tokens",
         tiny_spec(), b"", []),
        ("llama-like bf16, block_tokens 64, three full blocks and a partial one",
         dict(llama, block_tokens=64), b"", rng.take(200, 128256)),
        ("token ids above 65535 up to 2^32-1",
         tiny_spec(), b"",
         [65535, 65536, 65537, 70000, 100000, 1 << 20, 1 << 24, 0x7FFFFFFF,
          0x80000000, 0xDEADBEEF, 0xFFFFFFFE, 0xFFFFFFFF, 0, 1, 255, 256]
         + [0xFFFFFFFF - i for i in range(16)]),
        ("tp_size 4, tp_rank 2, fp16, non-ASCII UTF-8 model_id and salt",
         dict(llama, model_id="acme/模型-7B-ü", kv_dtype="fp16", tp_rank=2, tp_size=4),
         "tenant-ü/東京".encode("utf-8"),
         rng.take(48, 32000)),
        ("same as the previous vector but tp_rank 3: a different fingerprint",
         dict(llama, model_id="acme/模型-7B-ü", kv_dtype="fp16", tp_rank=3, tp_size=4),
         "tenant-ü/東京".encode("utf-8"),
         None),  # Filled in below with the previous vector's tokens.
        ("block_tokens 1: every token is a block",
         spec_with(block_tokens=1), b"", [5, 6, 7]),
    ]


def build_vectors():
    vectors = []
    prev_tokens = None
    for name, spec, salt, tokens in make_cases():
        if tokens is None:
            tokens = prev_tokens
        prev_tokens = tokens
        for t in tokens:
            if not 0 <= t <= 0xFFFFFFFF:
                raise ValueError("token id %d does not fit u32" % t)
        fp = fingerprint(spec)
        rt = root(fp, salt)
        keys = key_chain(rt, tokens, spec["block_tokens"])
        assert len(keys) == len(tokens) // spec["block_tokens"]
        vectors.append({
            "name": name,
            "model_spec": {k: spec[k] for k in SPEC_FIELDS},
            "salt_hex": salt.hex(),
            "tokens": tokens,
            "fingerprint_hex": fp.hex(),
            "root_hex": rt.hex(),
            "keys_hex": [k.hex() for k in keys],
        })
    return vectors


def render(vectors):
    # Indented, but each token list on one line so the file stays short and diffable.
    placeholder = "@@TOKENS@@"
    parts = []
    for v in vectors:
        text = json.dumps(dict(v, tokens=placeholder), indent=2, ensure_ascii=False)
        text = text.replace(json.dumps(placeholder), json.dumps(v["tokens"]))
        parts.append("  " + text.replace("\n", "\n  "))
    return "[\n" + ",\n".join(parts) + "\n]\n"


def check_file(path, expected_vectors):
    """Recomputes each committed vector from its own inputs and compares with the generator."""
    try:
        committed = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        print("cannot read %s: %s" % (path, e), file=sys.stderr)
        return 1
    errors = []
    # 1. Every committed vector must be self-consistent under this implementation.
    for i, v in enumerate(committed):
        label = "vector %d" % i
        try:
            label = "vector %d (%s)" % (i, v.get("name", "?"))
            spec = v["model_spec"]
            salt = bytes.fromhex(v["salt_hex"])
            fp = fingerprint(spec)
            rt = root(fp, salt)
            keys = [k.hex() for k in key_chain(rt, v["tokens"], spec["block_tokens"])]
        except (AttributeError, KeyError, TypeError, ValueError, struct.error) as e:
            errors.append("%s: malformed: %r" % (label, e))
            continue
        if fp.hex() != v["fingerprint_hex"]:
            errors.append("%s: fingerprint %s, file has %s" % (label, fp.hex(),
                                                               v["fingerprint_hex"]))
        if rt.hex() != v["root_hex"]:
            errors.append("%s: root %s, file has %s" % (label, rt.hex(), v["root_hex"]))
        if keys != v["keys_hex"]:
            errors.append("%s: keys %s, file has %s" % (label, keys, v["keys_hex"]))
    # 2. The file must be exactly what the generator writes (no stale or hand-edited vectors).
    if committed != expected_vectors:
        errors.append("%s differs from what this script generates; rerun it" % path)
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        return 1
    print("%s: %d vectors OK" % (path, len(committed)))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed file instead of writing it")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="vectors file (default: %(default)s)")
    args = parser.parse_args()
    vectors = build_vectors()
    if args.check:
        return check_file(args.out, vectors)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(vectors), encoding="utf-8")
    print("wrote %d vectors to %s" % (len(vectors), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
