/**
 * Stopping a run cleanly: SIGINT (Ctrl-C) and SIGTERM (what `kill`, systemd, Docker and job
 * schedulers send) both ask the trainer to finish its step, save a checkpoint and exit; a second
 * signal exits at once without saving.
 * @module
 */

/** A stop request from a signal; {@link dispose} removes the listeners. */
export interface StopSignal {
  /** Aborted at the first signal. */
  readonly signal: AbortSignal;
  /** The signal received ("SIGINT" / "SIGTERM"), or null. */
  readonly received: Deno.Signal | null;
  /** The conventional exit code after that signal: 130 (SIGINT), 143 (SIGTERM), 0 if none. */
  exitCode(): number;
  dispose(): void;
}

const CODES: Partial<Record<Deno.Signal, number>> = { SIGINT: 130, SIGTERM: 143 };

/**
 * Listens for SIGINT and SIGTERM. At the first, `say` is told and `signal` aborts; at the second,
 * `onForce` runs (e.g. releasing a lock) and the process exits with the signal's code.
 */
export function stopOnSignals(
  say: (msg: string) => void,
  onForce: () => void = () => {},
): StopSignal {
  const ac = new AbortController();
  let received: Deno.Signal | null = null;
  const listeners: [Deno.Signal, () => void][] = [];
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    const fn = () => {
      if (received) {
        say(`second signal (${sig}): exiting without saving`);
        onForce();
        Deno.exit(CODES[sig] ?? 1);
      }
      received = sig;
      say(
        `${
          sig === "SIGINT" ? "interrupt" : "terminate signal"
        }: finishing this step and saving a ` +
          `checkpoint (${sig === "SIGINT" ? "Ctrl-C" : "signal"} again to quit now)`,
      );
      ac.abort();
    };
    try {
      Deno.addSignalListener(sig, fn);
      listeners.push([sig, fn]);
    } catch {
      // SIGTERM cannot be listened for on Windows: Ctrl-C still works.
    }
  }
  return {
    signal: ac.signal,
    get received() {
      return received;
    },
    exitCode: () => (received ? CODES[received] ?? 1 : 0),
    dispose() {
      for (const [sig, fn] of listeners) Deno.removeSignalListener(sig, fn);
    },
  };
}
