import { chmod, mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";

/**
 * A stand-in for the kilo binary that REPLAYS captured real kilo output (for volume tests
 * where a real run, 15–30 s and ~800 MB each, is too costly). It reads the prompt from
 * stdin like kilo, prints the captured JSON lines with the session id rewritten (keeping a
 * `--session` id when given), optionally pauses between lines, and exits 0. It is named
 * for what it is: nothing here pretends to be a model or an agent.
 */
export async function writeKiloReplayer(
  dir: string,
  capturedJsonl: string,
  opts: { lineDelayMs?: number } = {},
): Promise<string> {
  await mkdir(dir, { recursive: true });
  const path = join(dir, "kilo-replayer");
  const lines = capturedJsonl.split("\n").filter((l) => l.trim() !== "");
  const script = `#!/usr/bin/env node
// kilo-replayer: prints captured real kilo output; see packages/testing/src/kilo-replayer.ts
const lines = ${JSON.stringify(lines)};
const delay = ${Number(opts.lineDelayMs ?? 0)};
const args = process.argv.slice(2);
const i = args.indexOf("--session");
const session = i >= 0 ? args[i + 1] : "ses_replay" + Math.random().toString(36).slice(2, 14);
let prompt = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (d) => { prompt += d; });
process.stdin.on("end", async () => {
  for (const line of lines) {
    const event = JSON.parse(line);
    event.sessionID = session;
    event.timestamp = Date.now();
    if (event.part && event.part.sessionID) event.part.sessionID = session;
    process.stdout.write(JSON.stringify(event) + "\\n");
    if (delay > 0) await new Promise((r) => setTimeout(r, delay));
  }
  process.exit(0);
});
`;
  await writeFile(path, script);
  await chmod(path, 0o755);
  return path;
}

/** Captured real kilo 7.7.7 output (see fixtures/kilo-streams), as a file URL of the folder. */
export const CAPTURED_KILO_STREAMS_DIR = new URL("../fixtures/kilo-streams/", import.meta.url).href;

/** One captured stream, e.g. `capturedKiloStream("stream-write-tool.jsonl")`. */
export async function capturedKiloStream(name: string): Promise<string> {
  const { readFile } = await import("node:fs/promises");
  return readFile(new URL(name, CAPTURED_KILO_STREAMS_DIR), "utf8");
}
