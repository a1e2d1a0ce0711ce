/**
 * GGUF from bytes: a hand-assembled file (built here field by field, independently of the
 * encoder) parses and equals what `encodeGguf` writes; every value type and tensor type round
 * trips on odd shapes; llama.cpp's layout rules hold; malformed headers (truncated at every
 * offset, bad magic/version/type ids, misaligned or out-of-file data, absurd counts, duplicates)
 * are GgufErrors naming the file and, where there is one, the tensor.
 */
import {
  assert,
  assertEquals,
  assertRejects,
  assertStrictEquals,
  assertThrows,
  randNormal,
} from "@lvm/util/testing";
import { roundF16 } from "@lvm/util";
import {
  encodeGguf,
  GGML_TYPE_ID,
  ggmlBytes,
  type GgmlType,
  GgufError,
  GgufReader,
  type GgufTensorEntry,
  ggufValue,
  planGguf,
} from "./gguf.ts";
import { dequantize, quantize } from "./quant.ts";

// ---------------------------------------------------------------------------------------------
// A GGUF assembled field by field (no encoder code), for exact bytes and malformed files.

const enc = new TextEncoder();
const u32 = (v: number) => new Uint8Array(new Uint32Array([v]).buffer);
const u64 = (v: number | bigint) => new Uint8Array(new BigUint64Array([BigInt(v)]).buffer);
const str = (s: string) => cat(u64(enc.encode(s).byteLength), enc.encode(s));
function cat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.byteLength;
  }
  return out;
}

interface RawTensor {
  name: string;
  dims: (number | bigint)[];
  type: number;
  offset: number | bigint;
}

/** GGUF bytes from parts: kvs are [key, type id, value bytes]; data follows at `align`. */
function build(o: {
  magic?: string;
  version?: number;
  nTensors?: number | bigint;
  nKv?: number | bigint;
  kvs?: [string, number, Uint8Array][];
  tensors?: RawTensor[];
  align?: number;
  data?: Uint8Array;
}): Uint8Array {
  const kvs = o.kvs ?? [];
  const tensors = o.tensors ?? [];
  const head = cat(
    enc.encode(o.magic ?? "GGUF"),
    u32(o.version ?? 3),
    u64(o.nTensors ?? tensors.length),
    u64(o.nKv ?? kvs.length),
    ...kvs.map(([k, t, v]) => cat(str(k), u32(t), v)),
    ...tensors.map((t) =>
      cat(str(t.name), u32(t.dims.length), ...t.dims.map(u64), u32(t.type), u64(t.offset))
    ),
  );
  const align = o.align ?? 32;
  const pad = new Uint8Array((align - (head.byteLength % align)) % align);
  return cat(head, pad, o.data ?? new Uint8Array());
}

const F32 = (xs: number[]) => new Uint8Array(new Float32Array(xs).buffer);

/** One F32 tensor "t" of [2] = [1.5, -2] and one UINT8 key "a" = 7. */
const SMALL = () =>
  build({
    kvs: [["a", 0, new Uint8Array([7])]],
    tensors: [{ name: "t", dims: [2], type: 0, offset: 0 }],
    data: cat(F32([1.5, -2]), new Uint8Array(24)),
  });

const open = (bytes: Uint8Array) => GgufReader.fromBytes(bytes, "x.gguf");

Deno.test("GgufReader: a hand-assembled file", async (t) => {
  await t.step("parses: version, metadata, tensor info, data", async () => {
    const g = await open(SMALL());
    assertEquals(g.version, 3);
    assertEquals([...g.metadata], [["a", { type: "UINT8", value: 7 }]]);
    assertEquals(g.get("a"), 7);
    assertEquals(g.names(), ["t"]);
    const info = g.info("t");
    assertEquals(info, {
      name: "t",
      type: "F32",
      shape: [2],
      dims: [2],
      offset: 0,
      byteOffset: g.dataStart,
      byteLength: 8,
    });
    assertEquals(g.dataStart % 32, 0);
    assertEquals(Array.from(await g.readF32("t")), [1.5, -2]);
    g.close();
  });
  await t.step("encodeGguf writes the same bytes", () => {
    const bytes = encodeGguf(new Map([["a", ggufValue.u8(7)]]), [
      { name: "t", type: "F32", shape: [2], data: new Float32Array([1.5, -2]) },
    ]);
    assertEquals(bytes, SMALL());
  });
  await t.step("version 2 reads the same", async () => {
    const g = await open(build({ version: 2, kvs: [["a", 0, new Uint8Array([7])]] }));
    assertEquals([g.version, g.get("a")], [2, 7]);
  });
});

