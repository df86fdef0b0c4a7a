import { chmodSync, mkdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { PGlite } from "@electric-sql/pglite";
import type { PGLiteSocketServer } from "@electric-sql/pglite-socket";
import type { Logger } from "../logger.js";

export interface EmbeddedPostgresOptions {
  /**
   * The data directory, created when missing and kept across restarts (a Postgres data
   * directory: PGlite is Postgres compiled to WebAssembly). "memory://" for a throwaway
   * database.
   */
  dataDir: string;
  /** Loopback address to listen on (default 127.0.0.1). */
  host?: string;
  /** TCP port (default 0: any free one; the URL tells which). */
  port?: number;
  /** Serve on the Unix socket `<socketDir>/.s.PGSQL.<port>` instead of TCP (port default 5432). */
  socketDir?: string;
  /**
   * Connections the socket server accepts at once (default 64). PGlite is one backend:
   * the server multiplexes the connections onto it, one transaction at a time.
   */
  maxConnections?: number;
  logger?: Logger;
}

export interface EmbeddedPostgres {
  /** A `postgres://` URL for `pg` (createPool). */
  url: string;
  dataDir: string;
  db: PGlite;
  /**
   * How an event log on this database learns of new events: notifications cannot reach
   * a LISTENing socket connection here (see PostgresEventLogOptions.notifications).
   */
  readonly notifications: "poll";
  /** Stops serving and closes the database cleanly (the data directory stays). */
  close(): Promise<void>;
}

const LOCK_FILE = "kilo-cloud-embedded.lock";
const STOP_TIMEOUT_MS = 5_000;

/** Resolves when `p` settles or after `ms`, whichever is first (never rejects). */
async function withTimeout(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    p.catch(() => {}),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]);
  clearTimeout(timer);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * PGlite does not stop a second process from opening the same data directory (both
 * would write to it and corrupt it): a pid file does.
 */
function lockDataDir(dataDir: string): () => void {
  const file = join(dataDir, LOCK_FILE);
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(file, String(process.pid), { flag: "wx", mode: 0o600 });
      return () => rmSync(file, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST" || attempt > 0) throw err;
      const pid = Number(readFileSync(file, "utf8").trim());
      if (Number.isInteger(pid) && pid > 0 && alive(pid)) {
        throw new Error(
          `the embedded database in ${dataDir} is in use by process ${pid}${pid === process.pid ? " (this one)" : ""}`,
        );
      }
      // Left behind by a process that is gone.
      rmSync(file, { force: true });
    }
  }
}

/**
 * Starts Postgres in-process (PGlite) and serves it on a loopback port or a Unix socket,
 * so that `pg.Pool`, the migrations and every query of the services work unchanged.
 *
 * Differences from a real server that callers must respect:
 * - One transaction at a time across all connections: while one connection is inside
 *   BEGIN…COMMIT the others' statements wait. Code that, inside a transaction, awaits a
 *   statement on another connection deadlocks.
 * - All connections share one session: SET, LISTEN and session advisory locks are common
 *   to all of them (a NOTIFY's message comes back on the connection that sent it).
 */
export async function startEmbeddedPostgres(opts: EmbeddedPostgresOptions): Promise<EmbeddedPostgres> {
  const memory = opts.dataDir.startsWith("memory://");
  let unlock = () => {};
  if (!memory) {
    mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
    unlock = lockDataDir(opts.dataDir);
  }
  let db: PGlite | undefined;
  let server: PGLiteSocketServer | undefined;
  try {
    const started = Date.now();
    // Loaded on demand: every service imports this package, few run the embedded database.
    const [{ PGlite }, { PGLiteSocketServer }] = await Promise.all([
      import("@electric-sql/pglite"),
      import("@electric-sql/pglite-socket"),
    ]);
    db = await PGlite.create(memory ? {} : { dataDir: opts.dataDir });
    const port = opts.port ?? (opts.socketDir ? 5432 : 0);
    const path = opts.socketDir ? join(opts.socketDir, `.s.PGSQL.${port}`) : undefined;
    if (path) {
      mkdirSync(opts.socketDir!, { recursive: true, mode: 0o700 });
      // Only this user may reach the socket (PGlite accepts any credentials).
      chmodSync(opts.socketDir!, 0o700);
      // A socket file left by a process that died (the data dir lock says none is running).
      try {
        unlinkSync(path);
      } catch {}
    }
    server = new PGLiteSocketServer({
      db,
      maxConnections: opts.maxConnections ?? 64,
      ...(path ? { path } : { host: opts.host ?? "127.0.0.1", port }),
    });
    await server.start();
    let url: string;
    if (path) {
      url = `postgres://postgres:postgres@localhost:${port}/postgres?host=${encodeURIComponent(opts.socketDir!)}`;
    } else {
      // getServerConn() is "host:port" with the port the OS chose.
      const conn = server.getServerConn();
      url = `postgres://postgres:postgres@${conn}/postgres`;
    }
    opts.logger?.info(
      { dataDir: memory ? "memory" : opts.dataDir, ms: Date.now() - started, via: path ?? "tcp" },
      "embedded Postgres (PGlite) started",
    );
    const theDb = db;
    const theServer = server;
    let closing: Promise<void> | undefined;
    return {
      url,
      dataDir: opts.dataDir,
      db: theDb,
      notifications: "poll",
      close() {
        closing ??= (async () => {
          try {
            // A client that never hangs up must not hold the shutdown: bounded.
            await withTimeout(theServer.stop(), STOP_TIMEOUT_MS);
            await withTimeout(theDb.close(), STOP_TIMEOUT_MS);
          } finally {
            unlock();
            if (path) rmSync(path, { force: true });
          }
        })();
        return closing;
      },
    };
  } catch (err) {
    await server?.stop().catch(() => {});
    await db?.close().catch(() => {});
    unlock();
    throw err;
  }
}
