/** The root launcher `./lvm` (README's two commands: `./lvm demo`, `./lvm test`). @module */
import { assertEquals } from "@lvm/util/testing";

const ROOT = new URL("..", import.meta.url).pathname;

Deno.test("./lvm: valid bash, usage without a task, `deno task` with one", async () => {
  const run = (cmd: string, args: string[]) =>
    new Deno.Command(cmd, { args, cwd: ROOT, stdout: "piped", stderr: "piped" }).output();
  assertEquals((await run("bash", ["-n", "lvm"])).code, 0);
  const none = await run("./lvm", []);
  assertEquals(none.code, 2);
  assertEquals(new TextDecoder().decode(none.stderr).includes("usage: ./lvm TASK"), true);
  // An unknown task reaches `deno task`, which names it.
  const bad = await run("./lvm", ["no-such-task"]);
  assertEquals(bad.code !== 0, true);
  assertEquals(new TextDecoder().decode(bad.stderr).includes("no-such-task"), true);
});
