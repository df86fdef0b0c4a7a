import type { Driver, ExecRequest, ExecResult, Sandbox } from "./driver.js";

export interface CollectedResult extends ExecResult {
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/**
 * Runs a command to its end and collects its output (the last `maxOutputBytes` of each
 * stream), killing the whole tree after `timeoutMs` or when `signal` aborts.
 */
export async function execCollect(
  driver: Driver,
  sandbox: Sandbox,
  req: Omit<ExecRequest, "onStdout" | "onStderr">,
  opts: {
    timeoutMs?: number;
    maxOutputBytes?: number;
    signal?: AbortSignal;
    onLine?: (line: string, source: "stdout" | "stderr") => void;
  } = {},
): Promise<CollectedResult> {
  const max = opts.maxOutputBytes ?? 64 * 1024;
  const out = { stdout: [] as Buffer[], stderr: [] as Buffer[], size: { stdout: 0, stderr: 0 } };
  const keep = (which: "stdout" | "stderr") => (chunk: Uint8Array) => {
    const buf = Buffer.from(chunk);
    out[which].push(buf);
    out.size[which] += buf.length;
    while (out.size[which] - (out[which][0]?.length ?? 0) >= max && out[which].length > 1) {
      out.size[which] -= out[which].shift()!.length;
    }
  };
  const handle = await driver.exec(sandbox, { ...req, onStdout: keep("stdout"), onStderr: keep("stderr") });
  let timedOut = false;
  const timer =
    opts.timeoutMs !== undefined
      ? setTimeout(() => {
          timedOut = true;
          void handle.kill();
        }, opts.timeoutMs)
      : undefined;
  const onAbort = () => void handle.kill();
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    const result = await handle.result;
    const text = (bufs: Buffer[]) => {
      const s = Buffer.concat(bufs).toString("utf8");
      return s.length > max ? s.slice(s.length - max) : s;
    };
    return { ...result, stdout: text(out.stdout), stderr: text(out.stderr), timedOut };
  } finally {
    if (timer) clearTimeout(timer);
    opts.signal?.removeEventListener("abort", onAbort);
  }
}

/** Writes a file inside the sandbox (no shell sees the path or the content). */
export async function writeSandboxFile(
  driver: Driver,
  sandbox: Sandbox,
  path: string,
  content: string,
  env: Record<string, string> = { PATH: "/usr/local/bin:/usr/bin:/bin" },
): Promise<void> {
  const r = await execCollect(driver, sandbox, {
    argv: ["sh", "-c", 'umask 077 && cat > "$1"', "sh", path],
    cwd: "/",
    env,
    stdin: content,
  });
  if (r.exitCode !== 0) throw new Error(`could not write ${path}: ${r.stderr.trim()}`);
}

/** Reads a file inside the sandbox; undefined when it does not exist. */
export async function readSandboxFile(
  driver: Driver,
  sandbox: Sandbox,
  path: string,
  env: Record<string, string> = { PATH: "/usr/local/bin:/usr/bin:/bin" },
): Promise<string | undefined> {
  if (!(await driver.exists(sandbox, path))) return undefined;
  const r = await execCollect(
    driver,
    sandbox,
    { argv: ["cat", "--", path], cwd: "/", env },
    { maxOutputBytes: 1024 * 1024 },
  );
  return r.exitCode === 0 ? r.stdout : undefined;
}