Deno.test("encodeGguf/GgufReader: every value type and tensor type, odd shapes", async (t) => {
  const { u8, i8, u16, i16, u32: U32, i32, f32, f64, u64: U64, i64, bool, str: S, array } =
    ggufValue;
  const md = new Map([
    ["u8", u8(255)],
    ["i8", i8(-128)],
    ["u16", u16(65535)],
    ["i16", i16(-32768)],
    ["u32", U32(4294967295)],
    ["i32", i32(-2147483648)],
    ["f32", f32(0.1)],
    ["f64", f64(0.1)],
    ["u64", U64(2n ** 64n - 1n)],
    ["i64", i64(-(2n ** 63n))],
    ["bool", bool(true)],
    ["str", S("héllo, 世界 🙂")],
    ["empty", S("")],
    ["a.u8", array("UINT8", new Uint8Array([1, 2, 3]))],
    ["a.f32", array("FLOAT32", new Float32Array([0.5, -1e30]))],
    ["a.i64", array("INT64", new BigInt64Array([-1n, 5n]))],
    ["a.str", array("STRING", ["a", "", "ü"])],
    ["a.bool", array("BOOL", [true, false])],
    [
      "a.nested",
      array("ARRAY", [{ itemType: "INT16", items: new Int16Array([-3]) }, {
        itemType: "STRING",
        items: ["x"],
      }]),
    ],
    ["a.empty", array("UINT32", new Uint32Array())],
  ]);
  const x = (n: number, seed: number) => randNormal(n, seed);
  const tensors: GgufTensorEntry[] = [
    { name: "f32.odd", type: "F32", shape: [3, 5], data: x(15, 1) },
    { name: "f16.vec", type: "F16", shape: [7], data: x(7, 2) },
    { name: "bf16.one", type: "BF16", shape: [1], data: new Float32Array([3.140625]) },
    { name: "q8.3d", type: "Q8_0", shape: [2, 3, 64], data: x(384, 3) },
    { name: "q4.rows", type: "Q4_0", shape: [5, 96], data: x(480, 4) },
    { name: "f32.4d", type: "F32", shape: [2, 1, 3, 1], data: x(6, 5) },
  ];
  const bytes = encodeGguf(md, tensors);
  const g = await open(bytes);

  await t.step("metadata round trips, typed and in order", () => {
    assertEquals([...g.metadata.keys()], [...md.keys()]);
    for (const [k, v] of md) {
      const got = g.metadata.get(k)!;
      if (k === "f32") assertEquals(got, { type: "FLOAT32", value: Math.fround(0.1) });
      else assertEquals(got, v, k);
    }
  });
  await t.step("tensors: shapes, dims reversed, values", async () => {
    for (const e of tensors) {
      const info = g.info(e.name);
      assertEquals([info.type, info.shape, info.dims], [e.type, e.shape, [...e.shape].reverse()]);
      assertEquals(info.byteLength, ggmlBytes(e.type, e.shape));
      const x = e.data as Float32Array;
      const want = e.type === "F32"
        ? x
        : e.type === "F16"
        ? roundF16(x)
        : e.type === "BF16"
        ? x
        : dequantize(e.type as "Q8_0", quantize(e.type as "Q8_0", x), x.length);
      assertEquals(await g.readF32(e.name), want, e.name);
      assertEquals(
        await g.readRaw(e.name),
        bytes.slice(info.byteOffset, info.byteOffset + info.byteLength),
      );
    }
    const out = new Float32Array(15);
    assertStrictEquals(await g.readF32("f32.odd", out), out);
  });
  await t.step("llama.cpp's layout: offsets in order, each tensor padded to 32", () => {
    let next = 0;
    for (const info of g.tensors) {
      assertEquals(info.offset, next, info.name);
      next += Math.ceil(info.byteLength / 32) * 32;
    }
    assertEquals(bytes.byteLength, g.dataStart + next);
  });
  await t.step("general.alignment 64 is followed", async () => {
    const b = encodeGguf(new Map([["general.alignment", ggufValue.u32(64)]]), tensors.slice(0, 3));
    const h = await open(b);
    assertEquals([h.alignment, h.dataStart % 64], [64, 0]);
    for (const info of h.tensors) assertEquals(info.offset % 64, 0);
    assertEquals(await h.readF32("f32.odd"), tensors[0].data);
  });
  await t.step("a header over 1 MiB is read in pieces", async () => {
    const words = Array.from({ length: 70000 }, (_, i) => `token-${i}-padding`);
    const b = encodeGguf(new Map([["tokens", ggufValue.array("STRING", words)]]), tensors);
    const h = await open(b);
    assert(h.dataStart > 1 << 20, `${h.dataStart}`);
    assertEquals((h.get("tokens") as string[])[69999], "token-69999-padding");
    assertEquals(await h.readF32("q8.3d"), await g.readF32("q8.3d"));
  });
  await t.step("missing tensor, read after close", async () => {
    assertThrows(() => g.info("nope"), GgufError, 'x.gguf: tensor "nope": no such tensor');
    g.close();
    await assertRejects(() => g.readRaw("f32.odd"), GgufError, "read after close");
  });
});

