import {
  type AdapterKind,
  type AdapterSource,
  getGpu,
  Gpu,
  GpuError,
  KERNEL_KIND_ENV,
  kernelKindFromEnv,
  Params,
  parseKernelKind,
  requestAdapter,
} from "./gpu.ts";
import { roundF16 } from "@lvm/util";
import { assertClose, assertEquals, assertRejects, assertThrows, randu } from "@lvm/util/testing";

function assert(cond: unknown, msg: string): asserts cond {
  if (!cond) throw new Error(msg);
}

/** An adapter source that answers each request from `answers` in turn and counts the calls. */
function fakeSource(...answers: (() => Promise<GPUAdapter | null>)[]) {
  const src = {
    calls: 0,
    requestAdapter(): Promise<GPUAdapter | null> {
      return answers[Math.min(src.calls++, answers.length - 1)]();
    },
  };
  return src;
}
const none = () => Promise.resolve(null);
const real = () => navigator.gpu.requestAdapter();

// y[i] += k * x[i] (f32), one invocation per element: a kernel the tests own.
const AXPY = `
struct P { n: u32, k: f32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u) {
  if (id.x < p.n) { y[id.x] += p.k * x[id.x]; }
}`;

// out[i] = the i-th half of the packed f16 words, widened as WGSL's unpack2x16float does.
const UNPACK_F16 = `
struct P { n: u32 }
@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u) {
  if (id.x < p.n) { out[id.x] = unpack2x16float(w[id.x / 2u])[id.x % 2u]; }
}`;

Deno.test("Gpu.create() / requestAdapter()", async (t) => {
  await t.step("no adapter: a GpuError that says how to get one, after one retry", async () => {
    const src = fakeSource(none);
    const e = await assertRejects(() => requestAdapter(src, {}, 1), GpuError, "No WebGPU adapter");
    for (const hint of ["mesa-vulkan-drivers", "DENO_WEBGPU_BACKEND=vulkan", "GPU driver"]) {
      assert(e.message.includes(hint), `message should mention ${hint}: ${e.message}`);
    }
    assertEquals(src.calls, 2);
    const viaCreate = fakeSource(none);
    await assertRejects(() => Gpu.create({ gpu: viaCreate, retryDelayMs: 1 }), GpuError, "apt-get");
    assertEquals(viaCreate.calls, 2);
  });
  await t.step("a throwing requestAdapter is a GpuError with the cause kept", async () => {
    const src: AdapterSource = {
      requestAdapter: () => Promise.reject(new TypeError("no backend")),
    };
    const e = await assertRejects(() => requestAdapter(src), GpuError, "no backend");
    assert(e.cause instanceof TypeError, "cause kept");
    assert(e.message.includes("mesa-vulkan-drivers"), e.message);
  });
  await t.step("null once, then an adapter: the retry succeeds", async () => {
    const src = fakeSource(none, real);
    const g = await Gpu.create({ gpu: src, retryDelayMs: 1 });
    try {
      assertEquals(src.calls, 2);
      const x = g.upload([1, 2, 3], [3]);
      assertEquals(Array.from(await g.read(x)), [1, 2, 3]);
    } finally {
      g.destroy();
    }
  });
  await t.step("a failing requestDevice is a GpuError naming the adapter", async () => {
    const adapter = (await navigator.gpu.requestAdapter())!;
    const broken = new Proxy(adapter, {
      get(target, key) {
        if (key === "requestDevice") {
          return () => Promise.reject(new DOMException("out of devices", "OperationError"));
        }
        const v = Reflect.get(target, key, target);
        return typeof v === "function" ? v.bind(target) : v;
      },
    });
    const e = await assertRejects(
      () => Gpu.create({ gpu: { requestAdapter: () => Promise.resolve(broken) } }),
      GpuError,
      "requestDevice",
    );
    assert(e.message.includes("out of devices"), e.message);
    assert(e.message.includes(adapter.info.description || "adapter"), e.message);
    assert(e.cause instanceof DOMException, "cause kept");
  });
});

