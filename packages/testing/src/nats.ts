import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";

/** The nats-server built by scripts/ensure-services.ts (or NATS_SERVER_BIN). */
export function natsServerBinary(): string {
  if (process.env.NATS_SERVER_BIN) return process.env.NATS_SERVER_BIN;
  const bin = join(
    process.env.XDG_CACHE_HOME ?? join(homedir(), ".cache"),
    "kilo-cloud",
    "bin",
    "nats-server",
  );
  if (spawnSync(bin, ["--version"], { stdio: "ignore" }).status !== 0) {
    throw new Error(`nats-server not found at ${bin}: run "node --import tsx scripts/ensure-services.ts"`);
  }
  return bin;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface TestNats extends AsyncDisposable {
  url: string;
  port: number;
  storeDir: string;
  /** Kills the server (SIGKILL: no clean shutdown), keeping its store. */
  kill(): Promise<void>;
  /** Starts it again on the same port with the same store. */
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** A JetStream-enabled nats-server of the test's own, on a free loopback port. */
export async function startNats(): Promise<TestNats> {
  const bin = natsServerBinary();
  const port = await freePort();
  const storeDir = await mkdtemp(join(tmpdir(), "kc-nats-"));
  let proc: ChildProcess | undefined;

  const start = async () => {
    const p = spawn(bin, ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", storeDir], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    proc = p;
    let log = "";
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`nats-server did not start:\n${log}`)), 15_000);
      p.stderr?.on("data", (d: Buffer) => {
        log += d.toString();
        if (log.includes("Server is ready")) {
          clearTimeout(timer);
          resolve();
        }
      });
      p.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`nats-server exited with ${code}:\n${log}`));
      });
    });
    p.stderr?.resume();
  };

  const kill = async (signal: NodeJS.Signals = "SIGKILL") => {
    const p = proc;
    proc = undefined;
    if (!p || p.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      p.once("exit", () => resolve());
      p.kill(signal);
    });
  };

  await start();
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    storeDir,
    kill: () => kill("SIGKILL"),
    start,
    stop: () => kill("SIGTERM"),
    async [Symbol.asyncDispose]() {
      await kill("SIGTERM");
      await rm(storeDir, { recursive: true, force: true });
    },
  };
}
