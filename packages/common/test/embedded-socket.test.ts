/**
 * The embedded database as `npm start` runs it: served on a Unix socket in a directory only
 * this user can enter (no TCP port, since PGlite accepts any credentials), and a shutdown
 * that a client which never hangs up cannot hold.
 */

import { statSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { startEmbeddedPostgres } from "../src/index.js";

describe("embedded Postgres on a private Unix socket", { timeout: 180_000 }, () => {
  let dir: string | undefined;
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("serves only on a socket in a 0700 directory and closes with a client still connected", async () => {
    dir = await mkdtemp(join(tmpdir(), "kc-embedded-sock-"));
    const socketDir = join(dir, "run");
    const db = await startEmbeddedPostgres({ dataDir: "memory://", socketDir });
    expect(statSync(socketDir).mode & 0o777).toBe(0o700);
    expect(statSync(join(socketDir, ".s.PGSQL.5432")).isSocket()).toBe(true);
    expect(db.url).toContain(`host=${encodeURIComponent(socketDir)}`);

    const client = new pg.Client({ connectionString: db.url });
    client.on("error", () => {});
    await client.connect();
    expect((await client.query("SELECT 1 AS one")).rows[0].one).toBe(1);

    const started = Date.now();
    await db.close(); // the client never ends its connection
    expect(Date.now() - started).toBeLessThan(30_000);
    await client.end().catch(() => {});
  });
});