Deno.test("Gpu: device loss", async (t) => {
  await t.step("read and sync reject with a GpuError once the device is lost", async () => {
    const g = await Gpu.create();
    const x = g.upload([1, 2, 3], [3]);
    assertEquals(Array.from(await g.read(x)), [1, 2, 3]);
    const info = await (g.device.destroy(), g.device.lost); // what a driver reset looks like
    assertEquals(info.reason, "destroyed");
    assert(g.lost, "lost is set");
    await assertRejects(() => g.read(x), GpuError, "device lost");
    await assertRejects(() => g.sync(), GpuError, "make a new context");
    g.destroy();
  });
  await t.step("a read in flight when the device is lost rejects, not hangs", async () => {
    const g = await Gpu.create();
    const x = g.upload(randu(4099, 1), [4099]);
    const p = g.read(x);
    g.device.destroy(); // the spec rejects pending mapAsync calls of a destroyed device
    await assertRejects(() => p, GpuError, "device lost");
    g.destroy();
  });
  await t.step("Gpu.destroy(): reads say the context was destroyed", async () => {
    const g = await Gpu.create();
    const x = g.upload([5], [1]);
    g.destroy();
    await assertRejects(() => g.read(x), GpuError, "destroyed");
  });
  await t.step("getGpu() makes a fresh context after a loss", async () => {
    const a = await getGpu();
    assert(a === await getGpu(), "the same context while it lives");
    a.device.destroy();
    await a.device.lost;
    const b = await getGpu();
    assert(a !== b && !b.lost, "a fresh context after the loss");
    const x = b.upload([1, -2], [2]);
    assertEquals(Array.from(await b.read(x)), [1, -2]);
    b.destroy();
    const c = await getGpu();
    assert(c !== b && !c.lost, "a fresh context after destroy()");
  });
});

