import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  CompleteEventSchema,
  ErrorEventSchema,
  type Event,
  EventSchema,
  HeartbeatEventSchema,
} from "@kilo-cloud/proto";
import { describe, expect, it } from "vitest";
import { type EventLog, terminalMsgId } from "../src/index.js";

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

function typedEvent(sessionId: string, executionId: string, type: "complete" | "error" | "heartbeat"): Event {
  const event = create(EventSchema, {
    cloudAgentSessionId: sessionId,
    executionId,
    timestamp: timestampNow(),
  });
  if (type === "complete")
    event.payload = { case: "complete", value: create(CompleteEventSchema, { exitCode: 0 }) };
  else if (type === "error")
    event.payload = { case: "error", value: create(ErrorEventSchema, { error: "boom" }) };
  else event.payload = { case: "heartbeat", value: create(HeartbeatEventSchema) };
  return event;
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Durable consumer names must be plain tokens (JetStream). */
const consumerName = () => `c_${randomUUID().replaceAll("-", "")}`;

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

    it("keeps one terminal event per execution, whoever publishes it first (the reaper, then the run)", async () => {
      const log = harness().log();
      const sid = session();
      const exec = `exec_${randomUUID()}`;
      await log.publish({ event: statusEvent(sid, exec, "working"), msgId: `${exec}:0` });
      const reaped = await log.publish({ event: typedEvent(sid, exec, "error"), msgId: terminalMsgId(exec) });
      const late = await log.publish({
        event: typedEvent(sid, exec, "complete"),
        msgId: terminalMsgId(exec),
      });
      expect(late).toEqual({ id: reaped.id, duplicate: true });
      const events = await collect(log.read(sid, { storedOnly: true }), 10);
      expect(events.map((e) => e.payload.case)).toEqual(["status", "error"]);
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
      // Without a fromId, reading starts at the oldest retained event.
      const all = await collect(log.read(sid, { storedOnly: true }), 10);
      expect(all.map((e) => e.id)).toEqual([ids[2], ids[3]]);
    });

    it("stores a message id once even when it is published concurrently", async () => {
      const log = harness().log();
      const sid = session();
      const results = await Promise.all(
        Array.from({ length: 6 }, () =>
          log.publish({ event: statusEvent(sid, "e", "race"), msgId: `${sid}:race` }),
        ),
      );
      expect(new Set(results.map((r) => r.id)).size).toBe(1);
      expect(results.filter((r) => !r.duplicate)).toHaveLength(1);
      expect(await collect(log.read(sid, { storedOnly: true }), 10)).toHaveLength(1);
    });

    it("a live reader gets every event of concurrent publishers, in id order, none twice", async () => {
      const log = harness().log();
      const sid = session();
      const start = await log.publish({ event: statusEvent(sid, "e", "start"), msgId: `${sid}:start` });
      const abort = new AbortController();
      const reading = collect(log.read(sid, { fromId: start.id, signal: abort.signal }), 60);
      const published = (
        await Promise.all(
          [0, 1, 2].map(async (w) => {
            const ids: bigint[] = [];
            for (let i = 0; i < 20; i++) {
              ids.push(
                (
                  await log.publish({
                    event: statusEvent(sid, `e${w}`, `${w}.${i}`),
                    msgId: `${sid}:${w}:${i}`,
                  })
                ).id,
              );
            }
            return ids;
          }),
        )
      ).flat();
      const events = await reading;
      abort.abort();
      const ids = events.map((e) => e.id);
      expect(ids).toEqual([...published].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
    });

    it("consume delivers stored and new events of the given types only", async () => {
      const log = harness().log();
      const sid = session();
      await log.publish({ event: statusEvent(sid, "x1", "not for the consumer"), msgId: `${sid}:s0` });
      await log.publish({ event: typedEvent(sid, "x1", "heartbeat"), msgId: `${sid}:h0` });
      const c1 = await log.publish({ event: typedEvent(sid, "x1", "complete"), msgId: `${sid}:c1` });
      const e1 = await log.publish({ event: typedEvent(sid, "x2", "error"), msgId: `${sid}:e1` });
      const got: Event[] = [];
      const abort = new AbortController();
      const running = log.consume(
        consumerName(),
        ["complete", "error"],
        async (e) => {
          if (e.cloudAgentSessionId === sid) got.push(e);
        },
        abort.signal,
      );
      await waitFor("the stored events", () => got.length >= 2);
      await log.publish({ event: typedEvent(sid, "x3", "heartbeat"), msgId: `${sid}:h1` });
      const c2 = await log.publish({ event: typedEvent(sid, "x3", "complete"), msgId: `${sid}:c2` });
      await waitFor("the new event", () => got.length >= 3);
      await new Promise((r) => setTimeout(r, 200));
      abort.abort();
      await running;
      expect(got.map((e) => [e.id, e.payload.case, e.executionId])).toEqual([
        [c1.id, "complete", "x1"],
        [e1.id, "error", "x2"],
        [c2.id, "complete", "x3"],
      ]);
    });

    it("consume delivers again an event whose handler threw", async () => {
      const log = harness().log();
      const sid = session();
      const { id } = await log.publish({ event: typedEvent(sid, "x1", "error"), msgId: `${sid}:e` });
      const attempts: bigint[] = [];
      let handled: Event | undefined;
      const abort = new AbortController();
      const running = log.consume(
        consumerName(),
        ["error"],
        async (e) => {
          if (e.cloudAgentSessionId !== sid) return;
          attempts.push(e.id);
          if (attempts.length === 1) throw new Error("not now");
          handled = e;
        },
        abort.signal,
      );
      await waitFor("the second delivery", () => handled !== undefined);
      abort.abort();
      await running;
      expect(attempts.slice(0, 2)).toEqual([id, id]);
      expect(handled?.executionId).toBe("x1");
    });

    it("a restarted consumer of the same name continues after what the first one handled", async () => {
      const log = harness().log();
      const sid = session();
      const name = consumerName();
      const first = [
        await log.publish({ event: typedEvent(sid, "x1", "complete"), msgId: `${sid}:1` }),
        await log.publish({ event: typedEvent(sid, "x2", "complete"), msgId: `${sid}:2` }),
      ];
      const seenA: bigint[] = [];
      const stopA = new AbortController();
      const a = log.consume(
        name,
        ["complete"],
        async (e) => {
          if (e.cloudAgentSessionId === sid) seenA.push(e.id);
        },
        stopA.signal,
      );
      await waitFor("the first consumer", () => seenA.length >= 2);
      stopA.abort();
      await a;
      expect(seenA).toEqual(first.map((r) => r.id));

      const later = await log.publish({ event: typedEvent(sid, "x3", "complete"), msgId: `${sid}:3` });
      const seenB: bigint[] = [];
      const stopB = new AbortController();
      const b = log.consume(
        name,
        ["complete"],
        async (e) => {
          if (e.cloudAgentSessionId === sid) seenB.push(e.id);
        },
        stopB.signal,
      );
      await waitFor("the restarted consumer", () => seenB.length >= 1);
      await new Promise((r) => setTimeout(r, 300));
      stopB.abort();
      await b;
      expect(seenB).toEqual([later.id]);
    });
  });
}
