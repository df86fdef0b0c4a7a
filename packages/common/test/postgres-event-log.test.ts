import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, type ConnectError } from "@connectrpc/connect";
import { EventSchema } from "@kilo-cloud/proto";
import { createTestDatabase, type TestDatabase } from "@kilo-cloud/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createPool,
  type EmbeddedPostgres,
  type Pool,
  PostgresEventLog,
  startEmbeddedPostgres,
} from "../src/index.js";
import { eventLogContract, statusEvent } from "./event-log-contract.js";

const session = () => `agent_${randomUUID()}`;

async function storedIds(log: PostgresEventLog, sid: string, fromId?: bigint): Promise<bigint[]> {
  const ids: bigint[] = [];
  for await (const e of log.read(sid, { storedOnly: true, ...(fromId !== undefined ? { fromId } : {}) }))
    ids.push(e.id);
  return ids;
}

describe("PostgresEventLog on PostgreSQL", () => {
  let db: TestDatabase;
  let pool: Pool;
  let log: PostgresEventLog;

  beforeAll(async () => {
    db = await createTestDatabase("kc_events");
    pool = createPool(db.url);
    log = await PostgresEventLog.connect({ pool, pruneIntervalMs: 0 });
  });
  afterAll(async () => {
    await log?.close();
    await pool?.end();
    await db?.drop();
  });

  eventLogContract("Postgres", () => ({
    log: () => log,
    dropBefore: async (id) => void (await log.truncateBefore(id)),
  }));

  it("a publish waits for an uncommitted earlier one, so ids commit in order", async () => {
    const sid = session();
    const holder = await pool.connect();
    try {
      await holder.query("BEGIN");
      const { rows } = await holder.query<{ event_id: string }>(
        "SELECT event_id FROM events.publish($1, 'e', 'status', ''::bytea, $2)",
        [sid, `${sid}:held`],
      );
      const held = BigInt(rows[0]!.event_id);
      let later: bigint | undefined;
      const publishing = log
        .publish({ event: statusEvent(sid, "e", "after"), msgId: `${sid}:after` })
        .then((r) => {
          later = r.id;
        });
      await new Promise((r) => setTimeout(r, 300));
      // Without the lock this one would have drawn a larger id and committed first: a
      // reader passing it would later miss the held one.
      expect(later).toBeUndefined();
      expect(await storedIds(log, sid)).toEqual([]);
      await holder.query("COMMIT");
      await publishing;
      expect(later! > held).toBe(true);
      expect(await storedIds(log, sid)).toEqual([held, later]);
    } finally {
      await holder.query("ROLLBACK").catch(() => {});
      holder.release();
    }
  });

  it("a reader on another instance follows by LISTEN/NOTIFY, at once", async () => {
    const other = await PostgresEventLog.connect({ pool, pruneIntervalMs: 0, pollIntervalMs: 60_000 });
    try {
      const sid = session();
      const abort = new AbortController();
      const got: bigint[] = [];
      const reading = (async () => {
        for await (const e of other.read(sid, { signal: abort.signal })) got.push(e.id);
      })();
      await new Promise((r) => setTimeout(r, 100));
      const { id } = await log.publish({ event: statusEvent(sid, "e", "x"), msgId: `${sid}:0` });
      const t0 = Date.now();
      while (got.length === 0 && Date.now() - t0 < 5_000) await new Promise((r) => setTimeout(r, 5));
      // The poll interval is a minute: only the notification can have woken it.
      expect(got).toEqual([id]);
      abort.abort();
      await reading;
    } finally {
      await other.close();
    }
  });

  it("a reader keeps following after its LISTEN connection is killed", async () => {
    const other = await PostgresEventLog.connect({
      pool,
      pruneIntervalMs: 0,
      pollIntervalMs: 60_000,
      migrate: false,
    });
    try {
      const sid = session();
      const abort = new AbortController();
      const got: bigint[] = [];
      const reading = (async () => {
        for await (const e of other.read(sid, { signal: abort.signal })) got.push(e.id);
      })();
      const killed = await pool.query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN %' AND pid <> pg_backend_pid()`,
      );
      expect(killed.rowCount).toBeGreaterThanOrEqual(2);
      await new Promise((r) => setTimeout(r, 100));
      const first = await log.publish({ event: statusEvent(sid, "e", "while away"), msgId: `${sid}:0` });
      const t0 = Date.now();
      while (got.length < 1 && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 20));
      // Reconnected (and looked again): it follows by notification as before.
      const second = await log.publish({ event: statusEvent(sid, "e", "back"), msgId: `${sid}:1` });
      while (got.length < 2 && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 20));
      expect(got).toEqual([first.id, second.id]);
      abort.abort();
      await reading;
    } finally {
      await other.close();
    }
  });

  it("two instances of one consumer name deliver each event once", async () => {
    const a = await PostgresEventLog.connect({ pool, pruneIntervalMs: 0, migrate: false });
    try {
      const sid = session();
      const name = `c_${randomUUID().replaceAll("-", "")}`;
      const seen: Array<[string, bigint]> = [];
      const stop = new AbortController();
      const running = [a, log].map((l, i) =>
        l.consume(
          name,
          ["heartbeat"],
          async (e) => {
            if (e.cloudAgentSessionId === sid) seen.push([`i${i}`, e.id]);
          },
          stop.signal,
        ),
      );
      const ids: bigint[] = [];
      for (let i = 0; i < 5; i++) {
        const event = create(EventSchema, {
          cloudAgentSessionId: sid,
          executionId: "e",
          payload: { case: "heartbeat", value: {} },
        });
        ids.push((await log.publish({ event, msgId: `${sid}:${i}` })).id);
      }
      const t0 = Date.now();
      while (seen.length < 5 && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 20));
      await new Promise((r) => setTimeout(r, 300));
      stop.abort();
      await Promise.all(running);
      expect(seen.map(([, id]) => id)).toEqual(ids);
    } finally {
      await a.close();
    }
  });

  it("prunes by size and by age, a prefix of the log at a time", async () => {
    const sid = session();
    const ids: bigint[] = [];
    for (let i = 0; i < 6; i++)
      ids.push(
        (await log.publish({ event: statusEvent(sid, "e", "x".repeat(1000)), msgId: `${sid}:${i}` })).id,
      );
    const sized = await PostgresEventLog.connect({
      pool,
      migrate: false,
      pruneIntervalMs: 0,
      maxBytes: 3 * 1100,
    });
    try {
      const bySize = await sized.prune();
      const left = await storedIds(log, sid);
      // Each payload is a little over 1000 bytes: three at most fit in 3300.
      expect(left.length).toBeGreaterThanOrEqual(2);
      expect(left.length).toBeLessThanOrEqual(3);
      expect(left).toEqual(ids.slice(ids.length - left.length));
      expect(bySize.firstId).toBe(left[0]);
      const err = await storedIds(log, sid, ids[0]).catch((e: unknown) => e);
      expect((err as ConnectError).code).toBe(Code.OutOfRange);
      expect((err as ConnectError).rawMessage).toMatch(/older than the retained events/);

      await pool.query("UPDATE events.events SET created_at = now() - interval '2 hours' WHERE id <= $1", [
        String(ids[4]),
      ]);
      const aged = await PostgresEventLog.connect({
        pool,
        migrate: false,
        pruneIntervalMs: 0,
        maxAgeMs: 3_600_000,
      });
      try {
        const byAge = await aged.prune();
        expect(byAge.firstId).toBe(ids[5]);
        expect(await storedIds(log, sid)).toEqual([ids[5]]);
      } finally {
        await aged.close();
      }
    } finally {
      await sized.close();
    }
  });
});

