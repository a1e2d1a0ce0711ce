import { assert, assertEquals, assertThrows } from "@lvm/util/testing";
import { Gpu, setThreadPinner } from "./gpu.ts";
import {
  parseCpuList,
  pickWorkers,
  PIN_THREADS_ENV,
  pinDriverThreads,
  threadCpuNs,
  threadCpus,
} from "./pin.ts";

Deno.test("parseCpuList reads Linux CPU lists and names what it cannot read", () => {
  assertEquals(parseCpuList("0-3,8,10-11\n"), [0, 1, 2, 3, 8, 10, 11]);
  assertEquals(parseCpuList("5"), [5]);
  assertThrows(() => parseCpuList("0-1,x"), RangeError, '"x" in "0-1,x"');
  assertThrows(() => parseCpuList("3-1"), RangeError, "runs backwards");
});

Deno.test("pickWorkers keeps the threads busy in every run, busiest first", () => {
  // 1 = main (busy but excluded), 2, 3 and 6 = workers, 4 = a queue thread (a little each run),
  // 5 = idle, 7 = a garbage collector busy in one run only (more than any worker then).
  const s0 = new Map([[1, 0], [2, 1e6], [3, 5e6], [4, 0], [5, 0], [7, 0]]);
  const s1 = new Map([[1, 9e7], [2, 21e6], [3, 30e6], [4, 8e6], [5, 1000], [6, 2.2e7], [7, 9e7]]);
  const s2 = new Map([[1, 2e8], [2, 41e6], [3, 55e6], [4, 16e6], [5, 2000], [6, 4.4e7], [7, 9e7]]);
  assertEquals(pickWorkers([s0, s1, s2], 1), [3, 6, 2]);
  // One run only: the collector outscores the workers by 4x, and is all that is picked.
  assertEquals(pickWorkers([s0, s1], 1), [7]);
  // Nothing but noise: no thread reaches minNs.
  assertEquals(pickWorkers([s0, new Map([[2, 1e6 + 5000], [4, 9000]])], 1), []);
  assertThrows(() => pickWorkers([s0], 1), RangeError, "two snapshots");
});

Deno.test("pinDriverThreads: off by the environment, nothing run", async () => {
  Deno.env.set(PIN_THREADS_ENV, "0");
  try {
    let ran = 0;
    const r = await pinDriverThreads(() => {
      ran++;
      return Promise.resolve();
    });
    assertEquals(r, { pinned: 0, cpus: [], threads: [], skipped: `${PIN_THREADS_ENV}=0` });
    assertEquals(ran, 0);
  } finally {
    Deno.env.delete(PIN_THREADS_ENV);
  }
});

const cores = Deno.build.os === "linux" ? threadCpus(Deno.pid).length : 0;

Deno.test({
  name: "a CPU adapter's compute threads end up one per core",
  ignore: cores < 2,
  fn: async () => {
    const g = await Gpu.create();
    try {
      if (!g.software) {
        assertEquals(g.pinning.pinned, 0);
        return;
      }
      const { pinned, cpus, threads } = g.pinning;
      assert(pinned >= 2, `pinned ${pinned} (${g.pinning.skipped})`);
      assertEquals(threads.length, pinned);
      // Each pinned thread may run on its one core only, and the first `cores` are all different.
      threads.forEach((tid, i) => assertEquals(threadCpus(tid), [cpus[i]]));
      const first = cpus.slice(0, cores);
      assertEquals(new Set(first).size, first.length);
      // The main thread is left where it was.
      assertEquals(threadCpus(Deno.pid).length, cores);
      // They are the threads that compute: a dispatch's CPU time goes mostly to them.
      const ns = (t: Map<number, number>, tids: readonly number[]) =>
        tids.reduce((s, tid) => s + (t.get(tid) ?? 0), 0);
      const spin = g.pipeline(
        "pin_test spin",
        `@group(0) @binding(0) var<storage, read_write> o: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3u) {
  var x = f32(id.x); for (var i = 0u; i < 40000u; i++) { x = x * 0.999999 + 0.25; } o[id.x] = x; }`,
      );
      const out = g.empty([64 * 32]);
      g.dispatch(spin, [out], null, 32);
      await g.read(out); // compiled and run once
      const t0 = threadCpuNs();
      g.dispatch(spin, [out], null, 32);
      await g.read(out);
      const t1 = threadCpuNs(), tids = [...t1.keys()];
      const pinnedNs = ns(t1, threads) - ns(t0, threads), allNs = ns(t1, tids) - ns(t0, tids);
      assert(pinnedNs > 0.8 * allNs, `pinned threads ${pinnedNs} of ${allNs} ns`);
      out.release();
    } finally {
      g.destroy();
    }
    const off = await Gpu.create({ pinThreads: false });
    try {
      assertEquals(off.pinning.pinned, 0);
      if (off.software) assertEquals(off.pinning.skipped, "pinThreads: false");
    } finally {
      off.destroy();
    }
    // Without the pinner installed (the browser-ready module alone), nothing is pinned.
    setThreadPinner(null);
    try {
      const plain = await Gpu.create();
      assertEquals(plain.pinning.pinned, 0);
      if (plain.software) assert(plain.pinning.skipped?.includes("import @lvm/gpu/pin"));
      plain.destroy();
    } finally {
      setThreadPinner(pinDriverThreads);
    }
  },
});
