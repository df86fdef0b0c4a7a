import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, natsServerBinary } from "@kilo-cloud/testing";

export interface BenchNats {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

/**
 * A JetStream nats-server on a free loopback port with its own store, like
 * @kilo-cloud/testing's startNats, but exposing its pid so its memory can be read.
 */
export async function startBenchNats(): Promise<BenchNats> {
  const port = await freePort();
  const storeDir = await mkdtemp(join(tmpdir(), "kc-bench-nats-"));
  const proc = spawn(natsServerBinary(), ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", storeDir], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
  // Never outlives the benchmark, even when it is stopped the hard way.
  const killOnExit = () => proc.kill("SIGKILL");
  process.once("exit", killOnExit);
  let log = "";
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`nats-server did not start:\n${log}`)), 15_000);
    proc.stderr.on("data", (d: Buffer) => {
      log = (log + d.toString()).slice(-4_000);
      if (log.includes("Server is ready")) {
        clearTimeout(timer);
        resolve();
      }
    });
    proc.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`nats-server exited with ${code}:\n${log}`));
    });
  });
  return {
    url: `nats://127.0.0.1:${port}`,
    pid: proc.pid ?? 0,
    async stop() {
      process.off("exit", killOnExit);
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill("SIGTERM");
        const timer = setTimeout(() => proc.kill("SIGKILL"), 5_000);
        await exited;
        clearTimeout(timer);
      }
      await rm(storeDir, { recursive: true, force: true });
    },
  };
}