Deno.test("GgufReader: malformed files are GgufErrors naming the file", async (t) => {
  const fails = (bytes: Uint8Array, text: string | RegExp) =>
    assertRejects(() => open(bytes), GgufError, text);
  const U8 = (v: number) => new Uint8Array([v]);

  await t.step("truncated at every offset before the end of the data", async () => {
    const b = encodeGguf(
      new Map([["k", ggufValue.array("STRING", ["ab", "c"])], ["v", ggufValue.f64(2)]]),
      [
        { name: "w", type: "Q4_0", shape: [2, 32], data: randNormal(64, 1) },
        { name: "n", type: "F16", shape: [3], data: new Float32Array(3) },
      ],
    );
    const g = await open(b);
    const end = g.info("n").byteOffset + g.info("n").byteLength;
    for (let i = 0; i < end; i++) {
      const e = await assertRejects(() => open(b.slice(0, i)), GgufError);
      assert(e.message.startsWith("x.gguf: "), e.message);
      assert(/truncated|past the end|absurd/.test(e.message), `${i}: ${e.message}`);
    }
    await open(b.slice(0, end)); // only the last tensor's padding missing: still whole
  });
  await t.step("bad magic, versions", async () => {
    await fails(build({ magic: "GGML" }), 'starts with 47 47 4d 4c, expected "GGUF"');
    await fails(build({ version: 1 }), "version 1");
    await fails(build({ version: 4 }), "unsupported GGUF version 4");
    await fails(build({ version: 3 << 24 }), "big-endian");
  });
  await t.step("absurd counts and lengths", async () => {
    await fails(build({ nTensors: 2n ** 40n }), "tensor count 1099511627776 is absurd");
    await fails(build({ nKv: 1000 }), "metadata count 1000 is absurd");
    await fails(build({ nKv: 2n ** 63n }), /metadata count \d+ is absurd/);
    await fails(
      build({ kvs: [["s", 8, u64(1e9)]] }),
      'truncated: metadata "s" of 1000000000 bytes',
    );
    await fails(
      build({ kvs: [["a", 9, cat(u32(4), u64(1e6))]] }),
      /length of metadata "a" 1000000 is absurd/,
    );
  });
  await t.step("bad value types", async () => {
    await fails(build({ kvs: [["k", 13, U8(0)]] }), 'type of metadata "k" at offset 33 is 13');
    await fails(build({ kvs: [["k", 9, cat(u32(99), u64(0))]] }), "item type");
    await fails(build({ kvs: [["b", 7, U8(2)]] }), 'metadata "b": BOOL at offset');
    await fails(
      build({ kvs: [["k", 0, U8(1)], ["k", 0, U8(2)]] }),
      'metadata key "k" appears twice',
    );
  });
  await t.step("general.alignment: a UINT32 power of two", async () => {
    await fails(
      build({ kvs: [["general.alignment", 4, u32(48)]] }),
      "power of two, found UINT32 48",
    );
    await fails(build({ kvs: [["general.alignment", 10, u64(32)]] }), "found UINT64 32");
  });
  const tensor = (o: Partial<RawTensor>, data = new Uint8Array(64)) =>
    build({ tensors: [{ name: "w", dims: [4], type: 0, offset: 0, ...o }], data });
  await t.step("tensor infos: type ids, dims, offsets, data outside the file", async () => {
    await fails(tensor({ type: 12 }), 'tensor "w": ggml type Q4_K (12) is not supported');
    await fails(tensor({ type: 99 }), 'tensor "w": unknown ggml type id 99');
    await fails(tensor({ type: 4 }), "unknown ggml type id 4");
    await fails(tensor({ dims: [1, 1, 1, 1, 1] }), "n_dims is 5");
    await fails(tensor({ dims: [2n ** 60n] }), "dims[0] 1152921504606846976 is absurd");
    await fails(tensor({ dims: [2n ** 40n, 2n ** 40n] }), "too large");
    await fails(
      tensor({ type: GGML_TYPE_ID.Q8_0, dims: [48, 1] }),
      "rows of a multiple of 32 values",
    );
    await fails(
      tensor({ offset: 4 }),
      'tensor "w": data offset 4 is not a multiple of the alignment 32',
    );
    await fails(
      tensor({ offset: 64 }),
      /tensor "w": data \[\d+, \d+\) \(F32 \[4\]\) goes past the end/,
    );
    await fails(tensor({ dims: [17] }), "goes past the end");
  });
  await t.step("duplicate names, overlapping data", async () => {
    const two = (offset: number, name = "v") =>
      build({
        tensors: [{ name: "w", dims: [4], type: 0, offset: 0 }, {
          name,
          dims: [4],
          type: 0,
          offset,
        }],
        data: new Uint8Array(64),
      });
    await fails(two(32, "w"), 'tensor "w": the tensor name appears twice');
    await fails(two(0), 'tensor "v": data at offset 0 overlaps that of "w" [0, 16)');
    await open(two(32));
  });
});

