import { setTimeout as sleep } from "node:timers/promises";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { type Event, ExecutionHealth, ExecutionStatus } from "@kilo-cloud/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FullStack, startFullStack } from "../support/full-stack.js";
import {
  blocksOf,
  connectErrorOf,
  countBy,
  isKiloStatus,
  isTerminal,
  prepareSession,
  readUntilIdle,
  readUntilTerminals,
  subscribe,
} from "./helpers.js";

/**
 * The per-session queue end to end: gateway → session (dispatcher, lifecycle consumer,
 * reaper) → sandbox-manager (real bwrap sandboxes, real git) → JetStream → gateway.
 *
 * The agent binary in these stacks is the KILO REPLAYER (packages/testing/src/kilo-replayer.ts):
 * a stand-in that prints captured real kilo output and exits 0. It is not a model or an
 * agent; it is used so that hundreds of executions cost seconds rather than hours. Its
 * `lineDelayMs` makes an execution last as long as a test needs. Everything else is real.
 */

const REPLAY = "stream-write-tool.jsonl";

interface ExecRow {
  id: string;
  seq: string;
  status: string;
  started_at: Date | null;
  finished_at: Date | null;
  error_message: string | null;
}

async function executions(stack: FullStack, sessionId: string): Promise<ExecRow[]> {
  const { rows } = await stack.db.query<ExecRow>(
    "SELECT id, seq, status, started_at, finished_at, error_message FROM session.executions WHERE session_id = $1 ORDER BY seq",
    [sessionId],
  );
  return rows;
}

async function statusOf(stack: FullStack, executionId: string): Promise<string | undefined> {
  const { rows } = await stack.db.query<{ status: string }>(
    "SELECT status FROM session.executions WHERE id = $1",
    [executionId],
  );
  return rows[0]?.status;
}

/** Resolves with the first event (from the start of the session) that matches. */
async function firstEvent(stack: FullStack, sessionId: string, pred: (e: Event) => boolean): Promise<Event> {
  for await (const res of subscribe(stack.stream("alice"), { cloudAgentSessionId: sessionId })) {
    if (res.event && pred(res.event)) return res.event;
  }
  throw new Error("the stream ended");
}

describe("queue: 200 concurrent messages on one session (kilo replayer, no delay)", {
  timeout: 420_000,
}, () => {
  let stack: FullStack;
  beforeAll(async () => {
    stack = await startFullStack({
      kilo: { replay: REPLAY, lineDelayMs: 0 },
      queue: { maxWaiting: 250 },
      keepaliveMs: 2_000,
    });
    await stack.login("alice");
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  it("acks all with distinct ids, runs each exactly once, in queue order, without interleaving", async () => {
    const alice = stack.sessions("alice");
    const { cloudAgentSessionId: id } = await prepareSession(alice, { prompt: "message 0" });
    const live = readUntilTerminals(stack.stream("alice"), { cloudAgentSessionId: id }, 201, {
      timeoutMs: 380_000,
    });

    const t0 = performance.now();
    const first = await alice.initiateSession({ cloudAgentSessionId: id });
    const acks = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        alice.sendMessage({ cloudAgentSessionId: id, prompt: `message ${i + 1}` }),
      ),
    );
    const tAcked = performance.now();
    const liveEvents = await live;
    const tDone = performance.now();

    // Acked, each with its own execution id.
    const ids = [first.executionId, ...acks.map((a) => a.executionId)];
    expect(new Set(ids).size).toBe(201);
    for (const a of acks) expect([ExecutionStatus.QUEUED, ExecutionStatus.STARTED]).toContain(a.status);

    // Queue order is `seq`; every execution completed.
    await expect
      .poll(async () => (await executions(stack, id)).filter((r) => r.status === "completed").length, {
        timeout: 20_000,
      })
      .toBe(201);
    const rows = await executions(stack, id);
    const order = rows.map((r) => r.id);
    expect(new Set(order)).toEqual(new Set(ids));
    expect(order[0]).toBe(first.executionId);
    // started_at follows the queue order. (It is the claiming transaction's now(), i.e. when
    // that transaction began, possibly while it waited for the session lock, so it is not
    // compared with the previous finished_at; the stream below shows there is no overlap.)
    const startedOrder = [...rows].sort((a, b) => a.started_at!.getTime() - b.started_at!.getTime());
    expect(startedOrder.map((r) => r.id)).toEqual(order);
    for (let i = 1; i < rows.length; i++) {
      expect(rows[i]!.started_at!.getTime()).toBeGreaterThan(rows[i - 1]!.started_at!.getTime());
    }

    // The whole stream once it is quiet: nothing beyond what the live subscriber saw.
    const events = await readUntilIdle(stack.stream("alice"), { cloudAgentSessionId: id });
    expect(events.map((e) => e.id)).toEqual(liveEvents.map((e) => e.id));

    const completes = events.filter((e) => e.payload.case === "complete");
    expect(completes).toHaveLength(201);
    expect(completes.map((e) => e.executionId)).toEqual(order);
    for (const c of completes) if (c.payload.case === "complete") expect(c.payload.value.exitCode).toBe(0);
    // No interleaving: each execution's events form one block, blocks in queue order.
    expect(blocksOf(events)).toEqual(order);
    // Exactly once: one terminal event and one "kilo" start per execution.
    const terminals = countBy(events, isTerminal);
    const kiloStarts = countBy(events, isKiloStatus);
    for (const e of order) {
      expect(terminals.get(e), e).toBe(1);
      expect(kiloStarts.get(e), e).toBe(1);
    }
    expect(terminals.size).toBe(201);
    expect(kiloStarts.size).toBe(201);

    const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
    console.log(
      `[queue] 201 executions: acks in ${secs(tAcked - t0)}, all complete on the stream in ${secs(tDone - t0)} ` +
        `(${((tDone - t0) / 201).toFixed(0)} ms per execution), ${events.length} events`,
    );
  });

  it("InitiateSession is idempotent under concurrency: one execution for 10 concurrent calls", async () => {
    const alice = stack.sessions("alice");
    const { cloudAgentSessionId: id } = await prepareSession(alice);
    const acks = await Promise.all(
      Array.from({ length: 10 }, () => alice.initiateSession({ cloudAgentSessionId: id })),
    );
    expect(new Set(acks.map((a) => a.executionId)).size).toBe(1);
    const rows = await executions(stack, id);
    expect(rows.map((r) => r.id)).toEqual([acks[0]!.executionId]);
    await readUntilTerminals(stack.stream("alice"), { cloudAgentSessionId: id }, 1);
    // And again after it ran: still the same execution, still one row.
    const again = await alice.initiateSession({ cloudAgentSessionId: id });
    expect(again.executionId).toBe(acks[0]!.executionId);
    expect(await executions(stack, id)).toHaveLength(1);
  });
});

