import { join } from "node:path";
import { assertEquals } from "@lvm/util/testing";
import { readTyped, type TensorEntry, toBigInt64, toF32 } from "./safetensors.ts";
import { TorchBinError, unpickleRestricted, UnsafePickleError } from "./torch_bin.ts";
import { openWeights, SafetensorsFile, TorchBinFile, writeSafetensors } from "./fs.ts";

// Assertions: @lvm/util/testing's, plus pattern and several-word checks of error messages.
function assert(cond: unknown, msg = "assertion failed"): asserts cond {
  if (!cond) throw new Error(msg);
}
async function assertRejects(
  fn: () => Promise<unknown>,
  cls: new (...a: any[]) => Error,
  ...words: string[]
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    assert(e instanceof cls, `expected ${cls.name}, got ${e}`);
    for (const w of words) assert(e.message.includes(w), `"${e.message}" should include "${w}"`);
    return e;
  }
  throw new Error(`expected a rejection with ${cls.name}`);
}
function assertThrows(fn: () => unknown, cls: new (...a: any[]) => Error, ...words: string[]) {
  try {
    fn();
  } catch (e) {
    assert(e instanceof cls, `expected ${cls.name}, got ${e}`);
    for (const w of words) assert(e.message.includes(w), `"${e.message}" should include "${w}"`);
    return;
  }
  throw new Error(`expected ${cls.name} to be thrown`);
}

const FIXTURES = new URL("../../tests/fixtures/kernels/", import.meta.url).pathname;
const fixture = (name: string) => join(FIXTURES, name);
const EXPECTED = JSON.parse(await Deno.readTextFile(fixture("torch_expected.json")));

/** Checks every tensor of `src` against the expected values written by tools/fixtures_torch_bin.py. */
async function checkAgainst(src: TorchBinFile, expect: Record<string, any>) {
  assertEquals(src.names(), Object.keys(expect), `${src.path}: names`);
  for (const [name, e] of Object.entries(expect)) {
    const info = src.info(name);
    assertEquals([info.dtype, info.shape], [e.dtype, e.shape], `${name}: dtype, shape`);
    const raw = await src.readRaw(name);
    assertEquals(raw.byteLength, info.byteLength, `${name}: bytes`);
    if (e.f32bits) {
      const got = await src.readF32(name);
      const bits = new Uint32Array(got.buffer, got.byteOffset, got.length);
      assertEquals(got.length, e.f32bits.length, name);
      for (let i = 0; i < got.length; i++) {
        if (bits[i] !== e.f32bits[i]) {
          throw new Error(`${name}[${i}]: got ${got[i]}, want bits 0x${e.f32bits[i].toString(16)}`);
        }
      }
    } else {
      assertEquals(Array.from(toBigInt64(info.dtype, raw), String), e.ints, name);
    }
  }
}

function makeRng(seed: number) {
  return () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
}

// --- a tiny stored-zip writer and pickle builder for crafted archives

