import { assert, assertEquals, assertStrictEquals } from "@lvm/util/testing";
import { formatDuration, formatProgress, loadProgress, progressMeter } from "./mod.ts";

Deno.test("formatDuration()", () => {
  assertStrictEquals(formatDuration(0), "0:00:00");
  assertStrictEquals(formatDuration(3725.4), "1:02:05");
  assertStrictEquals(formatDuration(NaN), "?");
  assertStrictEquals(formatDuration(-1), "?");
});

Deno.test("formatProgress(): count, percent, fields, rate, ETA", () => {
  assertStrictEquals(
    formatProgress({ unit: "step", done: 10, total: 40, seconds: 5 }),
    "step 10/40 (25.0%) · 2.00 step/s · ETA 0:00:15",
  );
  assertStrictEquals(
    formatProgress({
      label: "[train]",
      unit: "step",
      done: 3,
      total: 4,
      seconds: 1,
      fields: ["loss 0.6931"],
      rate: 1234.4,
      rateUnit: "tokens",
      eta: 61,
    }),
    "[train] step 3/4 (75.0%) · 1,234 tokens/s · loss 0.6931 · ETA 0:01:01",
  );
  assertStrictEquals(
    formatProgress({ done: 0, total: 5, seconds: 0 }),
    "0/5 (0.0%) · ? items/s · ETA ?",
  );
});

Deno.test("progressMeter(): the first line, throttled middles, always the last", () => {
  const lines: string[] = [];
  const tick = progressMeter({ total: 4, unit: "tokens", log: (l) => lines.push(l), everyMs: 1e9 });
  for (let i = 1; i <= 4; i++) tick(i);
  assertStrictEquals(lines.length, 2);
  assert(lines[0].startsWith("tokens 1/4 (25.0%)"), lines[0]);
  assert(lines[1].startsWith("tokens 4/4 (100.0%)") && lines[1].endsWith("ETA 0:00:00"), lines[1]);
});

Deno.test("loadProgress: a line per interval with the count and an eta; none for a fast load", () => {
  const lines: string[] = [];
  const every = loadProgress((l) => lines.push(l), 0);
  for (let i = 0; i < 3; i++) every(`t${i}`, i, 3);
  assertEquals(lines.length, 3);
  assert(/loaded 2\/3 tensors in \d+ s, eta \d+ s/.test(lines[1]), lines[1]);
  const quiet: string[] = [];
  const slow = loadProgress((l) => quiet.push(l), 60_000);
  for (let i = 0; i < 3; i++) slow(`t${i}`, i, 3);
  assertEquals(quiet, []);
});
