import { Code } from "@connectrpc/connect";
import { type PrivatePostgres, startPrivatePostgres } from "@kilo-cloud/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createPool, inTransaction, internalError, isOutage, type Pool } from "../src/index.js";

/**
 * PostgreSQL restarted (crash-stopped) while transactions hold pool clients: the process
 * must not die of the connections' `error` events, every failure must read as an outage
 * (UNAVAILABLE to callers), and the pool must work again once the server is back.
 */
describe("a PostgreSQL restart under load", () => {
  let pgServer: PrivatePostgres;
  let pool: Pool;

  beforeAll(async () => {
    pgServer = await startPrivatePostgres();
    pool = createPool(pgServer.url, { max: 8 });
  }, 60_000);

  afterAll(async () => {
    await pool?.end().catch(() => {});
    await pgServer?.dispose();
  });

  /** Transactions that sleep inside, so clients are checked out when the server goes. */
  async function load(stop: () => boolean): Promise<{ ok: number; failures: unknown[] }> {
    let ok = 0;
    const failures: unknown[] = [];
    const worker = async () => {
      while (!stop()) {
        try {
          await inTransaction(pool, async (tx) => {
            await tx.query("SELECT pg_sleep(0.05)");
            await tx.query("SELECT 1");
          });
          ok++;
        } catch (err) {
          failures.push(err);
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    };
    await Promise.all(Array.from({ length: 8 }, worker));
    return { ok, failures };
  }

  it("survives three restarts, reports outages as UNAVAILABLE and recovers each time", async () => {
    for (let round = 0; round < 3; round++) {
      let done = false;
      const running = load(() => done);
      await new Promise((r) => setTimeout(r, 300));
      await pgServer.restart();
      // The pool recovers by itself: a transaction succeeds again within seconds.
      const deadline = Date.now() + 20_000;
      let recovered = false;
      while (!recovered && Date.now() < deadline) {
        recovered = await inTransaction(
          pool,
          async (tx) => (await tx.query("SELECT 1 AS one")).rows[0].one === 1,
        ).catch(() => false);
        if (!recovered) await new Promise((r) => setTimeout(r, 100));
      }
      done = true;
      const { ok, failures } = await running;
      expect(recovered).toBe(true);
      expect(ok).toBeGreaterThan(0);
      expect(failures.length).toBeGreaterThan(0);
      for (const err of failures) {
        expect(isOutage(err), String(err)).toBe(true);
        const ce = internalError("could not read the session", err);
        expect(ce.code).toBe(Code.Unavailable);
        expect(ce.rawMessage).toBe("could not read the session: temporarily unavailable, retry");
      }
    }
  }, 120_000);

  it("keeps INTERNAL for failures that are not outages", async () => {
    const err = await pool.query("SELECT * FROM no_such_table").catch((e: unknown) => e);
    expect(isOutage(err)).toBe(false);
    expect(internalError("could not read the session", err).code).toBe(Code.Internal);
  });
});
