import { join } from "node:path";
import {
  encodeSafetensors,
  encodeTensor,
  fromF32,
  readTyped,
  SafetensorsError,
  SafetensorsReader,
  ST_DTYPE_SIZE,
  type StDType,
  type TensorEntry,
  toBigInt64,
  toF32,
  toI32,
} from "./safetensors.ts";
import {
  openCheckpoint,
  SafetensorsFile,
  SafetensorsWriter,
  writeSafetensors,
  writeShardedSafetensors,
} from "./fs.ts";
import { bf16BitsToF32, f16BitsToF32, f32ToF16Bits } from "@lvm/util";
import { assertEquals, rng } from "@lvm/util/testing";

// Assertions: @lvm/util/testing's, plus pattern and several-word checks of error messages.
function assert(cond: unknown, msg = "assertion failed"): asserts cond {
  if (!cond) throw new Error(msg);
}
function check(e: unknown, cls: new (...a: any[]) => Error, pattern?: string | RegExp): Error {
  assert(e instanceof cls, `expected ${cls.name}, got ${e}`);
  if (typeof pattern === "string") {
    assert(e.message.includes(pattern), `"${e.message}" should include "${pattern}"`);
  } else if (pattern) assert(pattern.test(e.message), `"${e.message}" should match ${pattern}`);
  return e;
}
function assertThrows(
  fn: () => unknown,
  cls: new (...a: any[]) => Error = Error,
  pattern?: string | RegExp,
): Error {
  try {
    fn();
  } catch (e) {
    return check(e, cls, pattern);
  }
  throw new Error(`expected ${cls.name} to be thrown`);
}
async function assertRejects(
  fn: () => Promise<unknown>,
  cls: new (...a: any[]) => Error = Error,
  pattern?: string | RegExp,
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    return check(e, cls, pattern);
  }
  throw new Error(`expected a rejection with ${cls.name}`);
}

const FIXTURES = new URL("../../tests/fixtures/kernels/", import.meta.url).pathname;