Deno.test("Gpu: buffer pool, pipeline cache, one submit per step", async (t) => {
  const gpu = await getGpu();
  await t.step("released buffers are reused by size bucket", () => {
    const a = gpu.empty([1000]);
    const buf = a.buffer;
    a.release();
    const bytes = gpu.pool.allocatedBytes;
    const b = gpu.empty([900]); // 3600 bytes: the same 4096-byte bucket
    assert(b.buffer === buf, "same buffer handed out again");
    assertEquals(gpu.pool.allocatedBytes, bytes);
    const c = gpu.empty([900]);
    assert(c.buffer !== buf, "a buffer in use is not handed out twice");
    b.release();
    c.release();
  });
  await t.step("a view shares its base's ownership: one release, one buffer back", () => {
    const base = gpu.empty([6, 7]); // (6,7)
    const v = base.view([42]); // (42)
    const free = gpu.pool.freeCount;
    v.release();
    assert(base.released && v.released, "both released");
    base.release();
    v.release();
    assertEquals(gpu.pool.freeCount, free + 1);
    const p = gpu.empty([42]), q = gpu.empty([42]);
    assert(p.buffer !== q.buffer, "the buffer is handed out once");
    p.release();
    q.release();
  });
  await t.step("a buffer put twice into the pool is handed out once", () => {
    const b = gpu.pool.take(100);
    gpu.pool.put(b);
    gpu.pool.put(b);
    const x = gpu.pool.take(100), y = gpu.pool.take(100);
    assert(x !== y, "distinct buffers");
    gpu.pool.put(x);
    gpu.pool.put(y);
  });
  await t.step("the pipeline cache compiles a kernel once per key", () => {
    let builds = 0;
    const code = () => (builds++, AXPY);
    const count = gpu.pipelineCount;
    const p1 = gpu.pipeline("gpu_test.axpy", code);
    const p2 = gpu.pipeline("gpu_test.axpy", code);
    assert(p1 === p2, "the same pipeline object");
    assertEquals(builds, 1);
    assertEquals(gpu.pipelineCount, count + 1);
  });
  await t.step(
    "300 dispatches in one encoder: one submit, one read, uniforms intact; submitEvery",
    async () => {
      const n = 45 * 65, steps = 300; // 300 x 256-byte uniform slots span two 64 KiB arenas
      const x = Float32Array.from(randu(n, 5), (v) => Math.round(3 * v)); // integers: exact sums
      const X = gpu.upload(x, [n]), Y = gpu.zeros([n]);
      await gpu.sync();
      const pipe = gpu.pipeline("gpu_test.axpy", AXPY);
      const every = gpu.submitEvery;
      const sum = (steps * (steps + 1)) / 2;
      try {
        gpu.submitEvery = 0; // only the read submits
        const [s0, d0, r0] = [gpu.submitCount, gpu.dispatchCount, gpu.readCount];
        for (let k = 1; k <= steps; k++) {
          gpu.dispatch(pipe, [X, Y], new Params().u32(n).f32(k), Math.ceil(n / 64));
        }
        const y = await gpu.read(Y);
        assertEquals(gpu.submitCount - s0, 1);
        assertEquals(gpu.dispatchCount - d0, steps);
        assertEquals(gpu.readCount - r0, 1);
        assertClose(y, x.map((v) => v * sum), { atol: 0, rtol: 0 }, "y = sum_k k x");
        // submitEvery: the same work sent every 7 dispatches (42 submits, then the read's), in order,
        // each submit's uniforms intact.
        gpu.submitEvery = 7;
        gpu.write(Y, new Float32Array(n));
        const s1 = gpu.submitCount;
        for (let k = 1; k <= steps; k++) {
          gpu.dispatch(pipe, [X, Y], new Params().u32(n).f32(k), Math.ceil(n / 64));
        }
        assertEquals(gpu.submitCount - s1, Math.floor(steps / 7));
        const y2 = await gpu.read(Y);
        assertEquals(gpu.submitCount - s1, Math.floor(steps / 7) + 1);
        assertClose(
          y2,
          x.map((v) => v * sum),
          { atol: 0, rtol: 0 },
          "y = sum_k k x, submitted every 7",
        );
      } finally {
        gpu.submitEvery = every;
      }
      X.release();
      Y.release();
    },
  );
  await t.step("submitEvery defaults by kernel kind", () => {
    assertEquals(gpu.submitEvery, gpu.kind === "gpu" ? 64 : 0);
  });
  await t.step(
    "bind groups: reused for the same bindings, fresh ones after pool.trim()",
    async () => {
      const n = 100;
      const pipe = gpu.pipeline("gpu_test.axpy", AXPY);
      const X = gpu.upload(new Float32Array(n).fill(1), [n]), Y = gpu.zeros([n]);
      // Three submits of the same dispatch: the uniform lands at the same arena offset each time, so
      // the first group is reused, and each run still reads its own k.
      const b0 = gpu.bindGroupCount;
      for (const k of [1, 2, 4]) {
        gpu.dispatch(pipe, [X, Y], new Params().u32(n).f32(k), 2);
        gpu.submit();
      }
      assertEquals(gpu.bindGroupCount - b0, 1);
      assertClose(
        await gpu.read(Y),
        new Float32Array(n).fill(7),
        { atol: 0, rtol: 0 },
        "y = 1+2+4",
      );
      // Other bindings (x and y swapped), another group.
      gpu.dispatch(pipe, [Y, X], new Params().u32(n).f32(1), 2);
      assertEquals(gpu.bindGroupCount - b0, 2);
      assertClose(await gpu.read(X), new Float32Array(n).fill(8), { atol: 0, rtol: 0 }, "x = 1+7");
      // A buffer freed and destroyed, a new one in its place: nothing stale is bound.
      Y.release();
      gpu.pool.trim();
      const Z = gpu.zeros([n]);
      const b1 = gpu.bindGroupCount;
      gpu.dispatch(pipe, [X, Z], new Params().u32(n).f32(2), 2);
      assertEquals(gpu.bindGroupCount - b1, 1);
      assertClose(await gpu.read(Z), new Float32Array(n).fill(16), { atol: 0, rtol: 0 }, "z = 2x");
      // The same dispatch again reuses its group, unless a trim emptied the cache in between.
      gpu.dispatch(pipe, [X, Z], new Params().u32(n).f32(0), 2);
      assertEquals(gpu.bindGroupCount - b1, 1);
      gpu.pool.trim();
      gpu.dispatch(pipe, [X, Z], new Params().u32(n).f32(0), 2);
      assertEquals(gpu.bindGroupCount - b1, 2);
      await gpu.sync();
      X.release();
      Z.release();
    },
  );
  await t.step("sync() waits only when something was sent since a read or sync", async () => {
    const q = gpu.device.queue;
    const orig = q.onSubmittedWorkDone;
    let waits = 0;
    q.onSubmittedWorkDone = () => (waits++, orig.call(q));
    try {
      const pipe = gpu.pipeline("gpu_test.axpy", AXPY);
      const X = gpu.upload([1, 2, 3], [3]), Y = gpu.zeros([3]);
      gpu.dispatch(pipe, [X, Y], new Params().u32(3).f32(2), 1);
      assertEquals(Array.from(await gpu.read(Y)), [2, 4, 6]);
      await gpu.sync(); // the read saw everything through
      assertEquals(waits, 0);
      gpu.dispatch(pipe, [X, Y], new Params().u32(3).f32(1), 1);
      await gpu.sync(); // a dispatch since
      assertEquals(waits, 1);
      await gpu.sync(); // nothing since
      assertEquals(waits, 1);
      gpu.write(X, [0, 0, 0]);
      await gpu.sync(); // a queue write since
      assertEquals(waits, 2);
      assertEquals(Array.from(await gpu.read(Y)), [3, 6, 9]);
      X.release();
      Y.release();
    } finally {
      q.onSubmittedWorkDone = orig;
    }
  });
  await t.step("write() checks the data length", () => {
    const T = gpu.empty([2, 3]);
    assertThrows(() => gpu.write(T, [1, 2, 3, 4, 5]), RangeError, "holds 6 values, got 5");
    assertThrows(() => gpu.write(T, new Float32Array(7)), RangeError, "[2,3] f32");
    assertThrows(() => gpu.writeBytes(T, new Uint8Array(20), 8), RangeError, "24 bytes");
    T.release();
  });
});

