import { readdir } from "node:fs/promises";
import pg from "pg";
import Postgrator from "postgrator";
import type { Logger } from "./logger.js";

export type Pool = pg.Pool;
export type PoolClient = pg.PoolClient;

export function createPool(
  connectionString: string,
  opts: { max?: number; applicationName?: string } = {},
): pg.Pool {
  const pool = new pg.Pool({
    connectionString,
    max: opts.max ?? 10,
    application_name: opts.applicationName ?? "kilo-cloud",
    idleTimeoutMillis: 30_000,
    connectionTimeoutMillis: 10_000,
  });
  // An idle client's error (e.g. the server restarted) must not crash the process.
  pool.on("error", () => {});
  return pool;
}

/**
 * Applies the versioned SQL migrations in `dir` (files `NNN.do.<name>.sql`) to `schema`,
 * recording them in `<schema>.schemaversion`. Safe to run from several replicas at once:
 * a session-level advisory lock serialises them.
 */
export async function migrate(
  pool: pg.Pool,
  opts: { schema: string; dir: string; logger?: Logger },
): Promise<number> {
  if (!/^[a-z_][a-z0-9_]*$/.test(opts.schema)) throw new Error(`bad schema name ${opts.schema}`);
  return withClient(
    pool,
    async (client) => {
      await client.query("SELECT pg_advisory_lock(hashtext($1))", [`kilo-cloud-migrate:${opts.schema}`]);
      await client.query(`CREATE SCHEMA IF NOT EXISTS ${opts.schema}`);
      // Migration files name their tables without a schema: they land in opts.schema.
      await client.query(`SET search_path TO ${opts.schema}`);
      const files = (await readdir(opts.dir)).filter((f) => f.endsWith(".sql"));
      const postgrator = new Postgrator({
        migrationPattern: `${opts.dir}/*.sql`,
        driver: "pg",
        schemaTable: `${opts.schema}.schemaversion`,
        currentSchema: opts.schema,
        execQuery: (query: string) => client.query(query),
      });
      const applied = await postgrator.migrate();
      if (applied.length > 0) {
        opts.logger?.info(
          { schema: opts.schema, applied: applied.map((m) => m.name), available: files.length },
          "migrated",
        );
      }
      return applied.length;
    },
    async (client) => {
      await client.query("RESET search_path").catch(() => {});
      await client
        .query("SELECT pg_advisory_unlock(hashtext($1))", [`kilo-cloud-migrate:${opts.schema}`])
        .catch(() => {});
    },
  );
}

/**
 * Runs `fn` with a client of the pool. While the client is checked out, its `error` event
 * (the server restarted, the connection was cut) is listened to — an unlistened one would
 * crash the process — and a client that saw an error is destroyed on release instead of
 * going back to the pool. `cleanup` runs before the release, whatever `fn` did.
 */
export async function withClient<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
  cleanup?: (client: pg.PoolClient) => Promise<void>,
): Promise<T> {
  const client = await pool.connect();
  let broken: Error | undefined;
  const onError = (err: Error) => {
    broken = err;
  };
  client.on("error", onError);
  try {
    return await fn(client);
  } finally {
    if (cleanup && !broken) await cleanup(client).catch(() => {});
    client.off("error", onError);
    client.release(broken ?? undefined);
  }
}

/** Runs `fn` in a transaction; rolls back on any error. */
export async function inTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  return withClient(pool, async (client) => {
    await client.query("BEGIN");
    try {
      const result = await fn(client);
      await client.query("COMMIT");
      return result;
    } catch (err) {
      await client.query("ROLLBACK").catch(() => {});
      throw err;
    }
  });
}
