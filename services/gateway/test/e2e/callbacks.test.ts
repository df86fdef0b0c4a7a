import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { Code } from "@connectrpc/connect";
import { CallbackDeliveryStatus } from "@kilo-cloud/proto";
import { generateWebhookSecret } from "@kilo-cloud/session";
import { Webhook } from "standardwebhooks";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FullStack, startFullStack } from "../support/full-stack.js";
import { prepareSession, readUntilTerminals, subscribe } from "./helpers.js";

/**
 * Completion callbacks end to end: a terminal status recorded by the session service goes
 * through the callback outbox and a real CallbackSender (Standard Webhooks POST, safeFetch;
 * the outbox's retry schedule shortened to milliseconds) to a receiver on loopback, which
 * verifies every request with the `standardwebhooks` library. The deployment policy of this stack allows http and loopback
 * targets (the proto accepts http URLs; the policy decides).
 *
 * The agent binary is the KILO REPLAYER (packages/testing/src/kilo-replayer.ts), a
 * stand-in that prints captured real kilo output. It always exits 0, even when replaying a
 * captured failure such as stream-error-401.jsonl, so the failed run here comes from a
 * failing setup command on a session's first execution (which ends it with an `error`).
 */

const SECRET = generateWebhookSecret();
/** Delays between attempts: four attempts in all. */
const RETRY_SCHEDULE_MS = [100, 200, 300];
/** An answer the receiver never sends: it holds the request open. */
const HANG = 0;

interface Delivery {
  headers: IncomingHttpHeaders;
  body: string;
  json: Record<string, unknown>;
  answered: number;
}