Deno.test("Gpu: upload/read round trips", async (t) => {
  const gpu = await getGpu();
  await t.step("an empty tensor uploads and writes (nothing is sent)", async () => {
    const q0 = gpu.submitCount;
    const e = gpu.upload([], [0]);
    gpu.write(e, new Float32Array(0));
    assertEquals([e.size, gpu.submitCount - q0], [0, 0]);
    e.release();
    const x = gpu.upload([1, 2], [2]); // the device still works
    assertEquals(Array.from(await gpu.read(x)), [1, 2]);
    x.release();
  });
  await t.step(
    "uploads past stagingLimit are sent as they go; settle() waits for them",
    async () => {
      const limit = gpu.stagingLimit;
      gpu.stagingLimit = 4000; // bytes: 1,000 f32 values
      try {
        // The shared context may hold bytes counted by earlier tests: 4,000 more send them all.
        const prime = gpu.upload(new Float32Array(1000), [1000]);
        const flushes = gpu.stagingFlushes;
        await gpu.settle();
        await gpu.settle(); // nothing sent since: returns at once
        const parts = [0, 1, 2, 3, 4].map((k) => randu(600, 100 + k));
        const ts = parts.map((p) => gpu.upload(p, [600])); // 2,400 bytes each
        assertEquals(gpu.stagingFlushes - flushes, 2, "sent after the 2nd and the 4th upload");
        await gpu.settle();
        const half = gpu.empty([1000], "f16"); // 2,000 bytes: packed f16 counts its packed size
        gpu.write(half, new Float32Array(1000).fill(0.5));
        gpu.writeBytes(half, new Uint8Array(2000).fill(0), 0);
        assertEquals(gpu.stagingFlushes - flushes, 3, "f16 and raw bytes count too");
        const got = await gpu.readMany(ts);
        got.forEach((g, k) => assertEquals(g, parts[k], `tensor ${k} intact`));
        assertEquals(await gpu.readF32(half), new Float32Array(1000), "ordered writes");
        [prime, ...ts, half].forEach((x) => x.release());
      } finally {
        gpu.stagingLimit = limit;
      }
    },
  );
  for (const n of [1, 7, 45 * 65]) {
    await t.step(`f32, i32, u32 [${n}] bit-exact`, async () => {
      const f = randu(n, n, -300, 300);
      f[0] = n === 1 ? -0 : f[0];
      if (n > 6) f.set([Infinity, -Infinity, NaN, 1e-45, -3.4e38, 1.17549435e-38], 1);
      const i = Int32Array.from({ length: n }, (_, k) => (k * 2654435761) | 0);
      i[0] = -2147483648;
      const u = Uint32Array.from({ length: n }, (_, k) => (k * 2246822519) >>> 0);
      u[0] = 0xffffffff;
      const [F, I, U] = [gpu.upload(f, [n]), gpu.upload(i, [n], "i32"), gpu.upload(u, [n], "u32")];
      const [gf, gi, gu] = await gpu.readMany([F, I, U]);
      assert(
        gf instanceof Float32Array && gi instanceof Int32Array && gu instanceof Uint32Array,
        "types",
      );
      assertEquals(
        new Uint32Array(gf.buffer, gf.byteOffset, n),
        new Uint32Array(f.buffer, f.byteOffset, n),
      );
      assertEquals(gi, i);
      assertEquals(gu, u);
      [F, I, U].forEach((T) => T.release());
    });
  }
  for (const n of [1, 7, 2925]) {
    await t.step(`f16 [${n}] packed two per word, as WGSL unpack2x16float reads it`, async () => {
      const v = randu(n, 10 + n, -300, 300);
      if (n > 6) v.set([65504, -70000, 6e-8, 1e-9, -0.5, 0.1], 0); // max, overflow, subnormal, 0
      const ref = roundF16(v);
      const H = gpu.upload(v, [n], "f16");
      assertEquals(H.byteLength, Math.ceil(n / 2) * 4);
      assertClose(await gpu.read(H), ref, { atol: 0, rtol: 0 }, "f16 read");
      const out = gpu.empty([n]);
      const pipe = gpu.pipeline("gpu_test.unpack_f16", UNPACK_F16);
      gpu.dispatch(pipe, [H, out], new Params().u32(n), Math.ceil(n / 64));
      assertClose(await gpu.readF32(out), ref, { atol: 0, rtol: 0 }, "unpack2x16float");
      H.release();
      out.release();
    });
  }
});

