/** String order shared by the safetensors writers (private to @lvm/weights). @module */

/**
 * Orders strings by Unicode code point (= UTF-8 byte order, as Rust and Python sort), which differs
 * from JS's UTF-16 code-unit order only when a surrogate pair meets U+E000..U+FFFF.
 */
export function compareCodePoints(a: string, b: string): number {
  if (/[\uD800-\uDFFF]/.test(a + b)) {
    const x = Array.from(a, (c) => c.codePointAt(0)!), y = Array.from(b, (c) => c.codePointAt(0)!);
    for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
    return x.length - y.length;
  }
  return a < b ? -1 : a > b ? 1 : 0;
}
