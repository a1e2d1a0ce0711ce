/** The page's server: what it lists, byte ranges, and nothing outside the folders it was given. */
import { assert, assertEquals, assertStrictEquals } from "@lvm/util/testing";
import { join } from "node:path";
import { serveWeb } from "./server.ts";

Deno.test("serveWeb(): config, files by range, 127.0.0.1 only, no path outside", async () => {
  const dir = await Deno.makeTempDir({ prefix: "lvm-web-server-" });
  try {
    const model = join(dir, "model"), ex = join(dir, "examples", "seq");
    await Deno.mkdir(model, { recursive: true });
    await Deno.mkdir(ex, { recursive: true });
    await Deno.writeTextFile(join(model, "config.json"), "{}");
    await Deno.writeFile(join(model, "model.safetensors"), new Uint8Array([0, 1, 2, 3, 4, 5, 6]));
    for (const n of ["10.png", "2.png", "notes.txt"]) await Deno.writeTextFile(join(ex, n), n);
    await Deno.writeTextFile(join(dir, "secret.txt"), "no");
    const { url, server } = serveWeb({ bundles: dir, model, examples: join(dir, "examples") });
    try {
      assert(url.startsWith("http://127.0.0.1:"), url);
      const cfg = await (await fetch(`${url}api/config`)).json();
      assertEquals(
        cfg.model.files.map((f: { name: string; size: number }) => [f.name, f.size]),
        [
          ["config.json", 2],
          ["model.safetensors", 7],
        ],
      );
      assertStrictEquals(cfg.tokenizer, null);
      assertEquals(cfg.examples, [{
        name: "seq",
        images: ["/files/examples/seq/2.png", "/files/examples/seq/10.png"],
      }]);
      const r = await fetch(`${url}files/model/model.safetensors`, {
        headers: { range: "bytes=2-4" },
      });
      assertStrictEquals(r.status, 206);
      assertEquals([...new Uint8Array(await r.arrayBuffer())], [2, 3, 4]);
      for (
        const p of [
          "files/model/../secret.txt",
          "files/model/%2e%2e/secret.txt",
          "static/%2e%2e/%2e%2e/deno.json",
          "tests/fixtures/kernels/%2e%2e/%2e%2e/%2e%2e/deno.json",
        ]
      ) {
        const x = await fetch(url + p);
        await x.body?.cancel();
        assertStrictEquals(x.status, 404, p);
      }
      const page = await fetch(url);
      assert((await page.text()).includes("/app.js"));
    } finally {
      await server.shutdown();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