Deno.test("kernel kind: GpuOptions.kind, LVM_KERNEL_KIND, bad values", async (t) => {
  const old = Deno.env.get(KERNEL_KIND_ENV);
  const restore = () =>
    old === undefined ? Deno.env.delete(KERNEL_KIND_ENV) : Deno.env.set(KERNEL_KIND_ENV, old);
  try {
    for (const kind of ["cpu", "gpu"] as const) {
      await t.step(
        `GpuOptions.kind "${kind}" wins over the adapter and the environment`,
        async () => {
          Deno.env.set(KERNEL_KIND_ENV, kind === "cpu" ? "gpu" : "cpu");
          const g = await Gpu.create({ kind });
          assertEquals(g.kind, kind);
          assertEquals(g.describe().includes(`${kind} kernels`), true);
          g.destroy();
        },
      );
      await t.step(`LVM_KERNEL_KIND=${kind} forces it when no option is given`, async () => {
        Deno.env.set(KERNEL_KIND_ENV, kind);
        const g = await Gpu.create();
        assertEquals(g.kind, kind);
        g.destroy();
      });
    }
    await t.step("unset: detected from the adapter", async () => {
      Deno.env.delete(KERNEL_KIND_ENV);
      assertEquals(kernelKindFromEnv(), undefined);
      const g = await Gpu.create();
      const soft = /llvmpipe|lavapipe|swiftshader|software/i.test(
        `${g.info.description} ${g.info.device} ${g.info.architecture}`,
      ) || g.info.isFallbackAdapter;
      assertEquals(g.kind, soft ? "cpu" : "gpu");
      g.destroy();
    });
    await t.step("a bad value is a TypeError naming the switch and the choices", async () => {
      Deno.env.set(KERNEL_KIND_ENV, "fast");
      await assertRejects(() => Gpu.create(), TypeError, `LVM_KERNEL_KIND must be "cpu"`);
      Deno.env.delete(KERNEL_KIND_ENV);
      await assertRejects(
        () => Gpu.create({ kind: "tpu" as AdapterKind }),
        TypeError,
        'GpuOptions.kind must be "cpu"',
      );
      assertThrows(() => parseKernelKind("GPU", "x"), TypeError, 'got "GPU"');
    });
    await t.step("getGpu({ kind }) refuses a kind other than the live context's", async () => {
      const g = await getGpu();
      assertEquals(await getGpu({ kind: g.kind }), g);
      const other = g.kind === "cpu" ? "gpu" : "cpu";
      await assertRejects(() => getGpu({ kind: other }), GpuError, `already runs "${g.kind}"`);
    });
  } finally {
    restore();
  }
});

