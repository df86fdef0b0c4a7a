import { randomBytes, randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { connectNodeAdapter, createConnectTransport } from "@connectrpc/connect-node";
import { JetStreamEventLog } from "@kilo-cloud/common";
import { EventSchema, OutputSource, StreamService } from "@kilo-cloud/proto";
import { startNats, type TestNats } from "@kilo-cloud/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StreamSlots } from "../src/handlers/stream-slots.js";
import { createStreamTickets } from "../src/handlers/stream-tickets.js";
import { STREAM_HANDLER_OPTIONS, subscribeHandler } from "../src/handlers/subscribe.js";

/**
 * A client that stops reading must not hold up anyone else, and once it falls too far
 * behind the live events it is told so, with the id to resume from; resuming from there
 * loses and repeats nothing. Real JetStream, a real Connect server over HTTP.
 */

const EVENTS = 8_000;
const MAX_LAG = 500;

describe("Subscribe with a stalled client", () => {
  let nats: TestNats;
  let log: JetStreamEventLog;
  let server: Server;
  let baseUrl: string;
  const tickets = createStreamTickets(randomBytes(32).toString("hex"));

  beforeAll(async () => {
    nats = await startNats();
    log = await JetStreamEventLog.connect({ servers: nats.url });
    const handler = connectNodeAdapter({
      routes: (router) =>
        router.service(
          StreamService,
          {
            subscribe: subscribeHandler({
              events: log,
              tickets,
              verifyUser: () => Promise.reject(new Error("tickets only")),
              checkOwner: () => Promise.reject(new Error("tickets only")),
              keepaliveMs: 60_000,
              maxLagEvents: MAX_LAG,
              slots: new StreamSlots(100),
            }),
          },
          STREAM_HANDLER_OPTIONS,
        ),
    });
    server = createServer(handler);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server?.closeAllConnections();
    await new Promise((r) => server?.close(r));
    await log?.close();
    await nats?.[Symbol.asyncDispose]();
  });

  it("keeps others live, ends the stalled one with RESOURCE_EXHAUSTED and a fromId that resumes exactly", async () => {
    const sid = `agent_${randomUUID()}`;
    const client = createClient(StreamService, createConnectTransport({ baseUrl, httpVersion: "1.1" }));
    const ticket = async () => (await tickets.issue({ userId: "u", cloudAgentSessionId: sid })).ticket;
    const big = "x".repeat(2_000);
    const publish = (i: number) =>
      log.publish({
        event: create(EventSchema, {
          cloudAgentSessionId: sid,
          executionId: "exec_1",
          timestamp: timestampNow(),
          payload: { case: "output", value: { content: `${i} ${big}`, source: OutputSource.STDOUT } },
        }),
        msgId: `exec_1:${sid}:${i}`,
      });
    const indexOf = (content: string) => Number(content.slice(0, content.indexOf(" ")));
    await publish(0);

    // The stalled client reads the first event (it is live then) and stops reading.
    const stalled = client
      .subscribe({ cloudAgentSessionId: sid, ticket: await ticket() })
      [Symbol.asyncIterator]();
    const first = await stalled.next();
    expect(first.value?.event?.id).toBeGreaterThan(0n);

    // A client that keeps reading gets everything while the other one is stalled.
    const steady: number[] = [];
    const abortSteady = new AbortController();
    const steadyDone = (async () => {
      for await (const res of client.subscribe(
        { cloudAgentSessionId: sid, ticket: await ticket(), batch: true },
        { signal: abortSteady.signal },
      )) {
        for (const e of res.events)
          if (e.payload.case === "output") steady.push(indexOf(e.payload.value.content));
        if (steady.length === EVENTS) return;
      }
    })();
    const pending = [];
    for (let i = 1; i < EVENTS; i++) pending.push(publish(i));
    await Promise.all(pending);
    await steadyDone;
    expect(steady).toEqual(Array.from({ length: EVENTS }, (_, i) => i));

    // The stalled client now reads on: what was already under way, then the error.
    const got: { id: bigint; i: number }[] = [];
    let error: ConnectError | undefined;
    try {
      for (let r = await stalled.next(); !r.done; r = await stalled.next()) {
        const e = r.value.event;
        if (e?.payload.case === "output") got.push({ id: e.id, i: indexOf(e.payload.value.content) });
      }
    } catch (err) {
      error = ConnectError.from(err);
    }
    expect(error?.code).toBe(Code.ResourceExhausted);
    const lastId = got.at(-1)?.id ?? first.value!.event!.id;
    expect(error?.rawMessage).toContain(`fromId=${lastId}`);
    expect(got.length).toBeLessThan(EVENTS - 1);

    // Resuming from there delivers the rest, nothing lost, nothing twice.
    const resumed: number[] = [];
    for await (const res of client.subscribe({
      cloudAgentSessionId: sid,
      ticket: await ticket(),
      fromId: lastId,
      batch: true,
    })) {
      for (const e of res.events)
        if (e.payload.case === "output") resumed.push(indexOf(e.payload.value.content));
      if ((got.at(-1)?.i ?? 0) + resumed.length >= EVENTS - 1) break;
    }
    expect([0, ...got.map((g) => g.i), ...resumed]).toEqual(Array.from({ length: EVENTS }, (_, i) => i));
    abortSteady.abort();
  }, 120_000);
});