Deno.test("planGguf/encodeGguf: what cannot be written is refused, naming it", () => {
  const t = (o: Partial<GgufTensorEntry>): GgufTensorEntry => ({
    name: "w",
    type: "F32",
    shape: [2],
    data: new Float32Array(2),
    ...o,
  });
  const md = new Map();
  assertThrows(() => encodeGguf(md, [t({ name: "x".repeat(64) })]), RangeError, "over 63 bytes");
  assertThrows(() => encodeGguf(md, [t({}), t({})]), RangeError, 'tensor "w" is listed twice');
  assertThrows(
    () => encodeGguf(md, [t({ type: "Q5_K" as GgmlType })]),
    TypeError,
    "unknown ggml type",
  );
  assertThrows(() => encodeGguf(md, [t({ shape: [] })]), RangeError, "1 to 4 dimensions");
  assertThrows(() => encodeGguf(md, [t({ shape: [1, 1, 1, 1, 2] })]), RangeError, "1 to 4");
  assertThrows(
    () => encodeGguf(md, [t({ type: "Q8_0", shape: [2, 48], data: new Float32Array(96) })]),
    RangeError,
    'tensor "w": Q8_0 needs rows of a multiple of 32 values, the shape [2,48] has rows of 48',
  );
  assertThrows(
    () => encodeGguf(md, [t({ data: new Float32Array(3) })]),
    RangeError,
    "3 values given for [2]",
  );
  assertThrows(() => encodeGguf(md, [t({ data: new Uint8Array(7) })]), RangeError, "7 bytes given");
  const bad = (v: unknown, text: string) =>
    assertThrows(() => planGguf(new Map([["k", v as never]]), []), TypeError, text);
  bad(ggufValue.u8(256), 'metadata "k": 256 is not a UINT8 value');
  bad(ggufValue.i32(1.5), "1.5 is not a INT32 value");
  bad({ type: "UINT64", value: 1 }, "must be a bigint");
  bad(ggufValue.u64(-1n), "outside the UINT64 range");
  bad(ggufValue.array("FLOAT32", [1, 2] as never), "FLOAT32 items must be a Float32Array");
  bad(ggufValue.array("STRING", ["a", 3] as never), 'metadata "k"[1]: STRING value is number');
  bad({ type: "TEXT", value: "a" }, "not a typed GGUF value");
  assertThrows(
    () => planGguf(new Map([["general.alignment", ggufValue.u32(24)]]), []),
    RangeError,
    "power of two",
  );
});
