#!/usr/bin/python3
"""Writes the weight-file fixtures of packages/kernels (safetensors_test.ts, torch_bin_test.ts).

Run with Debian's python3 (it has torch): /usr/bin/python3 tools/fixtures_torch_bin.py
Output: tests/fixtures/kernels/ (each file a few KB).

- st_all_dtypes.safetensors + .json: every safetensors dtype, written by hand the way the Rust/Python
  `safetensors` library writes (the pip package may be absent): tensors sorted by dtype alignment
  descending then by name, compact JSON with __metadata__ first, header padded with spaces to a
  multiple of 8. The JSON holds each tensor's raw bytes (hex), its values converted to f32 (as u32
  bits, computed here independently of the TypeScript code) and integer values as decimal strings.
- torch_state.bin / torch_nested.bin / torch_legacy.bin + torch_expected.json: torch.save outputs
  (zip format; the nested one; the pre-1.6 legacy format, whose storage keys are memory addresses,
  so only that file differs between runs) and the expected values.
- torch_deflate.bin, torch_zip64.bin: torch_state.bin's entries repacked deflated / with zip64 records.
- torch_evil_*.bin: hand-written malicious pickles in torch-like zips (and one legacy-style raw
  pickle). Loading them must be refused; if anything ever executed them it would create
  /tmp/lvm_pickle_pwned, which the test checks does not exist.
"""
import collections
import io
import json
import os
import struct
import zipfile
import zlib

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "kernels")
PWNED = "/tmp/lvm_pickle_pwned"

# The library's Dtype enum order (increasing alignment): decides the file layout.
DTYPE_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32",
               "F32", "F64", "I64", "U64"]
DTYPE_SIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
              "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}


def f32_bits(values):
    """float32 bit patterns (as Python ints) of an array converted to float32."""
    return np.asarray(values, dtype=np.float32).view(np.uint32).ravel().tolist()


def fp8_value(b, fmt):
    """fp8 decoding written from the OCP/arXiv:2209.05433 definitions (E4M3 = the 'fn' variant)."""
    s = -1.0 if b & 0x80 else 1.0
    if fmt == "E4M3":
        e, m = (b >> 3) & 0xF, b & 7
        if e == 15 and m == 7:
            return float("nan")
        return s * (m / 8) * 2.0**-6 if e == 0 else s * (1 + m / 8) * 2.0 ** (e - 7)
    e, m = (b >> 2) & 0x1F, b & 3
    if e == 31:
        return float("nan") if m else s * float("inf")
    return s * (m / 4) * 2.0**-14 if e == 0 else s * (1 + m / 4) * 2.0 ** (e - 15)


def safetensors_bytes(tensors, metadata=None):
    """Serializes {name: (dtype, shape, raw bytes)} exactly as safetensors' `serialize` does."""
    items = sorted(tensors.items(), key=lambda kv: (-DTYPE_ORDER.index(kv[1][0]), kv[0]))
    header = {}
    if metadata is not None:
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    for name, (dtype, shape, raw) in items:
        assert len(raw) == int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(raw for _, (_, _, raw) in items)


