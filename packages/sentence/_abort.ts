/**
 * Interruption: every long loop of a build (scanning, counting frames, hashing inputs, verifying,
 * encoding, writing shards) calls {@link throwIfAborted} so Ctrl-C (an aborted signal) stops it
 * within one step. The error is a DOMException named "AbortError" saying which phase stopped.
 * @module
 */

/** The error of an interrupted phase ("AbortError", as fetch and streams use). */
export function interrupted(phase: string): DOMException {
  return new DOMException(`interrupted while ${phase}`, "AbortError");
}

/** True for the error of an aborted operation (ours, a signal's reason, or fetch's). */
export function isAbortError(e: unknown): e is DOMException {
  return e instanceof DOMException && e.name === "AbortError";
}

/** Throws {@link interrupted}(phase) when `signal` is aborted. */
export function throwIfAborted(signal: AbortSignal | undefined, phase: string): void {
  if (signal?.aborted) throw interrupted(phase);
}
