/**
 * The server's JSON API as both sides see it (types only: the page imports them with
 * `import type`, so nothing of the server reaches the bundle).
 * @module
 */

/** A file the page may fetch: its name, URL and size in bytes. */
export interface ServedFile {
  name: string;
  url: string;
  size: number;
}

/** `/api/config`: what the server serves and the page loads. */
export interface WebConfig {
  model: { name: string; files: ServedFile[] } | null;
  tokenizer: { name: string; files: ServedFile[] } | null;
  examples: { name: string; images: string[] }[];
}
