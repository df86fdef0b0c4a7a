import { randomUUID } from "node:crypto";
import { createLogger, type EventLog, JetStreamEventLog, PostgresEventLog } from "@kilo-cloud/common";
import { OutputSource } from "@kilo-cloud/proto";
import { createTestDatabase, startNats, type TestDatabase, type TestNats } from "@kilo-cloud/testing";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExecutionEvents } from "../src/events/emitter.js";

/**
 * Pipelined publishing through a dependency fault: the emitter keeps many publishes in
 * flight while the log's server dies (NATS) or its connections are cut (Postgres). Every
 * event must be stored once, in emission order, with the terminal event last.
 */

const BURST = 3_000;
const FAULT_AT = 1_000;
const logger = createLogger({ service: "test", level: "silent" });

interface Stored {
  lines: string[];
  types: string[];
  ids: bigint[];
}

async function storedEvents(log: EventLog, sessionId: string): Promise<Stored> {
  const out: Stored = { lines: [], types: [], ids: [] };
  for await (const e of log.read(sessionId, { storedOnly: true })) {
    out.ids.push(e.id);
    out.types.push(e.payload.case ?? "");
    if (e.payload.case === "output") out.lines.push(e.payload.value.content);
  }
  return out;
}

/** Emits a burst with back-pressure, calls `fault` part-way, then a terminal event. */
async function burst(log: EventLog, fault: () => Promise<void>): Promise<string> {
  const sessionId = `agent_${randomUUID()}`;
  const ev = new ExecutionEvents(log, sessionId, `exec_${randomUUID()}`, logger, undefined, 64);
  let faulted: Promise<void> | undefined;
  for (let i = 0; i < BURST; i++) {
    if (i === FAULT_AT) faulted = fault();
    ev.emit({ case: "output", value: { content: `line ${i}`, source: OutputSource.STDOUT } });
    await ev.backpressure();
  }
  ev.emit({ case: "complete", value: { exitCode: 0 } });
  await faulted;
  await ev.flush();
  return sessionId;
}

function expectExactlyOnceInOrder(stored: Stored): void {
  expect(stored.lines).toHaveLength(BURST);
  expect(stored.lines).toEqual(Array.from({ length: BURST }, (_, i) => `line ${i}`));
  expect(stored.types.at(-1)).toBe("complete");
  expect(stored.types.filter((t) => t === "complete")).toHaveLength(1);
  expect(stored.ids).toEqual([...stored.ids].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
}

describe("pipelined publishing on JetStream through a NATS restart", () => {
  let nats: TestNats;
  let log: JetStreamEventLog;

  beforeAll(async () => {
    nats = await startNats();
    log = await JetStreamEventLog.connect({ servers: nats.url, publishTimeoutMs: 2_000 });
  });
  afterAll(async () => {
    await log?.close();
    await nats?.[Symbol.asyncDispose]();
  });

  it("stores every event once, in order, the terminal one last", async () => {
    let emittedWhileDown = false;
    const sessionId = await burst(log, async () => {
      await nats.kill();
      await new Promise((r) => setTimeout(r, 300));
      emittedWhileDown = true;
      await nats.start();
    });
    expect(emittedWhileDown).toBe(true);
    expectExactlyOnceInOrder(await storedEvents(log, sessionId));
  }, 120_000);
});

describe("batched publishing on Postgres through cut connections", () => {
  let db: TestDatabase;
  let log: PostgresEventLog;

  beforeAll(async () => {
    db = await createTestDatabase("kc_evpub");
    log = await PostgresEventLog.connect({ connectionString: db.url, pruneIntervalMs: 0 });
  });
  afterAll(async () => {
    await log?.close();
    await db?.drop();
  });

  it("stores every event once, in order, the terminal one last", async () => {
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    let cut = 0;
    try {
      const sessionId = await burst(log, async () => {
        // Cut every connection of the log's pool a few times while batches are in flight.
        for (let i = 0; i < 3; i++) {
          const r = await admin.query(
            `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()`,
          );
          cut += r.rowCount ?? 0;
          await new Promise((r) => setTimeout(r, 20));
        }
      });
      expect(cut).toBeGreaterThan(0);
      expectExactlyOnceInOrder(await storedEvents(log, sessionId));
    } finally {
      await admin.end();
    }
  }, 120_000);
});
