import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdir, readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { baseSessionEnvironment, type Driver, type Sandbox } from "@kilo-cloud/sandbox-manager";
import { basicAuthHeader, freePort } from "@kilo-cloud/testing";
import { type KiloProvider, kiloInvocation } from "../../services/sandbox-manager/src/kilo/command.js";

/**
 * The raw baseline of run-overhead: the same kilo binary, with the same command line and
 * environment the sandbox-manager's runner builds (`kiloInvocation` + the runner's session
 * environment), run directly on the host or inside the same bubblewrap sandbox the local
 * driver builds, in a workspace cloned beforehand.
 */

const execFileAsync = promisify(execFile);
const PATH = "/usr/local/bin:/usr/bin:/bin";

/** Host processes started here (each the leader of its own process group), until they exit. */
const started = new Set<ChildProcess>();

function track(child: ChildProcess): void {
  started.add(child);
  child.once("exit", () => started.delete(child));
}

/** Kills the process groups of the host processes started here that are still running. */
export function killStartedProcesses(): void {
  for (const child of started) killGroup(child);
}
process.once("exit", killStartedProcesses);

/** The runner's own base environment of a session (the same function, not a copy). */
export function sessionEnvironment(
  sessionId: string,
  home: string,
  workspace: string,
): Record<string, string> {
  return baseSessionEnvironment(sessionId, home, workspace);
}

/** The directories the runner creates in a session's HOME before the first run. */
export async function makeHome(hostHome: string): Promise<void> {
  for (const dir of [".config", ".local/share", ".cache", ".local/state", "tmp", ".kilo-cloud"]) {
    await mkdir(join(hostHome, dir), { recursive: true });
  }
}

/** Clones the repository into `hostPath` (not timed: the raw baseline runs in a prepared workspace). */
export async function cloneWorkspace(
  url: string,
  auth: { username: string; password: string },
  hostPath: string,
  branch: string,
): Promise<void> {
  const env = { PATH: process.env.PATH ?? PATH, HOME: hostPath, GIT_TERMINAL_PROMPT: "0" };
  await execFileAsync(
    "git",
    [
      "-c",
      `http.extraHeader=${basicAuthHeader(auth.username, auth.password)}`,
      "clone",
      "--quiet",
      url,
      hostPath,
    ],
    { env },
  );
  await execFileAsync("git", ["-C", hostPath, "checkout", "--quiet", "-b", branch], { env });
}

export interface KiloRunSpec {
  provider: KiloProvider;
  model: string;
  mode: string;
  /** Continue this kilo session (`--session`). */
  kiloSessionId?: string | undefined;
  /** Paths as the kilo process sees them (host paths, or sandbox paths inside bwrap). */
  home: string;
  workspace: string;
  sessionId: string;
  prompt: string;
  /** Extra arguments after the runner's (e.g. `--attach <url> --dir <ws>`). */
  extraArgs?: string[];
}

export interface KiloRunResult {
  wallMs: number;
  /** From spawn to the first JSON line on stdout. */
  firstLineMs: number;
  exitCode: number | null;
  kiloSessionId: string | undefined;
  lines: number;
  stderrTail: string;
}

/** argv (without the program) and environment of one run, exactly as the runner builds them. */
export function kiloCommand(spec: KiloRunSpec): { args: string[]; env: Record<string, string> } {
  const env = sessionEnvironment(spec.sessionId, spec.home, spec.workspace);
  const inv = kiloInvocation({
    provider: spec.provider,
    model: spec.model,
    mode: spec.mode,
    kiloSessionId: spec.kiloSessionId,
    mcpServers: {},
    sessionEnv: env,
  });
  return { args: [...inv.argv.slice(1), ...(spec.extraArgs ?? [])], env: { ...env, ...inv.env } };
}

class OutputWatch {
  firstLineAt = Number.NaN;
  kiloSessionId: string | undefined;
  lines = 0;
  stderr = "";
  #buf = "";
  constructor(private readonly t0: number) {}
  stdout(chunk: Uint8Array): void {
    this.#buf += Buffer.from(chunk).toString("utf8");
    let nl = this.#buf.indexOf("\n");
    while (nl >= 0) {
      const line = this.#buf.slice(0, nl).trim();
      this.#buf = this.#buf.slice(nl + 1);
      if (line.startsWith("{")) {
        if (this.lines++ === 0) this.firstLineAt = performance.now() - this.t0;
        try {
          const sid = (JSON.parse(line) as { sessionID?: unknown }).sessionID;
          if (typeof sid === "string") this.kiloSessionId ??= sid;
        } catch {
          // Not JSON after all: counted, not parsed.
        }
      }
      nl = this.#buf.indexOf("\n");
    }
  }
  stderrChunk(chunk: Uint8Array): void {
    this.stderr = (this.stderr + Buffer.from(chunk).toString("utf8")).slice(-2_000);
  }
  result(wallMs: number, exitCode: number | null): KiloRunResult {
    return {
      wallMs,
      firstLineMs: this.firstLineAt,
      exitCode,
      kiloSessionId: this.kiloSessionId,
      lines: this.lines,
      stderrTail: this.stderr,
    };
  }
}