describe("PostgresEventLog on embedded PGlite (pglite-socket)", () => {
  let dir: string;
  let pg: EmbeddedPostgres;
  let pool: Pool;
  let log: PostgresEventLog;

  const open = async () => {
    pg = await startEmbeddedPostgres({ dataDir: join(dir, "data") });
    pool = createPool(pg.url);
    log = await PostgresEventLog.connect({ pool, notifications: pg.notifications, pruneIntervalMs: 0 });
  };
  const shut = async () => {
    await log?.close();
    await pool?.end();
    await pg?.close();
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "kc-embedded-"));
    await open();
  });
  afterAll(async () => {
    await shut();
    await rm(dir, { recursive: true, force: true });
  });

  eventLogContract("embedded Postgres", () => ({
    log: () => log,
    dropBefore: async (id) => void (await log.truncateBefore(id)),
  }));

  it("a reader on another instance follows by polling", async () => {
    const other = await PostgresEventLog.connect({
      pool,
      notifications: "poll",
      pollIntervalMs: 50,
      migrate: false,
      pruneIntervalMs: 0,
    });
    try {
      const sid = session();
      const abort = new AbortController();
      const got: bigint[] = [];
      const reading = (async () => {
        for await (const e of other.read(sid, { signal: abort.signal })) got.push(e.id);
      })();
      const { id } = await log.publish({ event: statusEvent(sid, "e", "x"), msgId: `${sid}:0` });
      const t0 = Date.now();
      while (got.length === 0 && Date.now() - t0 < 5_000) await new Promise((r) => setTimeout(r, 10));
      expect(got).toEqual([id]);
      abort.abort();
      await reading;
    } finally {
      await other.close();
    }
  });

  it("refuses a second opening of the same data directory", async () => {
    await expect(startEmbeddedPostgres({ dataDir: join(dir, "data") })).rejects.toThrow(/in use by process/);
  });

  it("keeps the events and their ids across a restart", { timeout: 120_000 }, async () => {
    const sid = session();
    const ids: bigint[] = [];
    for (let i = 0; i < 4; i++)
      ids.push((await log.publish({ event: statusEvent(sid, "e", `r${i}`), msgId: `${sid}:${i}` })).id);
    await shut();
    await open();
    expect(await storedIds(log, sid)).toEqual(ids);
    expect(await storedIds(log, sid, ids[1])).toEqual(ids.slice(2));
    const messages: string[] = [];
    for await (const e of log.read(sid, { storedOnly: true }))
      messages.push(e.payload.case === "status" ? e.payload.value.message : "");
    expect(messages).toEqual(["r0", "r1", "r2", "r3"]);
    // Ids go on from where they were; a repeated message id is still known.
    const again = await log.publish({ event: statusEvent(sid, "e", "r3"), msgId: `${sid}:3` });
    expect(again).toEqual({ id: ids[3], duplicate: true });
    const next = await log.publish({ event: statusEvent(sid, "e", "r4"), msgId: `${sid}:4` });
    expect(next.id > ids[3]!).toBe(true);
  });

  it("serves on a Unix socket", { timeout: 120_000 }, async () => {
    const sock = await startEmbeddedPostgres({ dataDir: "memory://", socketDir: join(dir, "sock") });
    const p = createPool(sock.url, { max: 3 });
    try {
      const { rows } = await p.query<{ n: number }>("SELECT $1::int + 1 AS n", [41]);
      expect(rows[0]?.n).toBe(42);
    } finally {
      await p.end();
      await sock.close();
    }
  });
});