describe("queue limits, heartbeats and interrupts (kilo replayer, 400 ms per line)", {
  timeout: 120_000,
}, () => {
  let stack: FullStack;
  beforeAll(async () => {
    stack = await startFullStack({
      kilo: { replay: REPLAY, lineDelayMs: 400 },
      queue: { maxWaiting: 2, heartbeatStaleMs: 1_500 },
      runner: { heartbeatIntervalMs: 300 },
    });
    await stack.login("alice");
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  it("a full queue answers RESOURCE_EXHAUSTED and stores nothing for the refused message", async () => {
    const alice = stack.sessions("alice");
    const { cloudAgentSessionId: id } = await prepareSession(alice);
    const first = await alice.initiateSession({ cloudAgentSessionId: id });
    expect(first.status).toBe(ExecutionStatus.STARTED);
    const q1 = await alice.sendMessage({ cloudAgentSessionId: id, prompt: "queued one" });
    const q2 = await alice.sendMessage({ cloudAgentSessionId: id, prompt: "queued two" });
    expect([q1.status, q2.status]).toEqual([ExecutionStatus.QUEUED, ExecutionStatus.QUEUED]);

    const err = await connectErrorOf(alice.sendMessage({ cloudAgentSessionId: id, prompt: "refused one" }));
    expect(err.code).toBe(Code.ResourceExhausted);
    expect(err.rawMessage).toBe("the session's queue is full (2 messages waiting); wait for one to finish");
    const info = (await alice.getSession({ cloudAgentSessionId: id })).session!;
    expect(info.runningExecution?.executionId).toBe(first.executionId);
    expect(info.queueLength).toBe(2);

    // Nothing stored for it: no row now, and after the queue drained only the three ran.
    const { rows: refused } = await stack.db.query(
      "SELECT id FROM session.executions WHERE session_id = $1 AND prompt = 'refused one'",
      [id],
    );
    expect(refused).toEqual([]);
    const events = await readUntilTerminals(stack.stream("alice"), { cloudAgentSessionId: id }, 3);
    const order = [first.executionId, q1.executionId, q2.executionId];
    expect(blocksOf(events)).toEqual(order);
    expect(events.filter((e) => e.payload.case === "complete").map((e) => e.executionId)).toEqual(order);
    await expect
      .poll(async () => (await executions(stack, id)).map((r) => r.status))
      .toEqual(["completed", "completed", "completed"]);
    // With the queue empty again, a message is accepted.
    const after = await alice.sendMessage({ cloudAgentSessionId: id, prompt: "accepted again" });
    expect(after.status).toBe(ExecutionStatus.STARTED);
    await readUntilTerminals(
      stack.stream("alice"),
      { cloudAgentSessionId: id, executionIds: [after.executionId] },
      1,
    );
  });

  it("GetSession shows the running execution HEALTHY while its heartbeats flow", async () => {
    const alice = stack.sessions("alice");
    const { cloudAgentSessionId: id } = await prepareSession(alice);
    const { executionId } = await alice.initiateSession({ cloudAgentSessionId: id });
    await firstEvent(stack, id, (e) => e.payload.case === "kilocode");
    // kilo runs for ~2.4 s from here; heartbeats every 300 ms, STALE after 1.5 s without one.
    const beats = new Set<number>();
    const deadline = Date.now() + 1_800;
    while (Date.now() < deadline) {
      const running = (await alice.getSession({ cloudAgentSessionId: id })).session?.runningExecution;
      if (!running) break;
      expect(running.executionId).toBe(executionId);
      expect(running.health).toBe(ExecutionHealth.HEALTHY);
      beats.add(timestampDate(running.lastHeartbeatAt!).getTime());
      expect(timestampDate(running.lastHeartbeatAt!).getTime()).toBeGreaterThanOrEqual(
        timestampDate(running.startedAt!).getTime(),
      );
      await sleep(200);
    }
    // The heartbeat time moved on while we watched: heartbeats did flow.
    expect(beats.size).toBeGreaterThanOrEqual(3);
    const events = await readUntilTerminals(stack.stream("alice"), { cloudAgentSessionId: id }, 1);
    expect(events.filter((e) => e.payload.case === "heartbeat").length).toBeGreaterThanOrEqual(3);
    expect(events.at(-1)?.payload.case).toBe("complete");
  });

  it("InterruptSession ends the running execution with `interrupted`; the next one starts; a second is a no-op", async () => {
    const alice = stack.sessions("alice");
    const { cloudAgentSessionId: id } = await prepareSession(alice);
    const first = await alice.initiateSession({ cloudAgentSessionId: id });
    // kilo (the replayer) is running once its first line is on the stream.
    await firstEvent(stack, id, (e) => e.payload.case === "kilocode");
    const next = await alice.sendMessage({ cloudAgentSessionId: id, prompt: "after the interrupt" });
    expect(next.status).toBe(ExecutionStatus.QUEUED);

    const res = await alice.interruptSession({ cloudAgentSessionId: id });
    expect(res.success).toBe(true);
    expect(res.killedProcessIds.length).toBeGreaterThanOrEqual(1);
    for (const pid of res.killedProcessIds) expect(pid).toMatch(/^proc_\d+$/);
    expect(res.failedProcessIds).toEqual([]);
    expect(res.message).toBe(`Interrupted execution: killed ${res.killedProcessIds.length} process(es)`);

    const events = await readUntilTerminals(stack.stream("alice"), { cloudAgentSessionId: id }, 2);
    expect(blocksOf(events)).toEqual([first.executionId, next.executionId]);
    const ends = events.filter(isTerminal).map((e) => [e.executionId, e.payload.case]);
    expect(ends).toEqual([
      [first.executionId, "interrupted"],
      [next.executionId, "complete"],
    ]);
    // The next one really ran kilo.
    expect(countBy(events, isKiloStatus).get(next.executionId)).toBe(1);
    await expect
      .poll(async () => (await executions(stack, id)).map((r) => [r.id, r.status]))
      .toEqual([
        [first.executionId, "interrupted"],
        [next.executionId, "completed"],
      ]);

    // Nothing runs now: interrupting again succeeds and kills nothing.
    const again = await alice.interruptSession({ cloudAgentSessionId: id });
    expect(again.success).toBe(true);
    expect(again.killedProcessIds).toEqual([]);
    expect(again.failedProcessIds).toEqual([]);
    expect(again.message).toBe("No running execution to interrupt");
  });
});

describe("queue expiry (kilo replayer, 1 s per line; messages expire after 1.5 s)", {
  timeout: 60_000,
}, () => {
  let stack: FullStack;
  beforeAll(async () => {
    stack = await startFullStack({
      kilo: { replay: REPLAY, lineDelayMs: 1_000 },
      dispatcher: { queueExpiryMs: 1_500 },
    });
    await stack.login("alice");
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  it("a message that waited longer than the expiry becomes `expired` with an error event, and never runs", async () => {
    const alice = stack.sessions("alice");
    const { cloudAgentSessionId: id } = await prepareSession(alice);
    const first = await alice.initiateSession({ cloudAgentSessionId: id });
    await firstEvent(stack, id, (e) => e.executionId === first.executionId && isKiloStatus(e));
    const waiting = await alice.sendMessage({ cloudAgentSessionId: id, prompt: "too late" });
    expect(waiting.status).toBe(ExecutionStatus.QUEUED);

    const error = await firstEvent(
      stack,
      id,
      (e) => e.executionId === waiting.executionId && e.payload.case === "error",
    );
    expect(error.payload.case === "error" && error.payload.value.error).toMatch(
      /waited longer than .* in the queue and expired/,
    );
    expect(await statusOf(stack, waiting.executionId)).toBe("expired");
    // The first one is still running meanwhile, and the queue is empty.
    const info = (await alice.getSession({ cloudAgentSessionId: id })).session!;
    expect(info.runningExecution?.executionId).toBe(first.executionId);
    expect(info.queueLength).toBe(0);

    // After the first completes, the expired one is not started.
    const events = await readUntilTerminals(stack.stream("alice"), { cloudAgentSessionId: id }, 2);
    const ofWaiting = events.filter((e) => e.executionId === waiting.executionId);
    expect(ofWaiting.map((e) => e.payload.case)).toEqual(["error"]);
    expect(events.filter(isTerminal).map((e) => [e.executionId, e.payload.case])).toEqual([
      [waiting.executionId, "error"],
      [first.executionId, "complete"],
    ]);
    await expect.poll(() => statusOf(stack, first.executionId)).toBe("completed");
    await sleep(1_000);
    expect(await statusOf(stack, waiting.executionId)).toBe("expired");
    const { rows } = await stack.db.query<{ error_message: string }>(
      "SELECT error_message FROM session.executions WHERE id = $1",
      [waiting.executionId],
    );
    expect(rows[0]?.error_message).toMatch(/expired/);
  });
});

describe("the reaper (kilo replayer, 1 s per line; no heartbeats)", { timeout: 60_000 }, () => {
  let stack: FullStack;
  beforeAll(async () => {
    stack = await startFullStack({
      kilo: { replay: REPLAY, lineDelayMs: 1_000 },
      runner: { heartbeatIntervalMs: 3_600_000 },
      dispatcher: { staleAfterMs: 2_000 },
      queue: { heartbeatStaleMs: 500 },
    });
    await stack.login("alice");
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  it("shows STALE, then fails the silent execution with an error event and starts the next", async () => {
    const alice = stack.sessions("alice");
    const { cloudAgentSessionId: id } = await prepareSession(alice);
    const first = await alice.initiateSession({ cloudAgentSessionId: id });
    const next = await alice.sendMessage({ cloudAgentSessionId: id, prompt: "after the reaped one" });
    expect(next.status).toBe(ExecutionStatus.QUEUED);

    // No heartbeat for more than 0.5 s: STALE (the reaper acts only after 2 s).
    await expect
      .poll(
        async () => {
          const r = (await alice.getSession({ cloudAgentSessionId: id })).session?.runningExecution;
          return r && [r.executionId, r.health];
        },
        { timeout: 5_000, interval: 100 },
      )
      .toEqual([first.executionId, ExecutionHealth.STALE]);

    const error = await firstEvent(
      stack,
      id,
      (e) => e.executionId === first.executionId && e.payload.case === "error",
    );
    expect(error.payload.case === "error" && error.payload.value.error).toBe(
      "no heartbeat from the execution for 2 s; it was marked failed",
    );
    const rows = await executions(stack, id);
    expect(rows[0]).toMatchObject({ id: first.executionId, status: "failed" });
    expect(rows[0]?.error_message).toMatch(/no heartbeat/);

    // The next message starts (kilo runs for it), and only after the reaper's error event.
    const seen: Event[] = [];
    await firstEvent(stack, id, (e) => {
      seen.push(e);
      return e.executionId === next.executionId && isKiloStatus(e);
    });
    const firstOfNext = seen.findIndex((e) => e.executionId === next.executionId);
    expect(seen.findIndex((e) => e.id === error.id)).toBeLessThan(firstOfNext);
    expect(await statusOf(stack, next.executionId)).not.toBe("queued");
    // The reaped run was stopped; it may still report its own end (`interrupted`, or an
    // `error` if it was cut during the clone) after the reaper's, which changes nothing.
    await expect.poll(() => statusOf(stack, first.executionId)).toBe("failed");
  });
});
