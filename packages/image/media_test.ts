import { join } from "node:path";
import { isImage, isVideo, mediaKind, VIDEO_EXTENSIONS } from "./media.ts";
import { scanFolder, walkFolders } from "./fs.ts";

Deno.test("one list of media extensions; scanFolder sorts what a folder holds", async (t) => {
  await t.step("kinds by extension, any case (an .mpg is a video everywhere)", () => {
    const got = ["a.PNG", "b.gif", "c.mpg", "d.MP4", "e.txt", "f"].map(mediaKind);
    if (got.join() !== "image,gif,video,video,,") throw new Error(got.join());
    if (!VIDEO_EXTENSIONS.includes("mpg") || !isVideo("x.ogv") || !isImage("x.gif")) {
      throw new Error("lists");
    }
  });
  await t.step("scanFolder / walkFolders", async () => {
    const dir = await Deno.makeTempDir({ prefix: "lvm_media_" });
    try {
      for (const n of ["f10.png", "f2.jpg", "anim.gif", "clip.mpg", "v.MKV", "notes.txt"]) {
        await Deno.writeFile(join(dir, n), new Uint8Array(1));
      }
      await Deno.mkdir(join(dir, "s10", "deep"), { recursive: true });
      await Deno.mkdir(join(dir, "s2"));
      await Deno.mkdir(join(dir, ".hidden"));
      const s = await scanFolder(dir);
      const names = (l: string[]) => l.map((p) => p.slice(dir.length + 1)).join();
      if (names(s.images) !== "f2.jpg,f10.png") throw new Error(names(s.images));
      if (names(s.gifs) !== "anim.gif") throw new Error(names(s.gifs));
      if (names(s.videos) !== "clip.mpg,v.MKV") throw new Error(names(s.videos));
      if (names(s.folders) !== "s2,s10") throw new Error(names(s.folders));
      const all = names((await walkFolders(dir)).slice(1));
      if (all !== "s2,s10,s10/deep") throw new Error(all);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});
