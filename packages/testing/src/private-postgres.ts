import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { freePort } from "./nats.js";

/**
 * A PostgreSQL server of the test's own (initdb in a temporary directory, a free loopback
 * port), for tests that stop, kill or restart the database: the shared server on 5432 is
 * never touched. Runs as the `postgres` system user when the tests run as root (initdb
 * refuses root).
 */
export interface PrivatePostgres extends AsyncDisposable {
  /** `postgres://postgres:postgres@127.0.0.1:<port>/postgres` */
  url: string;
  port: number;
  /** Stops the server: `fast` ends sessions cleanly, `immediate` is a crash. */
  stop(mode?: "fast" | "immediate"): Promise<void>;
  /** Starts it again on the same port with the same data. */
  start(): Promise<void>;
  /** Stops (immediate) and starts again. */
  restart(): Promise<void>;
  dispose(): Promise<void>;
}

function binDir(): string {
  const root = "/usr/lib/postgresql";
  const version = existsSync(root)
    ? readdirSync(root).find((v) => existsSync(join(root, v, "bin", "postgres")))
    : undefined;
  if (!version) throw new Error("PostgreSQL server binaries not found: run scripts/ensure-services.ts");
  return join(root, version, "bin");
}

/** argv prefix that runs a command as the postgres user when we are root. */
function asPostgres(cmd: string): [string, string[]] {
  return userInfo().uid === 0 ? ["runuser", ["-u", "postgres", "--", cmd]] : [cmd, []];
}

function run(cmd: string, args: string[]): void {
  const [file, pre] = asPostgres(cmd);
  execFileSync(file, [...pre, ...args], { stdio: ["ignore", "ignore", "pipe"] });
}

async function waitReady(url: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1_000 });
    c.on("error", () => {});
    try {
      await c.connect();
      await c.query("SELECT 1");
      await c.end();
      return;
    } catch (err) {
      await c.end().catch(() => {});
      if (Date.now() > deadline) throw new Error(`private PostgreSQL did not become ready: ${err}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

export async function startPrivatePostgres(): Promise<PrivatePostgres> {
  const bin = binDir();
  const dir = mkdtempSync(join(tmpdir(), "kc-pg-"));
  const data = join(dir, "data");
  if (userInfo().uid === 0) {
    const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim());
    const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim());
    chownSync(dir, uid, gid);
  }
  const pwfile = join(dir, "pw");
  execFileSync("sh", ["-c", `printf postgres > ${pwfile} && chmod 644 ${pwfile}`]);
  run(join(bin, "initdb"), ["-D", data, "-U", "postgres", "-A", "scram-sha-256", `--pwfile=${pwfile}`]);
  const port = await freePort();
  const url = `postgres://postgres:postgres@127.0.0.1:${port}/postgres`;
  let proc: ChildProcess | undefined;

  const start = async () => {
    const [file, pre] = asPostgres(join(bin, "postgres"));
    const args = ["-D", data, "-p", String(port), "-k", dir, "-c", "listen_addresses=127.0.0.1"];
    const p = spawn(file, [...pre, ...args], { stdio: "ignore" });
    proc = p;
    await waitReady(url);
  };
  const stop = async (mode: "fast" | "immediate" = "immediate") => {
    const p = proc;
    if (!p || p.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => p.once("exit", () => resolve()));
    run(join(bin, "pg_ctl"), ["-D", data, "-m", mode, "-w", "stop"]);
    await exited;
    proc = undefined;
  };
  const dispose = async () => {
    await stop("immediate").catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  };
  await start();
  return {
    url,
    port,
    stop,
    start,
    restart: async () => {
      await stop("immediate");
      await start();
    },
    dispose,
    [Symbol.asyncDispose]: dispose,
  };
}