Deno.test("Gpu: startProfile()/stopProfile() time every dispatch by kernel", async (t) => {
  const gpu = await getGpu();
  if (!gpu.features.has("timestamp-query")) {
    await t.step("without timestamp-query, startProfile says so", () => {
      assertThrows(() => gpu.startProfile(), GpuError, /timestamp-query/);
    });
    return;
  }
  const axpy = gpu.pipeline("gpu_test.profile.axpy", AXPY);
  const twice = gpu.pipeline("gpu_test.profile.axpy2", AXPY.replace("p.k * x", "2.0 * p.k * x"));
  await t.step("counts and times each kernel; the work is done as without a profile", async () => {
    const n = 45 * 65;
    const X = gpu.upload(Float32Array.from({ length: n }, (_, i) => i % 7), [n]);
    const Y = gpu.zeros([n]);
    const wg = Math.ceil(n / 64);
    gpu.dispatch(axpy, [X, Y], new Params().u32(n).f32(1), wg); // before the start: not profiled
    gpu.startProfile();
    assert(gpu.profiling, "profiling after startProfile");
    assertThrows(() => gpu.startProfile(), GpuError, /already running/);
    for (let i = 0; i < 3; i++) gpu.dispatch(axpy, [X, Y], new Params().u32(n).f32(1), wg);
    gpu.dispatch(twice, [X, Y], new Params().u32(n).f32(1), wg);
    const prof = await gpu.stopProfile();
    assert(!gpu.profiling, "not profiling after stopProfile");
    assertEquals(
      prof.map((k) => [k.kernel, k.dispatches]).sort(),
      [["gpu_test.profile.axpy", 3], ["gpu_test.profile.axpy2", 1]],
    );
    for (const k of prof) assert(Number.isFinite(k.ms) && k.ms >= 0, `${k.kernel}: ms ${k.ms}`);
    assert(prof[0].ms >= prof[1].ms, "slowest first");
    const y = await gpu.readF32(Y);
    for (let i = 0; i < n; i++) {
      if (y[i] !== 6 * (i % 7)) throw new Error(`y[${i}] = ${y[i]}, expected ${6 * (i % 7)}`);
    }
    await assertRejects(() => gpu.stopProfile(), GpuError, /no profile is running/);
    X.release();
    Y.release();
  });
  await t.step("more dispatches than one query set holds", async () => {
    const n = 64, X = gpu.upload(new Float32Array(n).fill(1), [n]), Y = gpu.zeros([n]);
    gpu.startProfile();
    for (let i = 0; i < 2100; i++) gpu.dispatch(axpy, [X, Y], new Params().u32(n).f32(1), 1);
    const prof = await gpu.stopProfile();
    assertEquals(prof.map((k) => [k.kernel, k.dispatches]), [["gpu_test.profile.axpy", 2100]]);
    assertEquals((await gpu.readF32(Y))[n - 1], 2100);
    X.release();
    Y.release();
  });
});