function crc32(b: Uint8Array): number {
  let c = ~0;
  for (const x of b) {
    c ^= x;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return ~c >>> 0;
}

function makeZip(entries: [string, Uint8Array][]): Uint8Array {
  const parts: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let off = 0;
  for (const [name, data] of entries) {
    const nb = new TextEncoder().encode(name);
    const h = new Uint8Array(30 + nb.length);
    const dv = new DataView(h.buffer);
    dv.setUint32(0, 0x04034b50, true);
    dv.setUint32(14, crc32(data), true);
    dv.setUint32(18, data.length, true);
    dv.setUint32(22, data.length, true);
    dv.setUint16(26, nb.length, true);
    h.set(nb, 30);
    const c = new Uint8Array(46 + nb.length);
    const cv = new DataView(c.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint32(16, crc32(data), true);
    cv.setUint32(20, data.length, true);
    cv.setUint32(24, data.length, true);
    cv.setUint16(28, nb.length, true);
    cv.setUint32(42, off, true);
    c.set(nb, 46);
    parts.push(h, data);
    central.push(c);
    off += h.length + data.length;
  }
  const cdSize = central.reduce((s, c) => s + c.length, 0);
  const end = new Uint8Array(22);
  const ev = new DataView(end.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, entries.length, true);
  ev.setUint16(10, entries.length, true);
  ev.setUint32(12, cdSize, true);
  ev.setUint32(16, off, true);
  const all = [...parts, ...central, end];
  const out = new Uint8Array(all.reduce((s, p) => s + p.length, 0));
  let p = 0;
  for (const a of all) {
    out.set(a, p);
    p += a.length;
  }
  return out;
}

/** Pickle bytes from pieces: strings as latin-1 bytes, numbers as single bytes. */
function pk(...parts: (string | number | Uint8Array)[]): Uint8Array {
  const out: number[] = [];
  for (const p of parts) {
    if (typeof p === "number") out.push(p);
    else if (typeof p === "string") { for (const ch of p) out.push(ch.charCodeAt(0)); }
    else out.push(...p);
  }
  return new Uint8Array(out);
}
const str = (s: string) => {
  const b = new TextEncoder().encode(s);
  return pk(0x58, b.length & 0xff, (b.length >> 8) & 0xff, 0, 0, b);
};
/** `{name: _rebuild_tensor_v2(storage(key, numel), offset, size, stride)}` as torch writes it. */
function tensorPickle(
  name: string,
  type: string,
  key: string,
  numel: number,
  offset: number,
  size: number[],
  stride: number[],
) {
  const tuple = (xs: number[]) => pk("(", ...xs.flatMap((x) => [0x4b, x]), "t");
  return pk(
    0x80,
    2,
    "}",
    "(",
    str(name),
    "ctorch._utils\n_rebuild_tensor_v2\n",
    "((",
    str("storage"),
    `ctorch\n${type}\n`,
    str(key),
    str("cpu"),
    0x4b,
    numel,
    "tQ",
    0x4b,
    offset,
    tuple(size),
    tuple(stride),
    0x89,
    "}",
    "tR",
    "u.",
  );
}

async function withTemp(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "torch_bin_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("TorchBinFile.open() reads torch.save checkpoints", async (t) => {
  await t.step("zip state dict: f32, f16, bf16, f64, ints, bool, parameter, views", async () => {
    const f = await TorchBinFile.open(fixture("torch_state.bin"));
    try {
      assertEquals(f.format, "zip");
      await checkAgainst(f, EXPECTED["torch_state.bin"]);
      // the views share one storage; the strided ones are gathered
      const ids = f.info("ids"), view = f.info("ids.view");
      assertEquals([view.storageKey, view.storageOffset, view.contiguous], [
        ids.storageKey,
        1,
        true,
      ]);
      assertEquals([f.info("transposed").stride, f.info("transposed").contiguous], [[1, 5], false]);
      assertEquals(f.info("expanded").stride, [1, 0]);
      assertEquals(f.info("ids.strided").stride, [2]);
      assertEquals(f.info("scalar").shape, []);
      assertEquals((await f.readRaw("empty")).length, 0);
      assert((await readTyped(f, "ids")) instanceof BigInt64Array);
      // concurrent reads are queued and each gets its own bytes
      const all = await Promise.all(f.names().map((n) => f.readRaw(n)));
      for (let i = 0; i < all.length; i++) assertEquals(all[i], await f.readRaw(f.names()[i]));
      await assertRejects(
        () => f.readRaw("nope"),
        TorchBinError,
        fixture("torch_state.bin"),
        `"nope"`,
        "no such tensor",
      );
    } finally {
      f.close();
    }
    await assertRejects(() => f.readRaw("half"), TorchBinError, "after close");
  });
  await t.step("deflated and zip64 archives give the same bytes", async () => {
    const ref = await TorchBinFile.open(fixture("torch_state.bin"));
    for (const name of ["torch_deflate.bin", "torch_zip64.bin"]) {
      const f = await TorchBinFile.open(fixture(name), { verifyCrc: true });
      assertEquals(f.names(), ref.names(), name);
      for (const n of ref.names()) {
        assertEquals(await f.readRaw(n), await ref.readRaw(n), `${name}: ${n}`);
      }
      f.close();
    }
    ref.close();
  });
  await t.step("protocol 4 pickle (FRAME, MEMOIZE, STACK_GLOBAL)", async () => {
    const f = await TorchBinFile.open(fixture("torch_proto4.bin"));
    await checkAgainst(f, EXPECTED["torch_proto4.bin"]);
    f.close();
  });
  await t.step("legacy (pre-zip) format", async () => {
    const f = await TorchBinFile.open(fixture("torch_legacy.bin"));
    assertEquals(f.format, "legacy");
    await checkAgainst(f, EXPECTED["torch_legacy.bin"]);
    f.close();
  });
  await t.step("nested dicts flatten to dotted names; prefix selects a subtree", async () => {
    const f = await TorchBinFile.open(fixture("torch_nested.bin"));
    await checkAgainst(f, EXPECTED["torch_nested.bin"]);
    assertEquals(f.metadata, EXPECTED["torch_nested.bin.metadata"]);
    f.close();
    const sd = await TorchBinFile.open(fixture("torch_nested.bin"), { prefix: "state_dict." });
    assertEquals(sd.names(), ["enc.w", "enc.b"]);
    assertEquals(
      Array.from(await sd.readF32("enc.b")),
      Array.from(
        new Float32Array(
          new Uint32Array(EXPECTED["torch_nested.bin"]["state_dict.enc.b"].f32bits).buffer,
        ),
      ),
    );
    sd.close();
    await assertRejects(
      () => TorchBinFile.open(fixture("torch_nested.bin"), { prefix: "model.encoder." }),
      TorchBinError,
      `prefix "model.encoder."`,
      "state_dict",
    );
  });
  await t.step("converted to safetensors and read back unchanged", async () => {
    await withTemp(async (dir) => {
      const f = await TorchBinFile.open(fixture("torch_state.bin"));
      const tensors: Record<string, TensorEntry> = {};
      for (const n of f.names()) {
        const i = f.info(n);
        tensors[n] = { dtype: i.dtype, shape: i.shape, data: await f.readRaw(n) };
      }
      await writeSafetensors(join(dir, "model.safetensors"), tensors);
      const st = await SafetensorsFile.open(join(dir, "model.safetensors"));
      for (const n of f.names()) {
        assertEquals(await st.readRaw(n), await f.readRaw(n), n);
        assertEquals(await st.readF32(n), await f.readF32(n), n);
      }
      st.close();
      f.close();
    });
  });
});

Deno.test("TorchBinFile refuses malicious pickles", async (t) => {
  const marker = "/tmp/lvm_pickle_pwned";
  await Deno.remove(marker).catch(() => {});
  const cases: [string, string][] = [
    ["torch_evil_os_system.bin", "os.system"],
    ["torch_evil_stack_global.bin", "builtins.eval"],
    ["torch_evil_load_from_bytes.bin", "torch.storage._load_from_bytes"],
    ["torch_evil_legacy.bin", "posix.system"],
  ];
  for (const [file, global] of cases) {
    await t.step(`${file}: ${global}`, async () => {
      const e = await assertRejects(
        () => TorchBinFile.open(fixture(file)),
        UnsafePickleError,
        "refusing to unpickle",
        `"${global}"`,
        fixture(file),
      ) as UnsafePickleError;
      assertEquals(e.global, global);
    });
  }
  await t.step("nothing ran", async () => {
    assertEquals(await Deno.stat(marker).then(() => true, () => false), false);
  });
  await t.step("allowed globals are not callable in the wrong place", () => {
    // REDUCE on a storage class: allowed as a value in a persistent id, never called
    assertThrows(
      () => unpickleRestricted(pk(0x80, 2, "ctorch\nFloatStorage\n)R.")),
      TorchBinError,
      "torch.FloatStorage",
      "not callable",
    );
    // a persistent id naming a non-storage global is refused before anything else
    assertThrows(
      () => unpickleRestricted(pk(0x80, 2, "(", str("storage"), "cbuiltins\nopen\n", "tQ.")),
      UnsafePickleError,
      "builtins.open",
    );
  });
});

Deno.test("TorchBinFile rejects truncated and corrupt files", async (t) => {
  await withTemp(async (dir) => {
    const src = await Deno.readFile(fixture("torch_state.bin"));
    await t.step("truncated zip", async () => {
      for (const keep of [src.length - 1, src.length - 30, Math.floor(src.length / 2), 100, 3]) {
        const p = join(dir, `trunc${keep}.bin`);
        await Deno.writeFile(p, src.subarray(0, keep));
        const e = await assertRejects(() => TorchBinFile.open(p), TorchBinError, p);
        assert(/truncated|not a PyTorch checkpoint/.test(e.message), e.message);
      }
    });
    await t.step("a flipped byte in the pickle fails its CRC", async () => {
      const bad = src.slice();
      const at = bad.indexOf(0x63, /* "c" GLOBAL */ 40);
      bad[at + 5] ^= 0x20;
      const p = join(dir, "crc.bin");
      await Deno.writeFile(p, bad);
      await assertRejects(
        () => TorchBinFile.open(p),
        TorchBinError,
        p,
        "data.pkl",
        "CRC-32 mismatch",
      );
    });
    await t.step("not a checkpoint, empty, missing", async () => {
      const p = join(dir, "text.bin");
      await Deno.writeTextFile(p, "hello world");
      await assertRejects(() => TorchBinFile.open(p), TorchBinError, p, "not a PyTorch checkpoint");
      await Deno.writeFile(p, new Uint8Array(0));
      await assertRejects(() => TorchBinFile.open(p), TorchBinError, "not a PyTorch checkpoint");
      await assertRejects(
        () => TorchBinFile.open(join(dir, "absent.bin")),
        TorchBinError,
        "cannot open",
      );
    });
    await t.step(
      "crafted archives: missing storage, storage too small, data past the end",
      async () => {
        const f32 = (n: number) => new Uint8Array(new Float32Array(n).map((_, i) => i).buffer);
        const ok = join(dir, "ok.bin");
        await Deno.writeFile(
          ok,
          makeZip([["a/data.pkl", tensorPickle("w", "FloatStorage", "0", 6, 0, [2, 3], [3, 1])], [
            "a/data/0",
            f32(6),
          ]]),
        );
        const g = await TorchBinFile.open(ok); // the control case reads
        assertEquals(Array.from(await g.readF32("w")), [0, 1, 2, 3, 4, 5]);
        g.close();
        const t2 = join(dir, "t.bin"); // transposed view of the same storage
        await Deno.writeFile(
          t2,
          makeZip([["a/data.pkl", tensorPickle("w", "FloatStorage", "0", 6, 0, [3, 2], [1, 3])], [
            "a/data/0",
            f32(6),
          ]]),
        );
        const h = await TorchBinFile.open(t2);
        assertEquals(Array.from(await h.readF32("w")), [0, 3, 1, 4, 2, 5]);
        h.close();

        const missing = join(dir, "missing.bin");
        await Deno.writeFile(
          missing,
          makeZip([["a/data.pkl", tensorPickle("w", "FloatStorage", "0", 6, 0, [2, 3], [3, 1])]]),
        );
        await assertRejects(
          () => TorchBinFile.open(missing),
          TorchBinError,
          missing,
          "a/data/0 is missing",
        );
        const small = join(dir, "small.bin");
        await Deno.writeFile(
          small,
          makeZip([["a/data.pkl", tensorPickle("w", "FloatStorage", "0", 4, 1, [2, 3], [3, 1])], [
            "a/data/0",
            f32(4),
          ]]),
        );
        await assertRejects(
          () => TorchBinFile.open(small),
          TorchBinError,
          small,
          `"w"`,
          "needs 7 elements",
        );
        const short = join(dir, "short.bin"); // the pickle says 6 elements, the entry holds 4
        await Deno.writeFile(
          short,
          makeZip([["a/data.pkl", tensorPickle("w", "FloatStorage", "0", 6, 0, [2, 3], [3, 1])], [
            "a/data/0",
            f32(4),
          ]]),
        );
        await assertRejects(() => TorchBinFile.open(short), TorchBinError, short, "holds 4");
        const past = makeZip([[
          "a/data.pkl",
          tensorPickle("w", "FloatStorage", "0", 6, 0, [2, 3], [3, 1]),
        ], ["a/data/0", f32(6)]]);
        // make the directory claim 1 MiB for a/data/0 (its entry is the last: 46 + 8-byte name)
        const dv = new DataView(past.buffer);
        const c = past.length - 22 - (46 + 8);
        assert(dv.getUint32(c, true) === 0x02014b50, `central entry at ${c}`);
        dv.setUint32(c + 20, 1 << 20, true);
        dv.setUint32(c + 24, 1 << 20, true);
        const pastPath = join(dir, "past.bin");
        await Deno.writeFile(pastPath, past);
        await assertRejects(
          () => TorchBinFile.open(pastPath),
          TorchBinError,
          pastPath,
          "runs past the end",
          "truncated",
        );
        const noPkl = join(dir, "nopkl.bin");
        await Deno.writeFile(noPkl, makeZip([["a/weights", f32(2)]]));
        await assertRejects(
          () => TorchBinFile.open(noPkl),
          TorchBinError,
          noPkl,
          "no <archive>/data.pkl",
        );
        const badType = join(dir, "type.bin");
        await Deno.writeFile(
          badType,
          makeZip([["a/data.pkl", tensorPickle("w", "ComplexFloatStorage", "0", 6, 0, [6], [1])], [
            "a/data/0",
            f32(6),
          ]]),
        );
        await assertRejects(
          () => TorchBinFile.open(badType),
          UnsafePickleError,
          "torch.ComplexFloatStorage",
        );
      },
    );
  });
});

Deno.test("unpickleRestricted()", async (t) => {
  const plain = JSON.parse(await Deno.readTextFile(fixture("pickle_plain.json")));
  const hex = (s: string) => Uint8Array.from(s.match(/../g)!, (h) => parseInt(h, 16));
  const norm = (v: unknown): unknown => {
    if (typeof v === "bigint") return { bigint: String(v) };
    if (v instanceof Map) return { dict: [...v].map(([k, x]) => [norm(k), norm(x)]) };
    if (v instanceof Set) return { set: [...v].map(norm) };
    if (v instanceof Uint8Array) {
      return { bytes: Array.from(v, (b) => b.toString(16).padStart(2, "0")).join("") };
    }
    if (Array.isArray(v)) return v.map(norm);
    return v;
  };
  for (const [proto, h] of Object.entries<string>(plain.pickles)) {
    await t.step(`plain data, pickle protocol ${proto}`, () => {
      const bytes = hex(h);
      const { value, end } = unpickleRestricted(bytes);
      assertEquals(end, bytes.length);
      assertEquals(norm(value), plain.expected);
    });
  }
  await t.step("bytes, set, frozenset (protocol 4)", () => {
    assertEquals(norm(unpickleRestricted(hex(plain.extra_pickle)).value), plain.extra_expected);
  });
  await t.step("truncated, unknown opcode, stack misuse: clear errors", () => {
    const bytes = hex(plain.pickles["2"]);
    assertThrows(
      () => unpickleRestricted(bytes.subarray(0, 100), { path: "x.pkl" }),
      TorchBinError,
      "x.pkl",
      "truncated",
    );
    assertThrows(
      () => unpickleRestricted(pk(0x80, 2, 0xff, ".")),
      TorchBinError,
      "unknown pickle opcode 0xff",
    );
    assertThrows(() => unpickleRestricted(pk(0x80, 2, "t.")), TorchBinError, "no MARK");
    assertThrows(() => unpickleRestricted(pk(0x80, 2, "R.")), TorchBinError, "stack underflow");
    assertThrows(() => unpickleRestricted(pk(0x80, 2, 0x82, 1, ".")), TorchBinError, "EXT1");
    assertThrows(() => unpickleRestricted(pk(0x80, 2, "h", 5, ".")), TorchBinError, "memo 5");
    assertThrows(() => unpickleRestricted(pk(0x80, 2, "K", 1, "Q.")), TorchBinError, "persistent");
  });
  await t.step("a self-referencing list does not hang the flattener", async () => {
    await withTemp(async (dir) => {
      // l = []; l.append(l); {"l": l, "w": tensor}
      const pkl = pk(
        0x80,
        2,
        "}",
        "(",
        str("l"),
        "]q",
        0,
        "h",
        0,
        "a",
        str("w"),
        "ctorch._utils\n_rebuild_tensor_v2\n",
        "((",
        str("storage"),
        "ctorch\nFloatStorage\n",
        str("0"),
        str("cpu"),
        0x4b,
        2,
        "tQ",
        0x4b,
        0,
        "(",
        0x4b,
        2,
        "t(",
        0x4b,
        1,
        "t",
        0x89,
        "}",
        "tR",
        "u.",
      );
      const p = join(dir, "cycle.bin");
      await Deno.writeFile(p, makeZip([["a/data.pkl", pkl], ["a/data/0", new Uint8Array(8)]]));
      const f = await TorchBinFile.open(p);
      assertEquals(f.names(), ["w"]);
      f.close();
    });
  });
});

Deno.test("openWeights()", async (t) => {
  await withTemp(async (dir) => {
    await t.step(
      "a directory with pytorch_model.bin, then with model.safetensors preferred",
      async () => {
        await Deno.copyFile(fixture("torch_state.bin"), join(dir, "pytorch_model.bin"));
        let w = await openWeights(dir);
        assert(w instanceof TorchBinFile);
        assertEquals(w.names(), Object.keys(EXPECTED["torch_state.bin"]));
        w.close();
        const r = makeRng(3);
        const data = Float32Array.from({ length: 6 }, () => r());
        await writeSafetensors(join(dir, "model.safetensors"), {
          x: { dtype: "F32", shape: [2, 3], data },
        });
        w = await openWeights(dir);
        assert(w instanceof SafetensorsFile);
        assertEquals(await w.readF32("x"), data);
        w.close();
      },
    );
    await t.step("an index of .bin shards", async () => {
      const sub = join(dir, "sharded");
      await Deno.mkdir(sub);
      await Deno.copyFile(
        fixture("torch_state.bin"),
        join(sub, "pytorch_model-00001-of-00002.bin"),
      );
      await Deno.copyFile(
        fixture("torch_proto4.bin"),
        join(sub, "pytorch_model-00002-of-00002.bin"),
      );
      await Deno.writeTextFile(
        join(sub, "pytorch_model.bin.index.json"),
        JSON.stringify({
          weight_map: {
            half: "pytorch_model-00001-of-00002.bin",
            w: "pytorch_model-00002-of-00002.bin",
          },
        }),
      );
      const w = await openWeights(sub);
      assertEquals(w.names(), ["half", "w"]);
      const want = EXPECTED["torch_proto4.bin"].w.f32bits;
      assertEquals(Array.from(new Uint32Array((await w.readF32("w")).buffer)), want);
      const ref = await TorchBinFile.open(fixture("torch_state.bin"));
      assertEquals(await w.readF32("half"), toF32("F16", await ref.readRaw("half")));
      ref.close();
      w.close();
    });
    await t.step("nothing to open", async () => {
      const empty = join(dir, "empty");
      await Deno.mkdir(empty);
      await assertRejects(() => openWeights(empty), TorchBinError, empty, "pytorch_model.bin");
      await assertRejects(() => openWeights(join(dir, "nope")), TorchBinError, "no such file");
    });
  });
});
