import { assert, assertEquals } from "@lvm/util/testing";
import { type Command, parseFlags, positiveInt, runCli, UsageError } from "./mod.ts";

/** Runs `f` with console.log/error captured. */
async function capture(f: () => Promise<number>) {
  const out: string[] = [], err: string[] = [];
  const { log, error } = console;
  console.log = (...a: unknown[]) => out.push(a.join(" "));
  console.error = (...a: unknown[]) => err.push(a.join(" "));
  try {
    const code = await f();
    return { code, stdout: out.join("\n"), stderr: err.join("\n") };
  } finally {
    Object.assign(console, { log, error });
  }
}

const echo: Command = {
  summary: "print N",
  usage: "usage: prog echo --n N",
  run(args) {
    const { values } = parseFlags({ args, options: { n: { type: "string" } } });
    const n = positiveInt("n", values.n, 1);
    if (n === 13) throw new Error("unlucky");
    if (n === 12) throw new UsageError("twelve");
    console.log(String(n));
    return Promise.resolve(0);
  },
};
const cli = { program: "prog", commands: { echo } };

Deno.test("runCli()", async (t) => {
  await t.step("runs the command; --help lists commands and shows usage, exit 0", async () => {
    assertEquals(await capture(() => runCli(cli, ["echo", "--n", "3"])), {
      code: 0,
      stdout: "3",
      stderr: "",
    });
    const h = await capture(() => runCli(cli, ["--help"]));
    assert(h.code === 0 && h.stdout.includes("commands:\n  echo  print N"), h.stdout);
    const u = await capture(() => runCli(cli, ["echo", "--help"]));
    assertEquals([u.code, u.stdout], [0, echo.usage]);
  });
  await t.step("usage errors exit 2 with the usage; other errors exit 1", async () => {
    for (const args of [["echo", "--n", "-5"], ["echo", "--m"], ["echo", "--n", "12"]]) {
      const r = await capture(() => runCli(cli, args));
      assert(r.code === 2 && r.stderr.includes("usage: prog echo"), `${args}: ${r.stderr}`);
    }
    const neg = await capture(() => runCli(cli, ["echo", "--n", "-5"]));
    assert(neg.stderr.startsWith("error: --n -5: expected >= 1"), neg.stderr);
    const e = await capture(() => runCli(cli, ["echo", "--n", "13"]));
    assertEquals([e.code, e.stderr], [1, "error: unlucky"]);
    const x = await capture(() => runCli(cli, ["frob"]));
    assert(x.code === 2 && x.stderr.includes('unknown command "frob"'), x.stderr);
    const none = await capture(() => runCli(cli, []));
    assert(none.code === 2 && none.stderr.includes("usage: prog <command>"), none.stderr);
  });
});
