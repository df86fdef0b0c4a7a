import { type ChildProcess, fork } from "node:child_process";
import { fileURLToPath } from "node:url";

/** Messages the benchmark sends to its child processes. */
export type ParentMessage =
  | { type: "mem" }
  | { type: "exit" }
  | { type: "close" }
  | {
      type: "open";
      subjects: string[];
      stream: string;
      /** Give the filter as one subject (`filter_subject`) instead of a list of one (`filter_subjects`). */
      single?: boolean;
    };

export interface MemoryUsage {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
}

/** process.memoryUsage() after two full collections (needs --expose-gc). */
export function memoryAfterGc(): MemoryUsage {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  gc?.();
  const { rss, heapUsed, heapTotal, external, arrayBuffers } = process.memoryUsage();
  return { rss, heapUsed, heapTotal, external, arrayBuffers };
}

/** A child process of the benchmark: TypeScript through tsx, GC exposed, an IPC channel. */
export class Child {
  readonly proc: ChildProcess;
  readonly #exited: Promise<void>;

  constructor(script: string, env: Record<string, string>) {
    this.proc = fork(fileURLToPath(new URL(script, import.meta.url)), [], {
      execArgv: [
        "--expose-gc",
        "--import",
        "tsx",
        // BENCH_CPU_PROF=<dir>: a V8 CPU profile of each child, to see where its time goes.
        ...(process.env.BENCH_CPU_PROF ? ["--cpu-prof", "--cpu-prof-dir", process.env.BENCH_CPU_PROF] : []),
      ],
      env: { ...process.env, ...env },
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    this.#exited = new Promise((resolve) => this.proc.once("exit", () => resolve()));
    const killOnExit = () => this.proc.kill("SIGKILL");
    process.once("exit", killOnExit);
    this.proc.once("exit", () => process.off("exit", killOnExit));
  }

  /** The next message of `type` from the child (after sending `msg`, when given). */
  request<T extends { type: string }>(type: T["type"], msg?: ParentMessage, timeoutMs = 120_000): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`child did not answer "${type}" within ${timeoutMs} ms`));
      }, timeoutMs);
      const onMessage = (m: { type?: string }) => {
        if (m?.type !== type) return;
        cleanup();
        resolve(m as T);
      };
      const onExit = (code: number | null) => {
        cleanup();
        reject(new Error(`child exited (${code}) before answering "${type}"`));
      };
      const cleanup = () => {
        clearTimeout(timer);
        this.proc.off("message", onMessage);
        this.proc.off("exit", onExit);
      };
      this.proc.on("message", onMessage);
      this.proc.once("exit", onExit);
      if (msg) this.proc.send(msg);
    });
  }

  memory(): Promise<MemoryUsage> {
    return this.request<{ type: "mem"; usage: MemoryUsage }>("mem", { type: "mem" }).then((m) => m.usage);
  }

  /** Asks the child to exit; kills it if it has not after 5 s. */
  async stop(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    if (this.proc.connected) this.proc.send({ type: "exit" } satisfies ParentMessage);
    const timer = setTimeout(() => this.proc.kill("SIGKILL"), 5_000);
    await this.#exited;
    clearTimeout(timer);
  }
}