def st_fixture():
    rng = np.random.default_rng(7)
    t = {}  # name -> (dtype, shape, numpy array or raw bytes, f32 values)

    def add(name, dtype, shape, arr):
        arr = np.ascontiguousarray(arr).reshape(shape)
        with np.errstate(over="ignore"):  # f64 -1e300 -> -inf in f32, on purpose
            t[name] = (dtype, list(shape), arr.tobytes(), arr.astype(np.float32))

    add("bool.mask", "BOOL", [2, 3], rng.integers(0, 2, 6).astype(np.bool_))
    add("u8", "U8", [7], np.array([0, 1, 2, 127, 128, 254, 255], np.uint8))
    add("i8", "I8", [5], np.array([-128, -1, 0, 1, 127], np.int8))
    add("i16", "I16", [3, 1], np.array([-32768, 12345, 32767], np.int16))
    add("u16", "U16", [3], np.array([0, 40000, 65535], np.uint16))
    add("i32", "I32", [2, 2], np.array([-2**31, -7, 16777217, 2**31 - 1], np.int32))
    add("u32", "U32", [3], np.array([0, 7, 2**32 - 1], np.uint32))
    add("i64", "I64", [4], np.array([-2**62, -5, 2**40 + 1, 2**53], np.int64))
    add("i64.small", "I64", [3], np.array([-2**31, 0, 2**31 - 1], np.int64))
    add("u64", "U64", [3], np.array([0, 2**33, 2**63 + 2**40], np.uint64))
    f32 = (rng.standard_normal(3 * 5 * 7) * 3).astype(np.float32)
    f32[:6] = [0.0, -0.0, np.inf, -np.inf, 3.4e38, 1e-45]
    add("f32.odd", "F32", [3, 5, 7], f32)
    add("f32.scalar", "F32", [], np.array(-300.0, np.float32))
    add("f32.empty", "F32", [2, 0, 3], np.zeros((2, 0, 3), np.float32))
    add("f64", "F64", [4], np.array([1 / 3, -1e300, 2.0**-1074, np.nan], np.float64))
    f16 = (rng.standard_normal(45) * 100).astype(np.float16)
    f16[:7] = [np.inf, -np.inf, np.nan, 6.0e-8, -6.1e-5, 65504, -0.0]  # incl. subnormals, max
    add("f16", "F16", [5, 9], f16)
    # bf16 via torch (numpy has no bfloat16): raw bits from an int16 view.
    bf = (torch.randn(4, 3, generator=torch.Generator().manual_seed(3)) * 300).to(torch.bfloat16)
    bf[0, 0], bf[0, 1], bf[0, 2] = float("inf"), float("nan"), 1e-40
    t["bf16"] = ("BF16", [4, 3], bf.view(torch.int16).numpy().tobytes(), bf.float().numpy())
    all_bytes = np.arange(256, dtype=np.uint8)
    for dt, fmt in (("F8_E4M3", "E4M3"), ("F8_E5M2", "E5M2")):
        vals = np.array([fp8_value(int(b), fmt) for b in all_bytes], np.float32)
        t[dt.lower()] = (dt, [16, 16], all_bytes.tobytes(), vals)
    t["unicodé.名前"] = ("F32", [2], np.array([1.5, -2.5], np.float32).tobytes(),
                          np.array([1.5, -2.5], np.float32))

    metadata = {"format": "pt", "note": "fixture \"quoted\"\n"}
    data = safetensors_bytes({k: (d, s, raw) for k, (d, s, raw, _) in t.items()}, metadata)
    with open(os.path.join(OUT, "st_all_dtypes.safetensors"), "wb") as f:
        f.write(data)
    expect = {"metadata": metadata, "tensors": {}}
    for name, (dtype, shape, raw, f32v) in t.items():
        e = {"dtype": dtype, "shape": shape, "hex": raw.hex(), "f32bits": f32_bits(f32v)}
        if dtype in ("BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64"):
            npdt = {"BOOL": np.uint8, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
                    "I32": np.int32, "U32": np.uint32, "I64": np.int64, "U64": np.uint64}[dtype]
            e["ints"] = [str(int(v)) for v in np.frombuffer(raw, npdt)]
        expect["tensors"][name] = e
    with open(os.path.join(OUT, "st_all_dtypes.json"), "w") as f:
        json.dump(expect, f, indent=1, ensure_ascii=False)


def describe(t):
    """Expected values of a tensor: dtype name, shape, f32 bits (floats) or decimal strings (ints)."""
    dtype = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
             torch.uint8: "U8", torch.bool: "BOOL"}[t.dtype]
    e = {"dtype": dtype, "shape": list(t.shape)}
    if t.dtype.is_floating_point:
        e["f32bits"] = f32_bits(t.detach().float().contiguous().numpy())
    else:
        e["ints"] = [str(int(v)) for v in t.reshape(-1).tolist()]
    return e