function hex(s: string): Uint8Array {
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Bitwise equality of f32 arrays, NaN matching any NaN. */
function assertSameF32(got: Float32Array, wantBits: ArrayLike<number>, label: string) {
  assertEquals(got.length, wantBits.length, `${label}: length`);
  const g = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const w = new Float32Array(new Uint32Array(Array.from(wantBits)).buffer);
  for (let i = 0; i < got.length; i++) {
    if (Number.isNaN(got[i]) && Number.isNaN(w[i])) continue;
    if (g[i] !== (wantBits[i] >>> 0)) {
      throw new Error(
        `${label}[${i}]: got ${got[i]} (0x${g[i].toString(16)}), want ${w[i]} (0x${
          (wantBits[i] >>> 0).toString(16)
        })`,
      );
    }
  }
}

/** Asserts `p` rejects with a SafetensorsError whose message names `path` and contains `words`. */
async function assertStError(p: Promise<unknown>, path: string, ...words: string[]) {
  const e = await assertRejects(() => p, SafetensorsError) as unknown as SafetensorsError;
  assert(e.message.includes(path), `message should name the file: ${e.message}`);
  for (const w of words) {
    assert(e.message.includes(w), `message should mention "${w}": ${e.message}`);
  }
}

function randomBytes(n: number, seed: number): Uint8Array {
  const r = rng(seed);
  return Uint8Array.from({ length: n }, () => Math.floor(r() * 256));
}

const ALL_DTYPES = Object.keys(ST_DTYPE_SIZE) as StDType[];

Deno.test("toF32()", async (t) => {
  await t.step("every f16 and bf16 bit pattern matches the scalar references", () => {
    const bits = new Uint16Array(65536).map((_, i) => i);
    const bytes = new Uint8Array(bits.buffer);
    const f16 = toF32("F16", bytes);
    const bf16 = toF32("BF16", bytes);
    for (let i = 0; i < 65536; i++) {
      const a = f16BitsToF32(i), b = bf16BitsToF32(i);
      if (!(Object.is(f16[i], Math.fround(a)) || (Number.isNaN(a) && Number.isNaN(f16[i])))) {
        throw new Error(`F16 0x${i.toString(16)}: got ${f16[i]}, want ${a}`);
      }
      if (!(Object.is(bf16[i], b) || (Number.isNaN(b) && Number.isNaN(bf16[i])))) {
        throw new Error(`BF16 0x${i.toString(16)}: got ${bf16[i]}, want ${b}`);
      }
    }
  });
  await t.step("unaligned input is copied, F32 aligned input is a view", () => {
    const buf = new Uint8Array(9);
    new DataView(buf.buffer).setFloat32(1, -1.5, true);
    new DataView(buf.buffer).setFloat32(5, 300, true);
    assertEquals(Array.from(toF32("F32", buf.subarray(1))), [-1.5, 300]);
    const al = new Uint8Array(new Float32Array([2, 3]).buffer);
    assert(toF32("F32", al).buffer === al.buffer, "F32 aligned input should be a view");
  });
  await t.step("into a caller's buffer", () => {
    const out = new Float32Array(2);
    const bf = new Uint8Array([0x80, 0x3f, 0x00, 0xc0]);
    assert(toF32("BF16", bf, "x", out) === out);
    assertEquals(Array.from(out), [1, -2]);
    const f = new Uint8Array(new Float32Array([5, -7]).buffer);
    assertEquals(Array.from(toF32("F32", f, "x", out)), [5, -7]);
    assertEquals(Array.from(toF32("I16", new Uint8Array([1, 0, 0xff, 0xff]), "x", out)), [1, -1]);
    assertThrows(() => toF32("F32", f, "x", new Float32Array(3)), RangeError, "x: output holds 3");
  });
  await t.step("integers: exact, I64 beyond 2^31 and negative", () => {
    const i64 = new BigInt64Array([-(2n ** 40n), -1n, 0n, 2n ** 33n + 1n]);
    assertEquals(Array.from(toF32("I64", new Uint8Array(i64.buffer))), [
      -(2 ** 40),
      -1,
      0,
      2 ** 33,
    ]);
    const u64 = new BigUint64Array([2n ** 63n, 5n]);
    assertEquals(Array.from(toF32("U64", new Uint8Array(u64.buffer))), [2 ** 63, 5]);
    assertEquals(Array.from(toF32("I8", new Uint8Array([0x80, 0x7f]))), [-128, 127]);
    assertEquals(Array.from(toF32("BOOL", new Uint8Array([0, 1, 1]))), [0, 1, 1]);
  });
  await t.step("fromF32 rounds to nearest even (BF16, F16) and keeps NaN/Inf", () => {
    const v = new Float32Array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -300, Infinity, NaN, 3e38, 1e-41]);
    const bf = toF32("BF16", fromF32("BF16", v));
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even -> 1; 1 + 3*2^-8 -> 1 + 2^-6.
    assertEquals(Array.from(bf.subarray(0, 4)), [1, 1 + 2 ** -6, -300, Infinity]);
    assert(Number.isNaN(bf[4]));
    assert(Math.abs(bf[5] - 3e38) / 3e38 < 2 ** -8);
    const f16 = toF32("F16", fromF32("F16", v));
    for (let i = 0; i < v.length; i++) {
      const want = f16BitsToF32(f32ToF16Bits(v[i]));
      assert(
        Object.is(f16[i], want) || (Number.isNaN(want) && Number.isNaN(f16[i])),
        `F16 ${v[i]}`,
      );
    }
    assertThrows(() => fromF32("F8_E4M3", v), TypeError);
  });
  await t.step("fromF32 F16 equals tensor.ts f32ToF16Bits on random bit patterns and edges", () => {
    const r = rng(9);
    const bits = Uint32Array.from({ length: 200_000 }, () => Math.floor(r() * 2 ** 32));
    // edges: halfway cases, max half, subnormal boundaries, overflow threshold
    bits.set(
      new Uint32Array(
        new Float32Array([
          65504,
          65520,
          65519.99,
          2 ** -24,
          2 ** -25,
          3 * 2 ** -26,
          2 ** -14,
          -0,
          1 + 2 ** -11,
          1 + 3 * 2 ** -11,
        ]).buffer,
      ),
    );
    const v = new Float32Array(bits.buffer);
    const got = new Uint16Array(fromF32("F16", v).buffer);
    for (let i = 0; i < v.length; i++) {
      if (got[i] !== f32ToF16Bits(v[i])) {
        throw new Error(
          `${v[i]} (0x${bits[i].toString(16)}): got 0x${got[i].toString(16)}, want 0x${
            f32ToF16Bits(v[i]).toString(16)
          }`,
        );
      }
    }
  });
  await t.step("toI32 / toBigInt64 range checks", () => {
    const ok = new BigInt64Array([-(2n ** 31n), 2n ** 31n - 1n, 0n]);
    assertEquals(Array.from(toI32("I64", new Uint8Array(ok.buffer))), [-(2 ** 31), 2 ** 31 - 1, 0]);
    const big = new BigInt64Array([1n, 2n ** 31n]);
    assertThrows(
      () => toI32("I64", new Uint8Array(big.buffer), "ids"),
      RangeError,
      /ids: I64 element 1 = 2147483648/,
    );
    const neg = new BigInt64Array([-(2n ** 31n) - 1n]);
    assertThrows(() => toI32("I64", new Uint8Array(neg.buffer)), RangeError);
    assertThrows(() => toI32("U32", new Uint8Array(new Uint32Array([2 ** 31]).buffer)), RangeError);
    assertThrows(() => toI32("F32", new Uint8Array(4)), TypeError);
    const u = new BigUint64Array([2n ** 63n]);
    assertThrows(
      () => toBigInt64("U64", new Uint8Array(u.buffer)),
      RangeError,
      /outside the int64 range/,
    );
    assertEquals(Array.from(toBigInt64("I16", new Uint8Array(new Int16Array([-5, 9]).buffer))), [
      -5n,
      9n,
    ]);
    assertThrows(
      () => toF32("F32", new Uint8Array(5), "w"),
      RangeError,
      /w: 5 bytes is not a whole number/,
    );
  });
});