/** Runs kilo as a plain host process (the manager's spawn: env replaced, own process group). */
export async function runKiloOnHost(
  binary: string,
  spec: KiloRunSpec,
  opts: { timeoutMs: number },
): Promise<KiloRunResult> {
  const { args, env } = kiloCommand(spec);
  const t0 = performance.now();
  const watch = new OutputWatch(t0);
  const child = spawn(binary, args, {
    env,
    cwd: spec.workspace,
    detached: true,
    stdio: ["pipe", "pipe", "pipe"],
  });
  track(child);
  child.stdout.on("data", (c: Buffer) => watch.stdout(c));
  child.stderr.on("data", (c: Buffer) => watch.stderrChunk(c));
  child.stdin.on("error", () => {});
  child.stdin.end(spec.prompt);
  const timer = setTimeout(() => killGroup(child), opts.timeoutMs);
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (c) => resolve(c));
  }).finally(() => clearTimeout(timer));
  return watch.result(performance.now() - t0, code);
}

/** Runs kilo through the local driver, i.e. inside the same bubblewrap sandbox as the service. */
export async function runKiloInSandbox(
  driver: Driver,
  sandbox: Sandbox,
  spec: KiloRunSpec,
  opts: { timeoutMs: number },
): Promise<KiloRunResult> {
  const { args, env } = kiloCommand(spec);
  const t0 = performance.now();
  const watch = new OutputWatch(t0);
  const handle = await driver.exec(sandbox, {
    argv: ["kilo", ...args],
    cwd: spec.workspace,
    env,
    stdin: spec.prompt,
    onStdout: (c) => watch.stdout(c),
    onStderr: (c) => watch.stderrChunk(c),
  });
  const timer = setTimeout(() => void handle.kill(), opts.timeoutMs);
  const r = await handle.result.finally(() => clearTimeout(timer));
  return watch.result(performance.now() - t0, r.exitCode);
}

export interface KiloServe {
  url: string;
  pid: number;
  /** From spawn until it answered HTTP. */
  startMs: number;
  /** Pre-warming the workspace's instance (`GET /config` and `/agent` for the directory). */
  warmMs: number;
  /** Resident memory of the server and its descendants, in bytes. */
  rssBytes(): Promise<number>;
  stop(): Promise<void>;
}

/**
 * `kilo serve` on a free loopback port with the session's environment (same HOME/XDG and
 * KILO_CONFIG_CONTENT as a run), started in the workspace.
 */
export async function startKiloServe(
  binary: string,
  spec: Omit<KiloRunSpec, "prompt" | "kiloSessionId">,
  opts: { timeoutMs: number },
): Promise<KiloServe> {
  const { env } = kiloCommand({ ...spec, prompt: "" });
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const t0 = performance.now();
  const child = spawn(binary, ["serve", "--port", String(port), "--hostname", "127.0.0.1"], {
    env,
    cwd: spec.workspace,
    detached: true,
    stdio: ["ignore", "ignore", "pipe"],
  });
  track(child);
  let stderr = "";
  child.stderr.on("data", (c: Buffer) => {
    stderr = (stderr + c.toString("utf8")).slice(-2_000);
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      killGroup(child);
      await exited;
    }
  };
  const deadline = t0 + opts.timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`kilo serve exited (${child.exitCode}): ${stderr}`);
    try {
      await fetch(url, { signal: AbortSignal.timeout(1_000) });
      break;
    } catch {
      if (performance.now() > deadline) {
        await stop();
        throw new Error(`kilo serve did not answer on ${url}: ${stderr}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  const startMs = performance.now() - t0;
  // The server loads a directory's project, config and agents on its first request for it;
  // a server kept per sandbox would do this ahead of the first message.
  const t1 = performance.now();
  for (const path of ["/config", "/agent"]) {
    const res = await fetch(`${url}${path}?directory=${encodeURIComponent(spec.workspace)}`, {
      signal: AbortSignal.timeout(opts.timeoutMs),
    });
    await res.arrayBuffer();
  }
  const warmMs = performance.now() - t1;
  const pid = child.pid ?? 0;
  return { url, pid, startMs, warmMs, rssBytes: () => treeRss(pid), stop };
}

function killGroup(child: ChildProcess): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, "SIGKILL");
  } catch {
    child.kill("SIGKILL");
  }
}

/** VmRSS of a process and all its descendants (Linux /proc). */
export async function treeRss(pid: number): Promise<number> {
  let total = 0;
  const seen = new Set<number>();
  const visit = async (p: number): Promise<void> => {
    if (seen.has(p)) return;
    seen.add(p);
    const status = await readFile(`/proc/${p}/status`, "utf8").catch(() => "");
    const m = /VmRSS:\s+(\d+) kB/.exec(status);
    if (m) total += Number(m[1]) * 1024;
    const tasks = await readdir(`/proc/${p}/task`).catch(() => [] as string[]);
    for (const t of tasks) {
      const children = await readFile(`/proc/${p}/task/${t}/children`, "utf8").catch(() => "");
      for (const c of children.split(" ").filter(Boolean)) await visit(Number(c));
    }
  };
  await visit(pid);
  return total;
}