def torch_fixtures():
    g = torch.Generator().manual_seed(11)
    base = torch.randn(6, 5, generator=g)
    f16 = (torch.randn(7, generator=g) * 1000).half()
    f16[0] = float("inf")
    bf16 = (torch.randn(2, 3, generator=g) * 300).bfloat16()
    long_storage = torch.tensor([-2**62, -1, 0, 7, 2**40, 123456789], dtype=torch.int64)
    sd = collections.OrderedDict()
    sd["conv.weight"] = torch.randn(3, 2, 3, 3, generator=g)  # (out, in, kh, kw)
    sd["conv.bias"] = torch.nn.Parameter(torch.randn(3, generator=g))  # _rebuild_parameter
    sd["half"] = f16
    sd["bf16"] = bf16
    sd["f64"] = torch.tensor([1 / 3, -2.5, 1e300], dtype=torch.float64)
    sd["ids"] = long_storage
    sd["ids.view"] = long_storage[1:4]  # offset view sharing the storage
    sd["ids.strided"] = long_storage[::2]  # 8-byte elements, stride 2
    sd["transposed"] = base.t()  # stride (1, 5): non-contiguous
    sd["strided"] = base[::2, 1::2]  # offset + steps
    sd["expanded"] = torch.arange(3.0).reshape(3, 1).expand(3, 4)  # stride 0
    sd["scalar"] = torch.tensor(-300.0)
    sd["empty"] = torch.zeros(0, 4)
    sd["flags"] = torch.tensor([True, False, True])
    sd["i8"] = torch.tensor([-128, 5, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 200, 255], dtype=torch.uint8)
    sd["i16"] = torch.tensor([-30000, 2, 30000], dtype=torch.int16)
    sd["i32"] = torch.tensor([-2**31, 3, 2**31 - 1], dtype=torch.int32)
    torch.save(sd, os.path.join(OUT, "torch_state.bin"))

    nested = {
        "state_dict": collections.OrderedDict([("enc.w", base[:2].clone()), ("enc.b", torch.ones(2))]),
        "model": {"head": {"w": torch.full((2, 2), 0.5)}},
        "epoch": 3,
        "name": "vqgan",
        "lr": 1e-4,
        "layers": [torch.tensor([1.0]), torch.tensor([2.0])],
    }
    torch.save(nested, os.path.join(OUT, "torch_nested.bin"))

    # protocol 4: FRAME, MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL of the allowed globals
    proto4 = collections.OrderedDict([("w", base[:3, :2].clone()), ("h", f16[:3].clone()),
                                      ("t", base[:2].t())])
    torch.save(proto4, os.path.join(OUT, "torch_proto4.bin"), pickle_protocol=4)

    legacy = collections.OrderedDict([("a", base.clone()), ("b", f16.clone()), ("c", long_storage[2:5]),
                                      ("d", base.t())])
    torch.save(legacy, os.path.join(OUT, "torch_legacy.bin"), _use_new_zipfile_serialization=False)

    expect = {
        "torch_state.bin": {k: describe(v) for k, v in sd.items()},
        "torch_nested.bin": {
            "state_dict.enc.w": describe(nested["state_dict"]["enc.w"]),
            "state_dict.enc.b": describe(nested["state_dict"]["enc.b"]),
            "model.head.w": describe(nested["model"]["head"]["w"]),
            "layers.0": describe(nested["layers"][0]),
            "layers.1": describe(nested["layers"][1]),
        },
        "torch_nested.bin.metadata": {"epoch": "3", "name": "vqgan", "lr": "0.0001"},
        "torch_legacy.bin": {k: describe(v) for k, v in legacy.items()},
        "torch_proto4.bin": {k: describe(v) for k, v in proto4.items()},
    }
    with open(os.path.join(OUT, "torch_expected.json"), "w") as f:
        json.dump(expect, f, indent=1)

    # Repacks: deflate, and zip64 (records written by hand: zipfile only uses zip64 when it must).
    src = zipfile.ZipFile(os.path.join(OUT, "torch_state.bin"))
    entries = [(i.filename, src.read(i.filename)) for i in src.infolist()]
    with zipfile.ZipFile(os.path.join(OUT, "torch_deflate.bin"), "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(zip_info(name, zipfile.ZIP_DEFLATED), data)
    with open(os.path.join(OUT, "torch_zip64.bin"), "wb") as f:
        f.write(zip64_bytes([(n.replace("torch_state/", "torch_zip64/"), d) for n, d in entries]))


def zip_info(name, compress=zipfile.ZIP_STORED):
    """A zip entry with a fixed timestamp, so reruns write identical files."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = compress
    return info


def zip64_bytes(entries):
    """A stored zip whose central directory entries and end record use zip64 fields."""
    out = io.BytesIO()
    central = []
    for name, data in entries:
        nb = name.encode()
        crc = zlib.crc32(data)
        off = out.tell()
        # local header: sizes 0xFFFFFFFF + zip64 extra (usize, csize)
        extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                              len(nb), len(extra)) + nb + extra + data)
        cextra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), off)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF,
                                   0xFFFFFFFF, len(nb), len(cextra), 0, 0, 0, 0, 0xFFFFFFFF) + nb + cextra)
    cd_off = out.tell()
    for c in central:
        out.write(c)
    cd_size = out.tell() - cd_off
    z64 = out.tell()
    out.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(entries), len(entries), cd_size,
                          cd_off))
    out.write(struct.pack("<IIQI", 0x07064B50, 0, z64, 1))
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))
    return out.getvalue()


def plain_pickles():
    """Plain-data pickles of every protocol (no globals), for the unpickler's opcode coverage."""
    import pickle
    shared = [1, 2]
    obj = {"int": 5, "neg": -300, "i2": 40000, "i4": -70000, "big": 2**70, "negbig": -2**65,
           "float": 2.5, "tiny": 1e-300, "list": [1, [2, 3], None, True, False],
           "tuple": (1, "two", 3.0), "t1": (7,), "t0": (), "str": "héllo ✓ \\ \n",
           "nested": {"k": {"x": 1}}, "empty": {}, "many": list(range(300)), "shared": [shared, shared],
           3: "int key"}
    def enc(v):
        if isinstance(v, bool) or v is None or isinstance(v, (str, float)):
            return v
        if isinstance(v, int):
            return v if abs(v) < 2**53 else {"bigint": str(v)}
        if isinstance(v, (list, tuple)):
            return [enc(x) for x in v]
        return {"dict": [[enc(k), enc(x)] for k, x in v.items()]}
    out = {"expected": enc(obj), "pickles": {}}
    for proto in range(0, 6):
        out["pickles"][str(proto)] = pickle.dumps(obj, protocol=proto).hex()
    # protocol 3+ bytes and 4+ sets (in protocols < 3/4 they need globals, which are refused)
    extra = {"bytes": b"\x00\xffab", "set": {1, 2}, "frozen": frozenset([3])}
    out["extra_expected"] = {"dict": [["bytes", {"bytes": "00ff6162"}], ["set", {"set": [1, 2]}],
                                      ["frozen", {"set": [3]}]]}
    out["extra_pickle"] = pickle.dumps(extra, protocol=4).hex()
    with open(os.path.join(OUT, "pickle_plain.json"), "w") as f:
        json.dump(out, f, indent=1)


def binunicode(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def evil_fixtures():
    cmd = f"touch {PWNED}"
    # GLOBAL os.system inside what looks like a state dict: {'a': os.system(cmd)}
    os_system = (b"\x80\x02}q\x00(" + binunicode("a") + b"cos\nsystem\nq\x01" + binunicode(cmd) +
                 b"\x85R" + b"u.")
    # protocol 4 STACK_GLOBAL builtins.eval
    src = f"__import__('os').system('{cmd}')".encode()
    stack_global = (b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x94\x8c" + bytes([len(src)]) + src +
                    b"\x94\x85\x94R\x94.")
    # torch.storage._load_from_bytes (runs torch.load on arbitrary bytes): not allowed either
    load_from_bytes = b"\x80\x02ctorch.storage\n_load_from_bytes\nq\x00C\x03abcq\x01\x85R."
    for name, pkl in (("os_system", os_system), ("stack_global", stack_global),
                      ("load_from_bytes", load_from_bytes)):
        path = os.path.join(OUT, f"torch_evil_{name}.bin")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            z.writestr(zip_info(f"torch_evil_{name}/data.pkl"), pkl)
            z.writestr(zip_info(f"torch_evil_{name}/version"), "3\n")
    # legacy-style (not a zip): the first pickle is the payload, `posix.system` as pickle writes it
    with open(os.path.join(OUT, "torch_evil_legacy.bin"), "wb") as f:
        f.write(b"\x80\x02cposix\nsystem\nq\x00" + binunicode(cmd) + b"\x85R.")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    st_fixture()
    torch_fixtures()
    evil_fixtures()
    plain_pickles()
    for f in sorted(os.listdir(OUT)):
        if f.startswith(("st_", "torch_", "pickle_")):
            print(f"{os.path.getsize(os.path.join(OUT, f)):7d} B  tests/fixtures/kernels/{f}")