Deno.test("encodeTensor()", async (t) => {
  await t.step("native arrays stored as is, others converted with range checks", () => {
    const f = new Float32Array([1, 2]);
    assert(encodeTensor("a", { dtype: "F32", shape: [2], data: f }).buffer === f.buffer);
    assertEquals(
      Array.from(
        new BigInt64Array(
          encodeTensor("a", { dtype: "I64", shape: [3], data: new Int32Array([-1, 0, 7]) }).buffer,
        ),
      ),
      [-1n, 0n, 7n],
    );
    assertEquals(
      Array.from(
        encodeTensor("a", { dtype: "I8", shape: [2], data: new Float32Array([-128, 127]) }),
      ),
      [0x80, 0x7f],
    );
    assertThrows(
      () => encodeTensor("a", { dtype: "I8", shape: [1], data: new Float32Array([128]) }),
      RangeError,
      /"a": element 0 = 128/,
    );
    assertThrows(
      () => encodeTensor("a", { dtype: "I32", shape: [1], data: new Float32Array([0.5]) }),
      RangeError,
    );
    assertThrows(
      () => encodeTensor("a", { dtype: "U64", shape: [1], data: new Int32Array([-1]) }),
      RangeError,
    );
    assertThrows(
      () => encodeTensor("w", { dtype: "F32", shape: [3], data: new Float32Array(2) }),
      RangeError,
      /"w": 2 elements given for shape \[3\], expected 3/,
    );
    assertThrows(
      () => encodeTensor("w", { dtype: "F16", shape: [3], data: new Uint8Array(5) }),
      RangeError,
      /5 bytes given/,
    );
    assertThrows(
      () => encodeTensor("w", { dtype: "X" as StDType, shape: [1], data: new Uint8Array(1) }),
      TypeError,
      /unknown dtype "X"/,
    );
    assertThrows(
      () => encodeTensor("w", { dtype: "F32", shape: [-1], data: new Float32Array(0) }),
      RangeError,
    );
    assertThrows(
      () => encodeTensor("m", { dtype: "BOOL", shape: [2], data: new Uint8Array([1, 2]) }),
      RangeError,
    );
  });
});

