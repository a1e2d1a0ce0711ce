import {
  assembleSentence,
  makeLayout,
  sentenceLength,
  splitSentence,
  tokenDtype,
} from "./layout.ts";

function throwsLike(f: () => unknown, re: RegExp) {
  try {
    f();
  } catch (e) {
    if (!re.test((e as Error).message)) throw new Error(`wrong message: ${(e as Error).message}`);
    return;
  }
  throw new Error(`expected an error matching ${re}`);
}

Deno.test("makeLayout()", async (t) => {
  await t.step("defaults are the released LVM's", () => {
    const l = makeLayout();
    const want = {
      tokensPerImage: 256,
      codebookSize: 8192,
      vocabSize: 8292,
      imagesPerSentence: 16,
    };
    for (const [k, v] of Object.entries(want)) {
      if ((l as any)[k] !== v) throw new Error(`${k} ${(l as any)[k]} != ${v}`);
    }
    if (l.separatorId !== null || l.beginId !== null || l.endId !== null) {
      throw new Error("specials");
    }
    if (tokenDtype(l) !== "u16") throw new Error("dtype");
    if (tokenDtype(makeLayout({ codebookSize: 70000 })) !== "i32") throw new Error("i32");
  });
  await t.step("special ids must be reserved, distinct ids", () => {
    throwsLike(
      () => makeLayout({ separatorId: 8191 }),
      /separatorId.*reserved id in \[8192, 8292\).*8191/,
    );
    throwsLike(() => makeLayout({ endId: 8292 }), /endId/);
    throwsLike(() => makeLayout({ beginId: 8200, endId: 8200 }), /used twice/);
    throwsLike(() => makeLayout({ tokensPerImage: 0 }), /tokensPerImage/);
  });
});

Deno.test("assembleSentence() / splitSentence()", async (t) => {
  const blocks = [[1, 2, 3], [4, 5, 6], [7, 8, 9]];
  await t.step("no special tokens: blocks end to end", () => {
    const l = makeLayout({ tokensPerImage: 3, imagesPerSentence: 3 });
    const s = assembleSentence(l, blocks);
    if (s.join() !== "1,2,3,4,5,6,7,8,9") throw new Error(s.join());
    if (splitSentence(l, s).map((b) => b.join("")).join() !== "123,456,789") {
      throw new Error("split");
    }
  });
  await t.step("begin, separator, end", () => {
    const l = makeLayout({
      tokensPerImage: 3,
      imagesPerSentence: 3,
      beginId: 8192,
      separatorId: 8193,
      endId: 8194,
    });
    if (sentenceLength(l) !== 1 + 9 + 2 + 1) throw new Error("length");
    const s = assembleSentence(l, blocks);
    if (s.join() !== "8192,1,2,3,8193,4,5,6,8193,7,8,9,8194") throw new Error(s.join());
    if (splitSentence(l, s).map((b) => b.join("")).join() !== "123,456,789") {
      throw new Error("split");
    }
    s[4] = 5;
    throwsLike(() => splitSentence(l, s), /token 4 is 5, expected the separator 8193/);
  });
  await t.step("bad blocks are errors", () => {
    const l = makeLayout({ tokensPerImage: 3, imagesPerSentence: 2 });
    throwsLike(() => assembleSentence(l, [[1, 2, 3], [1, 2]]), /image 1 has 2 codes, expected 3/);
    throwsLike(() => assembleSentence(l, [[1, 2, 3], [1, 2, 8192]]), /image 1 code 2 is 8192/);
  });
});
