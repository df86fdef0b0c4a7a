import { spawn } from "node:child_process";
import { lstat, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type Driver,
  type ExecHandle,
  type ExecRequest,
  type ExecResult,
  isManagedPath,
  type Sandbox,
  type SandboxKey,
  sandboxId,
} from "../../src/drivers/driver.js";

export interface HostExec {
  argv: string[];
  cwd: string;
  env: Record<string, string>;
}

/**
 * TEST ONLY, NO ISOLATION: a Driver that runs commands directly on this machine as the
 * test's user. Sandbox paths below `/workspace` and `/home` are mapped into a temporary
 * directory wherever they appear whole (cwd, argv elements, env values); other paths
 * (`/dev/null`) are left alone. Every exec is recorded so tests can inspect argv and env.
 */
export class HostTestDriver implements Driver {
  readonly name = "host-test";
  readonly execs: HostExec[] = [];

  private constructor(readonly root: string) {}

  static async create(): Promise<HostTestDriver> {
    return new HostTestDriver(await mkdtemp(join(tmpdir(), "kc-host-driver-")));
  }

  /** Where a sandbox path lives on the host. */
  hostPath(path: string): string {
    return /^\/(workspace|home)(\/|$)/.test(path) ? join(this.root, path) : path;
  }

  async ensureSandbox(key: SandboxKey): Promise<Sandbox> {
    return { id: sandboxId(key), key };
  }

  async exec(_sandbox: Sandbox, req: ExecRequest): Promise<ExecHandle> {
    const map = (v: string) => this.hostPath(v);
    const argv = req.argv.map(map);
    const env = Object.fromEntries(Object.entries(req.env).map(([k, v]) => [k, map(v)]));
    this.execs.push({ argv: [...req.argv], cwd: req.cwd, env: { ...req.env } });
    const child = spawn(argv[0]!, argv.slice(1), {
      cwd: map(req.cwd),
      env,
      detached: true,
      stdio: ["pipe", "pipe", "pipe"],
    });
    let killed = false;
    const result = new Promise<ExecResult>((resolve) => {
      child.on("error", (err) => {
        req.onStderr?.(Buffer.from(`${err.message}\n`));
        resolve({ exitCode: 127, signal: null, killed });
      });
      child.on("close", (code, signal) => resolve({ exitCode: code, signal, killed }));
    });
    child.stdout.on("data", (b: Buffer) => req.onStdout?.(b));
    child.stderr.on("data", (b: Buffer) => req.onStderr?.(b));
    child.stdin.on("error", () => {});
    child.stdin.end(req.stdin ?? "");
    const id = `proc_${child.pid ?? "unstarted"}`;
    return {
      id,
      result,
      kill: async () => {
        if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) {
          return { killed: [], failed: [] };
        }
        killed = true;
        try {
          process.kill(-child.pid, "SIGKILL");
          return { killed: [id], failed: [] };
        } catch {
          return { killed: [], failed: [id] };
        }
      },
    };
  }

  async exists(_sandbox: Sandbox, path: string): Promise<boolean> {
    try {
      await lstat(this.hostPath(path));
      return true;
    } catch {
      return false;
    }
  }

  async mkdir(_sandbox: Sandbox, path: string): Promise<void> {
    if (!isManagedPath(path)) throw new Error(`refusing to create ${path}`);
    await mkdir(this.hostPath(path), { recursive: true });
  }

  async remove(_sandbox: Sandbox, path: string): Promise<void> {
    if (!isManagedPath(path)) throw new Error(`refusing to remove ${path}`);
    await rm(this.hostPath(path), { recursive: true, force: true });
  }

  async close(): Promise<void> {
    await rm(this.root, { recursive: true, force: true });
  }
}
