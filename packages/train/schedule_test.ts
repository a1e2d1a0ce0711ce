import { lrAt, makeSchedule } from "./schedule.ts";
import { assert, assertEquals, assertThrows } from "./testing.ts";

const close = (a: number, b: number) => Math.abs(a - b) <= 1e-12 + 1e-9 * Math.abs(b);

Deno.test("lrAt()", async (t) => {
  await t.step("official cosine: 0 -> 1.5e-4 over 8000 steps, then cosine to 3e-5", () => {
    const s = makeSchedule({ lr: 1.5e-4, minLr: 3e-5, warmup: 8000, decaySteps: 108_000 });
    assertEquals(lrAt(s, 0), 0);
    assert(close(lrAt(s, 4000), 0.75e-4), `mid-warmup ${lrAt(s, 4000)}`);
    assert(close(lrAt(s, 7999), 1.5e-4 * 7999 / 8000));
    assertEquals(lrAt(s, 8000), 1.5e-4);
    // Halfway through the decay the cosine is at the midpoint of peak and floor.
    assert(close(lrAt(s, 58_000), (1.5e-4 + 3e-5) / 2), `half ${lrAt(s, 58_000)}`);
    // A quarter: floor + (peak - floor) * (1 + cos(pi/4)) / 2.
    const q = 3e-5 + 1.2e-4 * (1 + Math.SQRT1_2) / 2;
    assert(close(lrAt(s, 33_000), q), `quarter ${lrAt(s, 33_000)} vs ${q}`);
    assertEquals(lrAt(s, 108_000), 3e-5);
    assertEquals(lrAt(s, 500_000), 3e-5);
    // Monotone: up in warmup, down after.
    for (let i = 1; i < 108_000; i += 997) {
      const [a, b] = [lrAt(s, i - 1), lrAt(s, i)];
      assert(i <= 8000 ? b >= a : b <= a, `not monotone at ${i}: ${a} -> ${b}`);
    }
  });

  await t.step("linear decay, constant, init lr, no warmup", () => {
    const lin = makeSchedule({ kind: "linear", lr: 1, minLr: 0.2, warmup: 0, decaySteps: 10 });
    assertEquals(lrAt(lin, 0), 1);
    assert(close(lrAt(lin, 5), 0.6));
    assertEquals(lrAt(lin, 10), 0.2);
    const c = makeSchedule({ kind: "constant", lr: 0.5, warmup: 4, initLr: 0.1 });
    assertEquals(lrAt(c, 0), 0.1);
    assert(close(lrAt(c, 2), 0.3));
    assertEquals([lrAt(c, 4), lrAt(c, 1e6)], [0.5, 0.5]);
    const cos = makeSchedule({ lr: 2, minLr: 1, decaySteps: 2 });
    assertEquals([lrAt(cos, 0), lrAt(cos, 1), lrAt(cos, 2)], [2, 1.5, 1]);
  });

  await t.step("bad input names the field", () => {
    assertThrows(() => makeSchedule({ lr: 1 }), RangeError, "decaySteps");
    assertThrows(() => makeSchedule({ lr: -1, decaySteps: 1 }), RangeError, "lr");
    assertThrows(() => makeSchedule({ lr: 1, warmup: 5, decaySteps: 3 }), RangeError, "decaySteps");
    assertThrows(() => makeSchedule({ lr: 1, warmup: 1.5, decaySteps: 3 }), RangeError, "warmup");
    const s = makeSchedule({ lr: 1, decaySteps: 3 });
    assertThrows(() => lrAt(s, -1), RangeError, "step");
  });
});
