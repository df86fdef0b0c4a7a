import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { REPO } from "../../deploy/test/helm.js";
import type { ServiceEnv, ServiceName } from "./chart-env.js";

/**
 * One service as its container runs it: `node --import tsx services/<name>/src/main.ts`
 * with exactly the given environment (plus PATH and HOME), on its fixed loopback port, so
 * that it can be stopped, killed and started again at the same address.
 */
export interface ServiceProcess {
  name: ServiceName;
  url: string;
  /** The environment it starts with (change it before start() to restart differently). */
  env: ServiceEnv;
  /** Every line it wrote (stdout and stderr), across restarts. */
  logs: string[];
  readonly running: boolean;
  /** Starts it and waits until /readyz answers 200. */
  start(opts?: { readyTimeoutMs?: number }): Promise<void>;
  /** Sends SIGTERM (or `signal`) and waits for the exit (SIGKILL after 15 s); resolves to the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** SIGKILL, no graceful shutdown (a crash or an OOM kill). */
  kill(): Promise<void>;
  restart(): Promise<void>;
  /** Polls /readyz until it answers 200. */
  waitReady(timeoutMs?: number): Promise<void>;
}

export function serviceProcess(name: ServiceName, port: number, env: ServiceEnv): ServiceProcess {
  let child: ChildProcess | undefined;
  let exited: Promise<number | null> = Promise.resolve(null);
  const logs: string[] = [];
  const url = `http://127.0.0.1:${port}`;

  const waitReady = async (timeoutMs = 90_000) => {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (!child || child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`${name} exited before it was ready:\n${logs.slice(-30).join("")}`);
      }
      const ok = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(2_000) })
        .then((r) => r.ok)
        .catch(() => false);
      if (ok) return;
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new Error(`${name} not ready within ${timeoutMs} ms:\n${logs.slice(-30).join("")}`);
  };

  const proc: ServiceProcess = {
    name,
    url,
    env,
    logs,
    get running() {
      return child !== undefined && child.exitCode === null && child.signalCode === null;
    },
    async start(opts = {}) {
      if (proc.running) throw new Error(`${name} is already running`);
      const c = spawn(process.execPath, ["--import", "tsx", `services/${name}/src/main.ts`], {
        cwd: REPO,
        env: { PATH: process.env.PATH, HOME: process.env.HOME, ...proc.env },
        stdio: ["ignore", "pipe", "pipe"],
      });
      child = c;
      c.stdout?.on("data", (d: Buffer) => logs.push(d.toString()));
      c.stderr?.on("data", (d: Buffer) => logs.push(d.toString()));
      exited = once(c, "exit").then(([code]) => code as number | null);
      await waitReady(opts.readyTimeoutMs);
    },
    async stop(signal = "SIGTERM") {
      if (!proc.running) return exited;
      const c = child;
      c?.kill(signal);
      // A graceful shutdown that hangs is a failure to report, not to wait for forever.
      const timer = setTimeout(() => {
        logs.push(`[harness] ${name} did not exit within 15 s of ${signal}: SIGKILL\n`);
        c?.kill("SIGKILL");
      }, 15_000);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
    async kill() {
      await proc.stop("SIGKILL");
    },
    async restart() {
      await proc.stop();
      await proc.start();
    },
    waitReady,
  };
  return proc;
}
