import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Event, EventSchema } from "@kilo-cloud/proto";
import { describe, expect, it } from "vitest";
import type { EventLog } from "../src/index.js";

/** What a test harness provides to run the contract against one implementation. */
export interface EventLogHarness {
  log(): EventLog;
  /** Drops every stored event with an id below `id` (as retention would). */
  dropBefore(id: bigint): Promise<void>;
}

export function statusEvent(sessionId: string, executionId: string, message: string): Event {
  return create(EventSchema, {
    cloudAgentSessionId: sessionId,
    executionId,
    timestamp: timestampNow(),
    payload: { case: "status", value: { message, step: "test" } },
  });
}

async function collect(it: AsyncIterable<Event>, n: number): Promise<Event[]> {
  const out: Event[] = [];
  if (n === 0) return out;
  for await (const e of it) {
    out.push(e);
    if (out.length >= n) break;
  }
  return out;
}

const session = () => `agent_${randomUUID()}`;

/** The behaviour every event log must have (JetStream and embedded Postgres alike). */
export function eventLogContract(name: string, harness: () => EventLogHarness): void {
  describe(`event log contract: ${name}`, () => {
    it("assigns strictly increasing ids and keeps the payload", async () => {
      const log = harness().log();
      const sid = session();
      const ids: bigint[] = [];
      for (let i = 0; i < 5; i++) {
        ids.push(
          (await log.publish({ event: statusEvent(sid, "exec_1", `m${i}`), msgId: `exec_1:${sid}:${i}` })).id,
        );
      }
      expect([...ids].sort((a, b) => (a < b ? -1 : 1))).toEqual(ids);
      expect(new Set(ids).size).toBe(5);
      const events = await collect(log.read(sid, { storedOnly: true }), 5);
      expect(events.map((e) => e.id)).toEqual(ids);
      expect(events.map((e) => (e.payload.case === "status" ? e.payload.value.message : ""))).toEqual([
        "m0",
        "m1",
        "m2",
        "m3",
        "m4",
      ]);
      expect(events[0]?.executionId).toBe("exec_1");
      expect(events[0]?.timestamp).toBeDefined();
    });

    it("stores a repeated message id once", async () => {
      const log = harness().log();
      const sid = session();
      const a = await log.publish({ event: statusEvent(sid, "exec_1", "once"), msgId: `${sid}:dup` });
      const b = await log.publish({ event: statusEvent(sid, "exec_1", "once"), msgId: `${sid}:dup` });
      expect(b).toEqual({ id: a.id, duplicate: true });
      expect(a.duplicate).toBe(false);
      const events = await collect(log.read(sid, { storedOnly: true }), 10);
      expect(events).toHaveLength(1);
    });

    it("replays after fromId, then follows live events with no gap or duplicate", async () => {
      const log = harness().log();
      const sid = session();
      const first = [];
      for (let i = 0; i < 3; i++)
        first.push(await log.publish({ event: statusEvent(sid, "e", `s${i}`), msgId: `${sid}:${i}` }));
      const abort = new AbortController();
      const reading = collect(log.read(sid, { fromId: first[0]!.id, signal: abort.signal }), 5);
      await new Promise((r) => setTimeout(r, 50));
      for (let i = 3; i < 6; i++)
        await log.publish({ event: statusEvent(sid, "e", `s${i}`), msgId: `${sid}:${i}` });
      const events = await reading;
      abort.abort();
      expect(events.map((e) => (e.payload.case === "status" ? e.payload.value.message : ""))).toEqual([
        "s1",
        "s2",
        "s3",
        "s4",
        "s5",
      ]);
    });

    it("keeps sessions apart", async () => {
      const log = harness().log();
      const a = session();
      const b = session();
      await log.publish({ event: statusEvent(a, "e", "for a"), msgId: `${a}:0` });
      await log.publish({ event: statusEvent(b, "e", "for b"), msgId: `${b}:0` });
      const events = await collect(log.read(b, { storedOnly: true }), 10);
      expect(events.map((e) => e.cloudAgentSessionId)).toEqual([b]);
    });

    it("stored-only reading of a session with nothing new ends at once", async () => {
      const log = harness().log();
      const sid = session();
      const { id } = await log.publish({ event: statusEvent(sid, "e", "x"), msgId: `${sid}:0` });
      await log.publish({ event: statusEvent(session(), "e", "other"), msgId: `${randomUUID()}` });
      expect(await collect(log.read(sid, { fromId: id, storedOnly: true }), 10)).toEqual([]);
    });

    it("answers OUT_OF_RANGE for a fromId older than what is retained", async () => {
      const h = harness();
      const log = h.log();
      const sid = session();
      const ids = [];
      for (let i = 0; i < 4; i++)
        ids.push((await log.publish({ event: statusEvent(sid, "e", `r${i}`), msgId: `${sid}:${i}` })).id);
      await h.dropBefore(ids[2]!);
      const err = await collect(log.read(sid, { fromId: ids[0]!, storedOnly: true }), 10).catch((e) => e);
      expect(err).toBeInstanceOf(ConnectError);
      expect((err as ConnectError).code).toBe(Code.OutOfRange);
      // From the last retained id on, nothing is missing.
      const rest = await collect(log.read(sid, { fromId: ids[1]!, storedOnly: true }), 10);
      expect(rest.map((e) => e.id)).toEqual([ids[2], ids[3]]);
    });
  });
}