/** A plain HTTP server on 127.0.0.1 that records every POST and answers as scripted. */
class Receiver {
  readonly deliveries: Delivery[] = [];
  /** Statuses to answer, per session id, before answering 200. */
  readonly script = new Map<string, number[]>();
  private server!: Server;
  url = "";

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        let json: Record<string, unknown> = {};
        try {
          json = JSON.parse(body) as Record<string, unknown>;
        } catch {}
        const status = this.script.get(String(json.cloudAgentSessionId))?.shift() ?? 200;
        this.deliveries.push({ headers: req.headers, body, json, answered: status });
        if (status === HANG) return;
        res.writeHead(status, { "content-type": "text/plain" }).end(status === 200 ? "ok" : "busy");
      });
    });
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/hooks/kilo`;
  }

  of(executionId: string): Delivery[] {
    return this.deliveries.filter((d) => d.json.executionId === executionId);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

describe("completion callbacks (Standard Webhooks; kilo replayer, 150 ms per line)", {
  timeout: 120_000,
}, () => {
  let stack: FullStack;
  const receiver = new Receiver();
  beforeAll(async () => {
    await receiver.start();
    stack = await startFullStack({
      kilo: { replay: "stream-write-tool.jsonl", lineDelayMs: 150 },
      callbackSender: { secret: SECRET, retryScheduleMs: RETRY_SCHEDULE_MS, timeoutMs: 30_000 },
    });
    await stack.login("alice");
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
    await receiver.close();
  });

  /** A session whose callbacks go to the receiver (with the receiver's own auth header). */
  const prepare = (extra: Parameters<typeof prepareSession>[1] = {}) =>
    prepareSession(stack.sessions("alice"), {
      callbackTarget: { url: receiver.url, headers: { authorization: "Bearer receiver-secret" } },
      ...extra,
    });

  /** Waits for the callback(s) of an execution, then a little longer to see no more come. */
  async function deliveriesOf(executionId: string, count = 1): Promise<Delivery[]> {
    await expect
      .poll(() => receiver.of(executionId).length, { timeout: 15_000 })
      .toBeGreaterThanOrEqual(count);
    await sleep(500);
    return receiver.of(executionId);
  }

  function expectSigned(d: Delivery): void {
    const headers = {
      "webhook-id": String(d.headers["webhook-id"]),
      "webhook-timestamp": String(d.headers["webhook-timestamp"]),
      "webhook-signature": String(d.headers["webhook-signature"]),
    };
    // The receiver's off-the-shelf verifier accepts it…
    expect(new Webhook(SECRET).verify(d.body, headers)).toEqual(JSON.parse(d.body));
    // …and it is bound to the secret, the body, the id and the timestamp.
    expect(() => new Webhook(generateWebhookSecret()).verify(d.body, headers)).toThrow();
    expect(() =>
      new Webhook(SECRET).verify(d.body.replace(/"status":"\w+"/, '"status":"x"'), headers),
    ).toThrow();
    expect(() => new Webhook(SECRET).verify(d.body, { ...headers, "webhook-id": "msg_other" })).toThrow();
    expect(() =>
      new Webhook(SECRET).verify(d.body, {
        ...headers,
        "webhook-timestamp": String(Number(headers["webhook-timestamp"]) + 1),
      }),
    ).toThrow();
    expect(d.headers["content-type"]).toBe("application/json");
    expect(d.headers["user-agent"]).toBe("kilo-cloud-agent");
    expect(d.headers["webhook-id"]).toBe(`msg_${d.json.executionId}`);
    expect(d.headers.authorization).toBe("Bearer receiver-secret");
  }

  /** The session's deliveries as the backend sees them (ListCallbackDeliveries). */
  async function listed(cloudAgentSessionId: string) {
    return (await stack.sessions("alice").listCallbackDeliveries({ cloudAgentSessionId })).deliveries;
  }

  async function recorded(executionId: string) {
    const { rows } = await stack.db.query<{ status: string; last_error: string | null }>(
      "SELECT status, last_error FROM session.callback_deliveries WHERE execution_id = $1",
      [executionId],
    );
    return rows;
  }

  it("completed: exactly one signed POST per execution, with the documented body", async () => {
    const alice = stack.sessions("alice");
    const { cloudAgentSessionId, kiloSessionId } = await prepare();
    const first = await alice.initiateSession({ cloudAgentSessionId });
    const second = await alice.sendMessage({ cloudAgentSessionId, prompt: "and another" });
    await readUntilTerminals(stack.stream("alice"), { cloudAgentSessionId }, 2);

    for (const { executionId } of [first, second]) {
      const got = await deliveriesOf(executionId);
      expect(got).toHaveLength(1);
      const d = got[0]!;
      expect(JSON.parse(d.body)).toEqual({
        cloudAgentSessionId,
        kiloSessionId,
        executionId,
        status: "completed",
        branch: `session/${cloudAgentSessionId}`,
      });
      expectSigned(d);
      expect(d.answered).toBe(200);
      await expect.poll(() => recorded(executionId)).toEqual([{ status: "delivered", last_error: null }]);
    }
    expect(receiver.of(first.executionId)[0]!.headers["webhook-id"]).not.toBe(
      receiver.of(second.executionId)[0]!.headers["webhook-id"],
    );
  });

  it("retried after a 503: two requests with the same webhook id, one delivery recorded", async () => {
    const alice = stack.sessions("alice");
    const { cloudAgentSessionId } = await prepare();
    receiver.script.set(cloudAgentSessionId, [503]);
    const { executionId } = await alice.initiateSession({ cloudAgentSessionId });
    await readUntilTerminals(stack.stream("alice"), { cloudAgentSessionId }, 1);

    const got = await deliveriesOf(executionId, 2);
    expect(got.map((d) => d.answered)).toEqual([503, 200]);
    expect(got[1]!.headers["webhook-id"]).toBe(got[0]!.headers["webhook-id"]);
    expect(got[1]!.body).toBe(got[0]!.body);
    for (const d of got) expectSigned(d);
    expect(got[0]!.json.status).toBe("completed");
    await expect.poll(() => recorded(executionId)).toEqual([{ status: "delivered", last_error: null }]);
  });

  it("failed: an execution that ends in an error is reported failed with its message", async () => {
    const alice = stack.sessions("alice");
    const { cloudAgentSessionId, kiloSessionId } = await prepare({
      setupCommands: { values: ["echo preparing; exit 3"] },
    });
    const { executionId } = await alice.initiateSession({ cloudAgentSessionId });
    const events = await readUntilTerminals(stack.stream("alice"), { cloudAgentSessionId }, 1);
    expect(events.at(-1)?.payload.case).toBe("error");

    const got = await deliveriesOf(executionId);
    expect(got).toHaveLength(1);
    expect(JSON.parse(got[0]!.body)).toEqual({
      cloudAgentSessionId,
      kiloSessionId,
      executionId,
      status: "failed",
      errorMessage: "setup command failed with exit code 3: echo preparing; exit 3",
      branch: `session/${cloudAgentSessionId}`,
    });
    expectSigned(got[0]!);
    await expect.poll(() => recorded(executionId)).toEqual([{ status: "delivered", last_error: null }]);
  });

  it("interrupted: an interrupted execution is reported interrupted", async () => {
    const alice = stack.sessions("alice");
    const { cloudAgentSessionId } = await prepare();
    const { executionId } = await alice.initiateSession({ cloudAgentSessionId });
    for await (const res of subscribe(stack.stream("alice"), { cloudAgentSessionId })) {
      if (res.event?.payload.case === "kilocode") break;
    }
    const res = await alice.interruptSession({ cloudAgentSessionId });
    expect(res.success).toBe(true);
    expect(res.killedProcessIds.length).toBeGreaterThanOrEqual(1);
    const events = await readUntilTerminals(stack.stream("alice"), { cloudAgentSessionId }, 1);
    expect(events.at(-1)?.payload.case).toBe("interrupted");

    const got = await deliveriesOf(executionId);
    expect(got).toHaveLength(1);
    expect(got[0]!.json).toMatchObject({
      cloudAgentSessionId,
      executionId,
      status: "interrupted",
      errorMessage: "interrupted by the user",
    });
    expectSigned(got[0]!);
  });

  it("a receiver that fails for a while and then recovers gets the delivery", async () => {
    const alice = stack.sessions("alice");
    const { cloudAgentSessionId } = await prepare();
    receiver.script.set(cloudAgentSessionId, [503, 500, 429]);
    const { executionId } = await alice.initiateSession({ cloudAgentSessionId });
    await readUntilTerminals(stack.stream("alice"), { cloudAgentSessionId }, 1);

    const got = await deliveriesOf(executionId, 4);
    expect(got.map((d) => d.answered)).toEqual([503, 500, 429, 200]);
    for (const d of got) expectSigned(d);
    await expect
      .poll(async () =>
        (await listed(cloudAgentSessionId)).map((d) => [d.status, d.attempts, d.lastHttpStatus]),
      )
      .toEqual([[CallbackDeliveryStatus.DELIVERED, 4, 200]]);
  });

  it("a delivery that exhausts its retries is kept, listed with why, and can be redelivered", async () => {
    const alice = stack.sessions("alice");
    const { cloudAgentSessionId } = await prepare();
    receiver.script.set(cloudAgentSessionId, [503, 503, 503, 503]);
    const { executionId } = await alice.initiateSession({ cloudAgentSessionId });
    await readUntilTerminals(stack.stream("alice"), { cloudAgentSessionId }, 1);

    await expect
      .poll(async () => (await listed(cloudAgentSessionId))[0]?.status, { timeout: 15_000 })
      .toBe(CallbackDeliveryStatus.FAILED);
    const [failed] = await listed(cloudAgentSessionId);
    expect(failed).toMatchObject({
      executionId,
      webhookId: `msg_${executionId}`,
      attempts: 4,
      lastHttpStatus: 503,
      lastError: expect.stringMatching(/^127\.0\.0\.1:\d+ answered HTTP 503$/),
    });
    expect(receiver.of(executionId)).toHaveLength(4);

    // The backend asks for it again; the receiver is back (it answers 200 from now on).
    const { delivery } = await alice.redeliverCallback({ cloudAgentSessionId, executionId });
    expect(delivery?.status).toBe(CallbackDeliveryStatus.PENDING);
    const got = await deliveriesOf(executionId, 5);
    expect(got.map((d) => d.answered)).toEqual([503, 503, 503, 503, 200]);
    expect(new Set(got.map((d) => d.headers["webhook-id"])).size).toBe(1);
    await expect
      .poll(async () => (await listed(cloudAgentSessionId)).map((d) => [d.status, d.attempts]))
      .toEqual([[CallbackDeliveryStatus.DELIVERED, 1]]);
  });

  it("a receiver that never answers does not delay another session's callback", async () => {
    const alice = stack.sessions("alice");
    const slow = await prepare();
    receiver.script.set(slow.cloudAgentSessionId, [HANG, HANG, HANG, HANG]);
    const fast = await prepare();
    const slowRun = await alice.initiateSession({ cloudAgentSessionId: slow.cloudAgentSessionId });
    await readUntilTerminals(stack.stream("alice"), { cloudAgentSessionId: slow.cloudAgentSessionId }, 1);
    await expect.poll(() => receiver.of(slowRun.executionId).length).toBe(1);

    // The slow receiver holds its request open (30 s timeout per attempt); this one is
    // delivered meanwhile.
    const fastRun = await alice.initiateSession({ cloudAgentSessionId: fast.cloudAgentSessionId });
    await readUntilTerminals(stack.stream("alice"), { cloudAgentSessionId: fast.cloudAgentSessionId }, 1);
    await expect
      .poll(() => receiver.of(fastRun.executionId).map((d) => d.answered), { timeout: 6_000 })
      .toEqual([200]);
    expect(receiver.of(slowRun.executionId).map((d) => d.answered)).toEqual([HANG]);
  });

  it("another user's session: listing and redelivery answer NOT_FOUND", async () => {
    const { cloudAgentSessionId } = await prepare();
    await stack.login("mallory");
    await expect(
      stack.sessions("mallory").listCallbackDeliveries({ cloudAgentSessionId }),
    ).rejects.toMatchObject({
      code: Code.NotFound,
    });
    await expect(
      stack.sessions("mallory").redeliverCallback({ cloudAgentSessionId, executionId: "exec_x" }),
    ).rejects.toMatchObject({ code: Code.NotFound });
  });

  it("over all of the above: one webhook id per execution, each request signed", () => {
    const byExecution = new Map<string, Set<string>>();
    for (const d of receiver.deliveries) {
      const id = String(d.json.executionId);
      byExecution.set(id, (byExecution.get(id) ?? new Set()).add(String(d.headers["webhook-id"])));
      expectSigned(d);
    }
    expect(byExecution.size).toBeGreaterThanOrEqual(8);
    for (const ids of byExecution.values()) expect(ids.size).toBe(1);
  });
});
