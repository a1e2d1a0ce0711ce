/**
 * `deno task demo [--models DIR] [--out DIR] [--quick | --synthetic | --train]`:
 *
 * - with the shipped models in `models/` (models/README.md: `tokenizer/`, `lvm/`, `examples/`,
 *   `metrics.json`): prompts them with held-out example images, one prompt per task, and writes
 *   paper-style strips, the in-context and scaling charts and a report (_shipped.ts), in < 60 s;
 * - without them (a fresh clone): says so, and runs the synthetic demo (_synthetic.ts: a tiny VQGAN
 *   and LLaMA trained on built-in moving-square clips, ~6 min);
 * - `--quick`: the synthetic demo with a few steps per stage (a smoke test, ~25 s);
 * - `--train`: trains the shipped models (tools/shipped/train.sh; hours, resumable).
 * @module
 */
import { join } from "node:path";
import "@lvm/gpu/pin"; // lavapipe: its compute threads one per core
import { parseFlags } from "@lvm/cli";
import { runShipped, SHIPPED, shippedModelsPresent } from "./_shipped.ts";
import { runSynthetic } from "./_synthetic.ts";

const USAGE = `usage: deno task demo [--models DIR] [--out DIR] [--quick | --synthetic | --train]

  (default)     the shipped models in --models (default models/: tokenizer/, lvm/, examples/,
                metrics.json) on held-out examples -> OUT/shipped/ (strips, charts, report);
                without them, the synthetic demo
  --quick       the synthetic demo, a few steps per stage (smoke test, ~25 s)
  --synthetic   the synthetic demo in full (~6 min on 2 CPU cores)
  --train       train the shipped models: tools/shipped/train.sh (hours; resumable)
  --out DIR     output folder (default out/demo)`;

const { values } = parseFlags({
  args: Deno.args,
  options: {
    out: { type: "string", default: "out/demo" },
    models: { type: "string", default: "models" },
    quick: { type: "boolean", default: false },
    synthetic: { type: "boolean", default: false },
    train: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  console.log(USAGE);
  Deno.exit(0);
}
const out = values.out, models = values.models;

if (values.train) {
  const script = new URL("../../tools/shipped/train.sh", import.meta.url).pathname;
  console.error(
    `training the shipped models with ${script}: on a 2-core CPU (lavapipe) this takes hours ` +
      `(split ~3 min, tokenizer ~45-60 min, datasets ~15 min, then three LVMs, the longest stage; ` +
      `the script prints its own plan). It is resumable: run it again after an interruption. ` +
      `Logs: out/shipped/logs/. When it is done, copy the models into ${models}/ as ` +
      `models/README.md says and run tools/shipped/evaluate.sh.`,
  );
  const r = await new Deno.Command("bash", { args: [script], stdout: "inherit", stderr: "inherit" })
    .output();
  Deno.exit(r.code);
}

const t0 = performance.now();
if (!values.quick && !values.synthetic && shippedModelsPresent(models)) {
  const report = await runShipped(models, join(out, "shipped"));
  console.log(`demo finished in ${((performance.now() - t0) / 1000).toFixed(1)} s:`);
  console.log(`  strips (prompt, generated in red, truth): ${join(out, "shipped", "strips")}/`);
  console.log(`  charts: ${join(out, "shipped")}/in_context.png (and scaling.png with metrics)`);
  console.log(`  report: ${report} and report.json`);
} else {
  if (!values.quick && !values.synthetic) {
    console.error(
      `the shipped models are not in ${models}/ yet (${join(models, SHIPPED.tokenizer)}/ and ` +
        `${join(models, SHIPPED.model)}/; see models/README.md, or \`deno task demo --train\`): ` +
        `running the synthetic demo instead (a tiny VQGAN and LLaMA trained here, ~6 min)`,
    );
  }
  await runSynthetic(out, values.quick);
}
