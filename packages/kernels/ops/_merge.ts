/**
 * The merge of partial attention states held by several lanes of one workgroup (attention.ts's
 * split kernels: S lanes per query or key row; decode_fused.ts's one-workgroup layer tail: S lanes
 * per head), and the online-softmax step of the key loops that make those states. Internal to
 * @lvm/kernels.
 * @module
 */

/**
 * WGSL of a split kernel's merge (S > 1, one row per S lanes, sl = li % S; decode_fused.ts's layer
 * tail: a head per S lanes): a tree through
 * workgroup memory that leaves the row's total in lane sl = 0. `groups`: the per-lane vec4
 * accumulators, merged one group at a time through one buffer of WG/2 rows of U vec4s (dK and dV
 * in turn); `softmax`: the forward's online-softmax states (m0, l0) rescale what they merge.
 */
export function splitMerge(
  WG: number,
  S: number,
  U: number,
  groups: string[][],
  softmax: boolean,
): { decl: string; body: string } {
  const decl = `var<workgroup> mv: array<vec4f, ${(WG / 2) * U}>;` +
    (softmax ? `\nvar<workgroup> ms: array<vec2f, ${WG / 2}>;` : "");
  const L: string[] = [];
  for (const names of groups) {
    for (let step = S / 2; step >= 1; step /= 2) {
      L.push(`{ // ${2 * step} -> ${step} lanes per row`);
      L.push(`    if (sl >= ${step}u && sl < ${2 * step}u) {`);
      L.push(`      let k = (li / ${S}u) * ${step}u + sl - ${step}u;`);
      if (softmax) L.push(`      ms[k] = vec2f(m0, l0);`);
      names.forEach((n, d) => L.push(`      mv[k * ${U}u + ${d}u] = ${n};`));
      L.push(`    }`);
      L.push(`    workgroupBarrier();`);
      L.push(`    if (sl < ${step}u) {`);
      L.push(`      let k = (li / ${S}u) * ${step}u + sl;`);
      if (softmax) {
        L.push(`      let o = ms[k];`);
        L.push(`      let M = max(m0, o.x);`);
        L.push(`      let c1 = exp2(m0 - M);`);
        L.push(`      let c2 = exp2(o.x - M);`);
        L.push(`      l0 = l0 * c1 + o.y * c2;`);
        L.push(`      m0 = M;`);
        names.forEach((n, d) => L.push(`      ${n} = ${n} * c1 + mv[k * ${U}u + ${d}u] * c2;`));
      } else {
        names.forEach((n, d) => L.push(`      ${n} += mv[k * ${U}u + ${d}u];`));
      }
      L.push(`    }`);
      L.push(`    workgroupBarrier();`);
      L.push(`  }`);
    }
  }
  return { decl, body: L.join("\n  ") };
}

/**
 * WGSL of one key's step of an online softmax (the attention kernels' key loops): with the key's
 * score `sc` in scope, rescales the running max `m`, sum `l` and the U vec4 accumulators
 * `acc(d)` when the max grows (m starts below any score), then adds exp2(sc - m) times the key's
 * value `val(d)`.
 */
export function onlineStep(
  U: number,
  m: string,
  l: string,
  acc: (d: number) => string,
  val: (d: number) => string,
): string {
  const us = (f: (d: number) => string, sep: string) => [...Array(U).keys()].map(f).join(sep);
  return `if (sc > ${m}) {
      let c = exp2(${m} - sc);
      ${m} = sc;
      ${l} *= c;
      ${us((d) => `${acc(d)} *= c;`, " ")}
    }
    let e = exp2(sc - ${m});
    ${l} += e;
    ${us((d) => `${acc(d)} = fma(vec4f(e), ${val(d)}, ${acc(d)});`, "\n    ")}`;
}