Deno.test("writeSafetensors() / SafetensorsFile round trip", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "st_test_" });
  try {
    await t.step("every dtype, odd shapes, scalar and 0-size tensors", async () => {
      const shapes = [[], [0], [1], [7], [45, 3], [2, 0, 3], [3, 5, 7]];
      const tensors: Record<string, TensorEntry> = {};
      let seed = 1;
      for (const dtype of ALL_DTYPES) {
        for (const shape of shapes) {
          const n = shape.reduce((a, b) => a * b, 1);
          let bytes = randomBytes(n * ST_DTYPE_SIZE[dtype], seed++);
          if (dtype === "BOOL") bytes = bytes.map((b) => b & 1);
          tensors[`${dtype.toLowerCase()}.${shape.join("x") || "scalar"}`] = {
            dtype,
            shape,
            data: bytes,
          };
        }
      }
      const path = join(dir, "all.safetensors");
      await writeSafetensors(path, tensors, { format: "pt", "ünïcode": "✓" });
      const f = await SafetensorsFile.open(path);
      try {
        assertEquals(f.metadata, { format: "pt", "ünïcode": "✓" });
        assertEquals(new Set(f.names()), new Set(Object.keys(tensors)));
        // concurrent reads go through the queue and each gets its own bytes
        const got = await Promise.all(f.names().map((n) => f.readRaw(n)));
        f.names().forEach((name, i) => {
          const want = tensors[name];
          const info = f.info(name);
          assertEquals([info.dtype, info.shape], [want.dtype, [...want.shape]], name);
          assertEquals(got[i], want.data as Uint8Array, name);
          // every tensor is aligned to its element size in the file, as the library guarantees
          assertEquals((f.dataStart + info.dataOffsets[0]) % ST_DTYPE_SIZE[info.dtype], 0, name);
        });
        assertEquals(
          Array.from(await f.readF32("f32.scalar")),
          Array.from(toF32("F32", tensors["f32.scalar"].data as Uint8Array)),
        );
        assertEquals((await f.readF32("bf16.2x0x3")).length, 0);
        assertEquals((await readTyped(f, "i64.7")) instanceof BigInt64Array, true);
        await assertStError(f.readRaw("nope"), path, `"nope"`, "no such tensor");
      } finally {
        f.close();
      }
      await assertStError(f.readRaw("f32.7"), path, "after close");
    });
    await t.step("typed-array inputs are converted to the declared dtype", async () => {
      const path = join(dir, "conv.safetensors");
      const vals = new Float32Array([0.1, -2, 300, 1e-3]);
      await writeSafetensors(path, {
        h: { dtype: "F16", shape: [2, 2], data: vals },
        b: { dtype: "BF16", shape: [4], data: vals },
        d: { dtype: "F64", shape: [4], data: vals },
        ids: { dtype: "I64", shape: [2], data: new Int32Array([5, -6]) },
      });
      const f = await SafetensorsFile.open(path);
      assertEquals(Array.from(await f.readF32("d")), Array.from(vals));
      assertEquals(
        Array.from(await f.readF32("h")),
        Array.from(toF32("F16", fromF32("F16", vals))),
      );
      assertEquals(
        Array.from(await f.readF32("b")),
        Array.from(toF32("BF16", fromF32("BF16", vals))),
      );
      assertEquals(Array.from(toBigInt64("I64", await f.readRaw("ids"))), [5n, -6n]);
      assertEquals(f.metadata, undefined);
      f.close();
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("safetensors byte-exact compatibility", async (t) => {
  await t.step("reads the Python-written fixture: dtypes, values, metadata", async () => {
    const path = join(FIXTURES, "st_all_dtypes.safetensors");
    const expect = JSON.parse(await Deno.readTextFile(join(FIXTURES, "st_all_dtypes.json")));
    const f = await SafetensorsFile.open(path);
    try {
      assertEquals(f.metadata, expect.metadata);
      assertEquals(new Set(f.names()), new Set(Object.keys(expect.tensors)));
      for (const [name, e] of Object.entries<any>(expect.tensors)) {
        const info = f.info(name);
        assertEquals([info.dtype, info.shape], [e.dtype, e.shape], name);
        const raw = await f.readRaw(name);
        assertEquals(raw, hex(e.hex), name);
        assertSameF32(await f.readF32(name), e.f32bits, name);
        if (e.ints) {
          const ints = e.ints.map(BigInt) as bigint[];
          if (ints.every((v) => v < 2n ** 63n)) {
            assertEquals(Array.from(toBigInt64(info.dtype, raw), String), e.ints, name);
          } else {
            assertThrows(
              () => toBigInt64(info.dtype, raw, name),
              RangeError,
              "outside the int64 range",
            );
          }
          if (ints.every((v) => v >= -(2n ** 31n) && v < 2n ** 31n)) {
            assertEquals(Array.from(toI32(info.dtype, raw), String), e.ints, name);
          } else {
            assertThrows(
              () => toI32(info.dtype, raw, name),
              RangeError,
              `${name}: ${info.dtype} element`,
            );
          }
        }
      }
    } finally {
      f.close();
    }
  });
  await t.step("writing the same tensors reproduces the fixture byte for byte", async () => {
    const expect = JSON.parse(await Deno.readTextFile(join(FIXTURES, "st_all_dtypes.json")));
    const tensors: Record<string, TensorEntry> = {};
    for (const [name, e] of Object.entries<any>(expect.tensors)) {
      tensors[name] = { dtype: e.dtype, shape: e.shape, data: hex(e.hex) };
    }
    const path = await Deno.makeTempFile({ suffix: ".safetensors" });
    try {
      await writeSafetensors(path, tensors, expect.metadata);
      assertEquals(
        await Deno.readFile(path),
        await Deno.readFile(join(FIXTURES, "st_all_dtypes.safetensors")),
      );
    } finally {
      await Deno.remove(path);
    }
  });
  await t.step("matches the byte vectors of the safetensors library's own tests", async () => {
    const path = await Deno.makeTempFile({ suffix: ".safetensors" });
    try {
      // test_serialization: {"attn.0": F32 [1,2,3] = 0..5}
      await writeSafetensors(path, {
        "attn.0": { dtype: "F32", shape: [1, 2, 3], data: new Float32Array([0, 1, 2, 3, 4, 5]) },
      });
      const want = new Uint8Array([
        64,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        ...new TextEncoder().encode(
          `{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}`,
        ),
        ...new Uint8Array(new Float32Array([0, 1, 2, 3, 4, 5]).buffer),
      ]);
      assertEquals(await Deno.readFile(path), want);
      // test_empty with metadata {"framework": "pt"}: header padded with 5 spaces
      await writeSafetensors(path, {}, { framework: "pt" });
      assertEquals(
        await Deno.readFile(path),
        new Uint8Array([
          40,
          0,
          0,
          0,
          0,
          0,
          0,
          0,
          ...new TextEncoder().encode(`{"__metadata__":{"framework":"pt"}}     `),
        ]),
      );
      await writeSafetensors(path, {});
      assertEquals(
        await Deno.readFile(path),
        new Uint8Array([8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]),
      );
      const f = await SafetensorsFile.open(path);
      assertEquals(f.names(), []);
      f.close();
    } finally {
      await Deno.remove(path);
    }
  });
});

/** A file with the given header text (padded) and `data` bytes. */
async function craft(
  dir: string,
  name: string,
  header: string | object,
  data = new Uint8Array(0),
  lenOverride?: bigint,
) {
  const json = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lenOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  const path = join(dir, name);
  await Deno.writeFile(path, out);
  return path;
}

Deno.test("SafetensorsFile.open() rejects corrupt files", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "st_bad_" });
  const ok = {
    a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
    b: { dtype: "U8", shape: [3], data_offsets: [8, 11] },
  };
  try {
    await t.step("a well-formed crafted file opens (control)", async () => {
      const f = await SafetensorsFile.open(await craft(dir, "ok.st", ok, new Uint8Array(11)));
      assertEquals(f.names(), ["a", "b"]);
      f.close();
    });
    await t.step("truncated data", async () => {
      const src = await Deno.readFile(join(FIXTURES, "st_all_dtypes.safetensors"));
      const p = join(dir, "trunc.safetensors");
      await Deno.writeFile(p, src.subarray(0, src.length - 3));
      await assertStError(SafetensorsFile.open(p), p, "beyond", "truncated");
      await Deno.writeFile(p, src.subarray(0, 5));
      await assertStError(SafetensorsFile.open(p), p, "shorter than the 8-byte header length");
    });
    await t.step("header length beyond the file", async () => {
      const p = await craft(dir, "len.st", ok, new Uint8Array(11), 10_000n);
      await assertStError(SafetensorsFile.open(p), p, "header length 10000", "beyond the end");
      const q = await craft(dir, "huge.st", ok, new Uint8Array(11), 2n ** 63n);
      await assertStError(SafetensorsFile.open(q), q, "exceeds the 100 MB limit");
    });
    await t.step("overlapping offsets", async () => {
      const p = await craft(dir, "overlap.st", {
        a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
        b: { dtype: "U8", shape: [3], data_offsets: [6, 9] },
      }, new Uint8Array(9));
      await assertStError(SafetensorsFile.open(p), p, `tensor "b"`, "overlap", `"a"`);
    });
    await t.step("begin > end, offsets out of range", async () => {
      const p = await craft(
        dir,
        "rev.st",
        { a: { dtype: "U8", shape: [0], data_offsets: [4, 2] } },
        new Uint8Array(4),
      );
      await assertStError(SafetensorsFile.open(p), p, `tensor "a"`, "begin > end");
      const q = await craft(dir, "neg.st", {
        a: { dtype: "U8", shape: [1], data_offsets: [-1, 0] },
      });
      await assertStError(SafetensorsFile.open(q), q, `tensor "a"`, "data_offsets");
    });
    await t.step("wrong size for shape", async () => {
      const p = await craft(dir, "size.st", {
        w: { dtype: "F16", shape: [2, 3], data_offsets: [0, 10] },
      }, new Uint8Array(10));
      await assertStError(SafetensorsFile.open(p), p, `tensor "w"`, "10 bytes", "needs 12");
    });
    await t.step("unknown dtype", async () => {
      const p = await craft(dir, "dtype.st", {
        w: { dtype: "F128", shape: [1], data_offsets: [0, 16] },
      }, new Uint8Array(16));
      await assertStError(SafetensorsFile.open(p), p, `tensor "w"`, `unknown dtype "F128"`);
      const q = await craft(dir, "dtype2.st", {
        w: { dtype: 7, shape: [1], data_offsets: [0, 1] },
      }, new Uint8Array(1));
      await assertStError(SafetensorsFile.open(q), q, `tensor "w"`, "unknown dtype 7", "F32");
    });
    await t.step("newer spec dtypes: unsupported dtype X in tensor Y of file Z", async () => {
      for (const dtype of ["F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "C64"]) {
        const p = await craft(dir, `${dtype}.st`, {
          ok: { dtype: "F32", shape: [1], data_offsets: [0, 4] },
          [`w.${dtype}`]: { dtype, shape: [2], data_offsets: [4, 20] },
        }, new Uint8Array(20));
        await assertStError(
          SafetensorsFile.open(p),
          p,
          `tensor "w.${dtype}"`,
          `unsupported dtype ${dtype}`,
          "supported: BOOL",
        );
        assertThrows(
          () => encodeTensor("v", { dtype: dtype as StDType, shape: [1], data: new Uint8Array(1) }),
          TypeError,
          `tensor "v": unsupported dtype ${dtype}`,
        );
      }
    });
    await t.step("a tensor name or entry key given twice", async () => {
      const entry = `{"dtype":"U8","shape":[1],"data_offsets":[0,1]}`;
      const other = `{"dtype":"U8","shape":[1],"data_offsets":[1,2]}`;
      const p = await craft(
        dir,
        "dup.st",
        `{"a":${entry},"b":${other},"a":${other}}`,
        new Uint8Array(2),
      );
      await assertStError(SafetensorsFile.open(p), p, `tensor "a"`, "appears twice");
      // the same name spelled with an escape is still the same name
      const q = await craft(dir, "dup2.st", `{"\\u0061":${entry},"a":${other}}`, new Uint8Array(2));
      await assertStError(SafetensorsFile.open(q), q, `tensor "a"`, "appears twice");
      const r = await craft(
        dir,
        "dup3.st",
        `{"a":{"dtype":"U8","shape":[1],"dtype":"F32","data_offsets":[0,1]}}`,
        new Uint8Array(1),
      );
      await assertStError(SafetensorsFile.open(r), r, `tensor "a"`, `key "dtype" appears twice`);
      const m = await craft(
        dir,
        "dup4.st",
        `{"__metadata__":{"k":"1","k":"2"},"a":${entry}}`,
        new Uint8Array(1),
      );
      await assertStError(SafetensorsFile.open(m), m, `__metadata__ key "k" appears twice`);
      // control: equal keys in different objects, and names with quotes and backslashes
      const ok = await craft(
        dir,
        "nodup.st",
        `{"__metadata__":{"a":"x\\\\\\"y","dtype":"z"},"a":${entry},"a\\\\":${other},"a\\"":{"dtype":"U8","shape":[0],"data_offsets":[2,2]}}`,
        new Uint8Array(2),
      );
      const f = await SafetensorsFile.open(ok);
      assertEquals(f.names(), ["a", "a\\", 'a"']);
      assertEquals(f.metadata, { a: 'x\\"y', dtype: "z" });
      f.close();
    });
    await t.step("a file truncated after open: readRaw names the file and tensor", async () => {
      const p = await craft(dir, "shrinks.st", ok, new Uint8Array(11));
      const f = await SafetensorsFile.open(p);
      try {
        assertEquals(Array.from(await f.readRaw("b")), [0, 0, 0]);
        await Deno.truncate(p, (await Deno.stat(p)).size - 2);
        await assertStError(f.readRaw("b"), p, `tensor "b"`, "truncated", "expected 3 bytes");
        await assertStError(f.readF32("b"), p, `tensor "b"`, "truncated");
        assertEquals(Array.from(await f.readF32("a")), [0, 0]); // the intact tensor still reads
      } finally {
        f.close();
      }
    });
    await t.step("bad JSON, not UTF-8, not an object, bad shape, bad metadata", async () => {
      const p = await craft(dir, "json.st", `{"a": {"dtype": "F32",`);
      await assertStError(SafetensorsFile.open(p), p, "not valid JSON");
      const bin = join(dir, "utf8.st");
      await Deno.writeFile(bin, new Uint8Array([4, 0, 0, 0, 0, 0, 0, 0, 0x7b, 0xff, 0xfe, 0x7d]));
      await assertStError(SafetensorsFile.open(bin), bin, "not valid UTF-8");
      const arr = await craft(dir, "arr.st", `[1, 2]`);
      await assertStError(SafetensorsFile.open(arr), arr, "does not start with");
      const sh = await craft(dir, "shape.st", {
        a: { dtype: "U8", shape: [1.5], data_offsets: [0, 1] },
      }, new Uint8Array(1));
      await assertStError(SafetensorsFile.open(sh), sh, `tensor "a"`, "shape");
      const md = await craft(dir, "meta.st", { __metadata__: { epoch: 3 } });
      await assertStError(SafetensorsFile.open(md), md, "__metadata__", "epoch");
    });
    await t.step("a missing file", async () => {
      const p = join(dir, "absent.safetensors");
      await assertStError(SafetensorsFile.open(p), p, "cannot open");
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SafetensorsFile: tensors past 4 GiB in a sparse file", async (t) => {
  // pad (U8) fills [0, 2^32 - 8); "edge" (F32 [4]) straddles 2^32; "far" (F16 [3], 2-byte aligned)
  // sits 5 GiB in. Only the header and the two small tensors take disk blocks.
  const G4 = 2 ** 32, FAR = 5 * 2 ** 30;
  const header = {
    __metadata__: { format: "pt" },
    pad: { dtype: "U8", shape: [G4 - 8], data_offsets: [0, G4 - 8] },
    edge: { dtype: "F32", shape: [4], data_offsets: [G4 - 8, G4 + 8] },
    far: { dtype: "F16", shape: [3], data_offsets: [FAR, FAR + 6] },
  };
  const json = new TextEncoder().encode(JSON.stringify(header).padEnd(256, " "));
  const dataStart = 8 + json.length;
  const edge = new Float32Array([1.5, -300, 2 ** -20, 7]);
  const far = new Uint16Array([f32ToF16Bits(-2), f32ToF16Bits(0.5), f32ToF16Bits(65504)]);
  const path = await Deno.makeTempFile({ prefix: "st_sparse_", suffix: ".safetensors" });
  try {
    const f = await Deno.open(path, { write: true });
    try {
      const len = new Uint8Array(8);
      new DataView(len.buffer).setBigUint64(0, BigInt(json.length), true);
      await f.write(len);
      await f.write(json);
      await f.truncate(dataStart + FAR + 6); // a hole up to the end
      for (const [at, bytes] of [[G4 - 8, edge], [FAR, far]] as const) {
        await f.seek(dataStart + at, Deno.SeekMode.Start);
        await f.write(new Uint8Array(bytes.buffer));
      }
    } finally {
      f.close();
    }
    const st = await Deno.stat(path);
    assertEquals(st.size, dataStart + FAR + 6);
    const sparse = st.blocks === null || st.blocks * 512 < 64 << 20;
    await t.step({
      name: "reads a tensor at 5 GiB and one across 2^32 without loading the file",
      ignore: !sparse, // a filesystem without holes would have written 5 GiB: nothing to learn
      fn: async () => {
        const rss0 = Deno.memoryUsage().rss;
        const file = await SafetensorsFile.open(path);
        try {
          assertEquals(file.names(), ["pad", "edge", "far"]);
          assertEquals(file.info("far").dataOffsets, [FAR, FAR + 6]);
          assertEquals(Array.from(await file.readF32("far")), [-2, 0.5, 65504]);
          assertEquals(await file.readF32("edge"), edge);
          const raw = await file.readRaw("edge");
          assertEquals(raw, new Uint8Array(edge.buffer));
        } finally {
          file.close();
        }
        const grown = Deno.memoryUsage().rss - rss0;
        assert(grown < 512 << 20, `resident memory grew ${grown} bytes: the file was loaded`);
      },
    });
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("SafetensorsWriter", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "st_w_" });
  const leftovers = async () => {
    const names: string[] = [];
    for await (const e of Deno.readDir(dir)) if (e.name.endsWith(".tmp")) names.push(e.name);
    return names;
  };
  try {
    await t.step("streams tensors in any order; same bytes as writeSafetensors", async () => {
      const a = new Float32Array([1, 2, 3, 4, 5, 6]),
        b = new Uint16Array([1, 2, 3]),
        c = new BigInt64Array([9n]);
      const path = join(dir, "stream.safetensors");
      const w = await SafetensorsWriter.create(path, [
        { name: "c", dtype: "I64", shape: [] },
        { name: "a", dtype: "F32", shape: [2, 3] },
        { name: "b", dtype: "BF16", shape: [3] },
      ], { k: "v" });
      assertEquals(w.order, ["c", "a", "b"]); // dtype alignment descending, then name
      await w.write("b", b);
      await w.write("a", a);
      await assertRejects(() => w.write("a", a), RangeError, "written twice");
      await assertRejects(() => w.write("zz", a), RangeError, "not in the list");
      await assertRejects(() => w.write("c", new BigInt64Array(2)), RangeError, "2 elements");
      await w.write("c", c);
      await w.close();
      const ref = join(dir, "ref.safetensors");
      await writeSafetensors(ref, {
        a: { dtype: "F32", shape: [2, 3], data: a },
        b: { dtype: "BF16", shape: [3], data: b },
        c: { dtype: "I64", shape: [], data: c },
      }, { k: "v" });
      assertEquals(await Deno.readFile(path), await Deno.readFile(ref));
      assertEquals(await leftovers(), []);
    });
    await t.step("an unfinished write leaves the old file untouched and no temp file", async () => {
      const path = join(dir, "keep.safetensors");
      await writeSafetensors(path, { x: { dtype: "U8", shape: [1], data: new Uint8Array([42]) } });
      const before = await Deno.readFile(path);
      const w = await SafetensorsWriter.create(path, [{ name: "x", dtype: "U8", shape: [1] }, {
        name: "y",
        dtype: "U8",
        shape: [1],
      }]);
      await w.write("x", new Uint8Array([1]));
      await assertRejects(() => w.close(), RangeError, "never written (y)");
      assertEquals(await Deno.readFile(path), before);
      await assertRejects(
        () =>
          writeSafetensors(path, { x: { dtype: "F32", shape: [2], data: new Float32Array(3) } }),
        RangeError,
      );
      assertEquals(await Deno.readFile(path), before);
      const w2 = await SafetensorsWriter.create(path, [{ name: "x", dtype: "U8", shape: [1] }]);
      await w2.abort();
      assertEquals(await Deno.readFile(path), before);
      assertEquals(await leftovers(), []);
      await assertRejects(
        () => SafetensorsWriter.create(path, [{ name: "__metadata__", dtype: "U8", shape: [] }]),
        RangeError,
        "reserved",
      );
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("sharded checkpoints", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "st_shard_" });
  const r = rng(5);
  const tensors: Record<string, TensorEntry> = {};
  for (let i = 0; i < 5; i++) {
    tensors[`model.layers.${i}.w`] = {
      dtype: i % 2 ? "BF16" : "F32",
      shape: [3, 7],
      data: Float32Array.from({ length: 21 }, () => r() * 600 - 300),
    };
  }
  tensors["model.norm.weight"] = { dtype: "F16", shape: [7], data: new Float32Array(7).fill(1) };
  try {
    await t.step("round trip over several shards with an index", async () => {
      const res = await writeShardedSafetensors(dir, tensors, 100);
      assert(res.files.length > 1, `expected several shards, got ${res.files}`);
      assertEquals(
        res.files[0],
        `model-00001-of-${String(res.files.length).padStart(5, "0")}.safetensors`,
      );
      const index = JSON.parse(await Deno.readTextFile(join(dir, "model.safetensors.index.json")));
      assertEquals(Object.keys(index.weight_map), Object.keys(tensors).sort());
      assertEquals(index.metadata.total_size, res.totalSize);
      const src = await openCheckpoint(dir);
      try {
        assertEquals(src.names(), Object.keys(tensors).sort());
        assertEquals(src.metadata, { total_size: String(res.totalSize) });
        for (const [name, t] of Object.entries(tensors)) {
          const want = toF32(t.dtype, encodeTensor(name, t));
          assertEquals(Array.from(await src.readF32(name)), Array.from(want), name);
          assertEquals(src.info(name).shape, [...t.shape], name);
        }
        await assertStError(
          src.readRaw("lm_head.weight"),
          join(dir, "model.safetensors.index.json"),
          "lm_head.weight",
        );
      } finally {
        src.close();
      }
    });
    await t.step(
      "a missing shard and a name mapped to the wrong shard are clear errors",
      async () => {
        const indexPath = join(dir, "model.safetensors.index.json");
        const index = JSON.parse(await Deno.readTextFile(indexPath));
        const shard2 = index.weight_map["model.norm.weight"];
        const moved = join(dir, "moved.bin");
        await Deno.rename(join(dir, shard2), moved);
        await assertStError(openCheckpoint(dir), indexPath, shard2, "does not exist");
        await Deno.rename(moved, join(dir, shard2));
        const first = Object.keys(index.weight_map).find((n) => index.weight_map[n] !== shard2)!;
        const bad = { ...index, weight_map: { ...index.weight_map, [first]: shard2 } };
        await Deno.writeTextFile(indexPath, JSON.stringify(bad));
        await assertStError(openCheckpoint(dir), indexPath, `"${first}"`, shard2, "no such tensor");
        await Deno.writeTextFile(
          indexPath,
          JSON.stringify({ ...index, weight_map: { w: "../etc/passwd" } }),
        );
        await assertStError(openCheckpoint(dir), indexPath, "not a file name");
        await Deno.writeTextFile(indexPath, "{");
        await assertStError(openCheckpoint(dir), indexPath, "cannot read the index");
      },
    );
    await t.step(
      "a save that fits one file replaces the shards with model.safetensors",
      async () => {
        const res = await writeShardedSafetensors(dir, tensors, 1e9);
        assertEquals(res.files, ["model.safetensors"]);
        const left = [];
        for await (const e of Deno.readDir(dir)) left.push(e.name);
        assertEquals(left.sort(), ["model.safetensors"]);
        const src = await openCheckpoint(dir);
        assertEquals(src.names().length, 6);
        src.close();
        const empty = await Deno.makeTempDir({ dir });
        await assertStError(openCheckpoint(empty), empty, "neither model.safetensors");
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("encodeSafetensors() and SafetensorsReader.fromBytes(): the file's bytes, in memory", async () => {
  const tensors: Record<string, TensorEntry> = {
    "embed.weight": { dtype: "F16", shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6]) },
    step: { dtype: "I64", shape: [], data: new BigInt64Array([100n]) },
  };
  const path = await Deno.makeTempFile({ suffix: ".safetensors" });
  try {
    await writeSafetensors(path, tensors, { format: "pt" });
    const bytes = encodeSafetensors(tensors, { format: "pt" });
    assertEquals(bytes, await Deno.readFile(path));
    const r = await SafetensorsReader.fromBytes(bytes, "mem");
    assertEquals(r.path, "mem");
    assertEquals(r.names().sort(), ["embed.weight", "step"]);
    assertEquals(await r.readF32("embed.weight"), new Float32Array([1, 2, 3, 4, 5, 6]));
    r.close();
    await assertRejects(() => r.readRaw("step"), SafetensorsError, "read after close");
    await assertRejects(
      () => SafetensorsReader.fromBytes(bytes.subarray(0, 20), "cut"),
      SafetensorsError,
      "cut",
    );
  } finally {
    await Deno.remove(path);
  }
});
