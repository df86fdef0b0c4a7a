import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { type Event, EventType, StreamService } from "@kilo-cloud/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FullStack, startFullStack } from "../support/full-stack.js";
import {
  connectErrorOf,
  prepareSession,
  readUntilIdle,
  readUntilTerminals,
  type SubscribeInit,
  subscribe,
  subscribeCode,
} from "./helpers.js";

/**
 * StreamService.Subscribe end to end on the real event log (JetStream): resuming below
 * the retained range, keep-alives on an idle stream, and the execution and type filters.
 *
 * The agent binary is the KILO REPLAYER (packages/testing/src/kilo-replayer.ts), a
 * stand-in that prints captured real kilo output; gateway, session service, sandbox-manager
 * (bwrap), git, Postgres and NATS are real.
 */

const ids = (events: Event[]) => events.map((e) => e.id);

describe("Subscribe (kilo replayer)", { timeout: 120_000 }, () => {
  let stack: FullStack;
  beforeAll(async () => {
    stack = await startFullStack({
      kilo: { replay: "stream-write-tool.jsonl", lineDelayMs: 0 },
      keepaliveMs: 300,
    });
    await stack.login("alice");
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  /** A session with `n` executions that all ran; returns its id, executions and events. */
  async function sessionWithRuns(n: number) {
    const alice = stack.sessions("alice");
    const { cloudAgentSessionId } = await prepareSession(alice);
    const executions = [(await alice.initiateSession({ cloudAgentSessionId })).executionId];
    for (let i = 1; i < n; i++) {
      executions.push((await alice.sendMessage({ cloudAgentSessionId, prompt: `message ${i}` })).executionId);
    }
    const events = await readUntilTerminals(stack.stream("alice"), { cloudAgentSessionId }, n);
    return { cloudAgentSessionId, executions, events };
  }

  it("a fromId below the retained range is OUT_OF_RANGE, never a silent skip; at or after it works", async () => {
    const { cloudAgentSessionId, events } = await sessionWithRuns(2);
    expect(events.length).toBeGreaterThan(12);
    const stream = stack.stream("alice");
    const read = (req: Omit<SubscribeInit, "cloudAgentSessionId">) =>
      readUntilIdle(stream, { cloudAgentSessionId, ...req });

    // Retention drops everything before the 6th event of the session.
    const cut = events[5]!.id;
    expect(await stack.purgeEvents(cut)).toBe(cut);

    // A client whose last event was the 4th (or earlier) missed events that are gone.
    for (const fromId of [events[3]!.id, events[0]!.id, 1n]) {
      expect(await subscribeCode(stream, { cloudAgentSessionId, fromId }), `fromId ${fromId}`).toBe(
        Code.OutOfRange,
      );
    }
    const err = await connectErrorOf(
      (async () => {
        for await (const _ of subscribe(stream, { cloudAgentSessionId, fromId: events[3]!.id })) break;
      })(),
    );
    expect(err.code).toBe(Code.OutOfRange);
    expect(err.rawMessage).toBe(
      `fromId ${events[3]!.id} is older than the retained events (the oldest retained id is ${cut}); replay from a later id or from the start`,
    );
    // The same through a stream ticket.
    const { ticket } = await stack.sessions("alice").createStreamTicket({ cloudAgentSessionId });
    expect(await subscribeCode(stack.stream(), { cloudAgentSessionId, ticket, fromId: 1n })).toBe(
      Code.OutOfRange,
    );

    // Its last event (the 5th) is gone, but nothing after it: it resumes at the oldest retained.
    expect(ids(await read({ fromId: events[4]!.id }))).toEqual(ids(events.slice(5)));
    // At and after the oldest retained id.
    expect(ids(await read({ fromId: cut }))).toEqual(ids(events.slice(6)));
    expect(ids(await read({ fromId: events[9]!.id }))).toEqual(ids(events.slice(10)));
    // At the end: nothing stored after it (only keep-alives).
    expect(await read({ fromId: events.at(-1)!.id })).toEqual([]);
    // Without fromId: from the oldest retained.
    expect(ids(await read({}))).toEqual(ids(events.slice(5)));
  });

  it("an idle Subscribe receives keep-alive messages", async () => {
    const alice = stack.sessions("alice");
    // Prepared, not initiated: nothing will be published for it.
    const { cloudAgentSessionId } = await prepareSession(alice);
    const { ticket } = await alice.createStreamTicket({ cloudAgentSessionId });
    for (const [stream, req] of [
      [stack.stream("alice"), { cloudAgentSessionId }],
      [stack.stream(), { cloudAgentSessionId, ticket }],
    ] as const) {
      const arrivals: number[] = [];
      const t0 = Date.now();
      for await (const res of subscribe(stream, req, { timeoutMs: 10_000 })) {
        expect(res.event).toBeUndefined();
        expect(res.keepalive).toBe(true);
        arrivals.push(Date.now() - t0);
        if (arrivals.length === 4) break;
      }
      // One about every 300 ms (generous bounds: the machine may be busy).
      expect(arrivals[0]).toBeGreaterThanOrEqual(250);
      for (let i = 1; i < arrivals.length; i++) {
        expect(arrivals[i]! - arrivals[i - 1]!).toBeGreaterThanOrEqual(250);
      }
      expect(arrivals.at(-1)).toBeLessThan(5_000);
    }
  });

  it("filters by event type and by execution, on stored and on live events", async () => {
    const {
      cloudAgentSessionId,
      executions: [first, second],
      events,
    } = await sessionWithRuns(2);
    const read = (req: Omit<SubscribeInit, "cloudAgentSessionId">) =>
      readUntilIdle(stack.stream("alice"), { cloudAgentSessionId, ...req });
    const where = (pred: (e: Event) => boolean) => ids(events.filter(pred));
    expect(new Set(events.map((e) => e.executionId))).toEqual(new Set([first, second]));

    expect(ids(await read({ executionIds: [second!] }))).toEqual(where((e) => e.executionId === second));
    expect(ids(await read({ executionIds: [first!, second!] }))).toEqual(ids(events));
    expect(ids(await read({ eventTypes: [EventType.STATUS] }))).toEqual(
      where((e) => e.payload.case === "status"),
    );
    expect(ids(await read({ eventTypes: [EventType.KILOCODE, EventType.COMPLETE] }))).toEqual(
      where((e) => e.payload.case === "kilocode" || e.payload.case === "complete"),
    );
    const firstEnd = await read({
      executionIds: [first!],
      eventTypes: [EventType.COMPLETE, EventType.ERROR],
    });
    expect(firstEnd.map((e) => [e.executionId, e.payload.case])).toEqual([[first, "complete"]]);
    // Types that did not occur, or an execution of no one: nothing (keep-alives only).
    expect(await read({ eventTypes: [EventType.INTERRUPTED, EventType.ERROR] })).toEqual([]);
    expect(await read({ executionIds: ["exec_00000000-0000-4000-8000-000000000000"] })).toEqual([]);

    // Live: a subscriber waiting for the next execution's end only.
    const last = events.at(-1)!.id;
    const alice = stack.sessions("alice");
    const third = await alice.sendMessage({ cloudAgentSessionId, prompt: "the third" });
    const live = await readUntilTerminals(
      stack.stream("alice"),
      {
        cloudAgentSessionId,
        fromId: last,
        executionIds: [third.executionId],
        eventTypes: [EventType.COMPLETE, EventType.ERROR, EventType.INTERRUPTED],
      },
      1,
    );
    expect(live.map((e) => [e.executionId, e.payload.case])).toEqual([[third.executionId, "complete"]]);
    const all = await read({ fromId: last });
    expect(all.filter((e) => e.payload.case === "complete").map((e) => e.id)).toEqual(ids(live));
    expect(new Set(all.map((e) => e.executionId))).toEqual(new Set([third.executionId]));
  });

  it("batched, JSON and one-per-message streams deliver the same events, filters included", async () => {
    const { cloudAgentSessionId, executions, events } = await sessionWithRuns(2);
    const alice = stack.sessions("alice");
    const json = createClient(
      StreamService,
      createConnectTransport({ baseUrl: stack.gatewayUrl, httpVersion: "1.1", useBinaryFormat: false }),
    );
    const ticket = async () => (await alice.createStreamTicket({ cloudAgentSessionId })).ticket;
    const binary = stack.stream("alice");
    const all = { cloudAgentSessionId };
    const one = { cloudAgentSessionId, executionIds: [executions[1]!], eventTypes: [EventType.KILOCODE] };

    // Batches really carry several events while a backlog exists (a stored replay).
    let largest = 0;
    for await (const res of subscribe(binary, { ...all, batch: true }, { timeoutMs: 30_000 })) {
      largest = Math.max(largest, res.events.length);
      expect(res.event).toBeUndefined();
      if (largest > 1 || res.keepalive) break;
    }
    expect(largest).toBeGreaterThan(1);

    for (const filter of [all, one]) {
      const expected =
        filter === all
          ? events
          : events.filter((e) => e.executionId === executions[1] && e.payload.case === "kilocode");
      expect(expected.length).toBeGreaterThan(0);
      expect(await readUntilIdle(binary, filter)).toEqual(expected);
      expect(await readUntilIdle(binary, { ...filter, batch: true })).toEqual(expected);
      expect(await readUntilIdle(json, { ...filter, ticket: await ticket() })).toEqual(expected);
      expect(await readUntilIdle(json, { ...filter, batch: true, ticket: await ticket() })).toEqual(expected);
    }
  });
});
