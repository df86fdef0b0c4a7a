import { readdir, readFile } from "node:fs/promises";

/**
 * Host pids of live (non-zombie) processes whose argv starts with `args`, e.g.
 * ["sleep", "987654"] (bwrap's own argv, which ends with the command, does not match).
 * Reads the host's /proc: it sees sandboxed processes too, whatever namespace they are in.
 */
export async function findHostProcesses(args: string[]): Promise<number[]> {
  const needle = `${args.join("\0")}\0`;
  const pids = (await readdir("/proc")).filter((n) => /^\d+$/.test(n));
  const found: number[] = [];
  await Promise.all(
    pids.map(async (pid) => {
      try {
        const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8");
        const stat = await readFile(`/proc/${pid}/stat`, "utf8");
        const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
        if (state !== "Z" && cmdline.startsWith(needle)) found.push(Number(pid));
      } catch {
        // gone meanwhile
      }
    }),
  );
  return found;
}

/** Polls `check` until it returns true or `timeoutMs` passes; returns the last answer. */
export async function eventually(check: () => Promise<boolean>, timeoutMs = 5_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** A number for `sleep` that no other process on the machine is plausibly using. */
export function uniqueSleepSeconds(): string {
  return String(900_000 + Math.floor(Math.random() * 99_999));
}
