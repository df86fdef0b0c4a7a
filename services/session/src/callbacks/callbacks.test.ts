import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { createLogger, type OutboundPolicy } from "@kilo-cloud/common";
import { Webhook } from "standardwebhooks";
import { afterEach, describe, expect, it } from "vitest";
import { type AttemptResult, CallbackSender, type CallbackSenderDeps } from "./callbacks.js";
import { DEFAULT_RETRY_SCHEDULE_MS, nextRetryDelayMs, parseRetrySchedule } from "./retry-schedule.js";
import { generateWebhookSecret, receiverSecret, webhookId } from "./standard-webhooks.js";

const SECRET = generateWebhookSecret();
/** A plain secret of ≥ 32 bytes (older deployments): receivers get its whsec_ form. */
const PLAIN_SECRET = "test-signing-secret-0123456789abcdef";
const ID = webhookId("exec_789");
const loopback: OutboundPolicy = { allowHttp: true, allowLoopback: true };

interface Received {
  at: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

interface Receiver {
  url: string;
  port: number;
  requests: Received[];
  close(): Promise<void>;
}

const receivers: Receiver[] = [];
afterEach(async () => {
  await Promise.all(receivers.splice(0).map((r) => r.close()));
});

/** A callback receiver on loopback answering with `answers` in turn (the last one repeats). */
async function startReceiver(
  answers: Array<{ status: number; headers?: Record<string, string> } | "hang">,
): Promise<Receiver> {
  const requests: Received[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      requests.push({
        at: performance.now(),
        headers: req.headers,
        body: Buffer.concat(chunks).toString("utf8"),
      });
      const answer = answers[Math.min(requests.length, answers.length) - 1]!;
      if (answer === "hang") return;
      res.writeHead(answer.status, answer.headers).end("body the sender should not care about");
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  const r: Receiver = {
    url: `http://127.0.0.1:${port}/hooks/kilo?token=query-secret`,
    port,
    requests,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, "close");
    },
  };
  receivers.push(r);
  return r;
}

function sender(overrides: Partial<CallbackSenderDeps> = {}) {
  const lines: string[] = [];
  const logger = createLogger({
    service: "session-test",
    level: "debug",
    destination: { write: (s) => lines.push(s) },
  });
  const s = new CallbackSender({
    secret: SECRET,
    policy: loopback,
    logger,
    timeoutMs: 2000,
    ...overrides,
  });
  return { s, logs: () => lines.join("") };
}

const payload = {
  cloudAgentSessionId: "ses_123",
  kiloSessionId: "kilo_456",
  executionId: "exec_789",
  status: "failed" as const,
  errorMessage: "model said something private",
  branch: "kilo/fix-1",
};
const target = (url: string) => ({
  url,
  headers: { authorization: "Bearer receiver-token", "x-custom": "yes" },
});

/** The three Standard Webhooks headers of a received request. */
function webhookHeadersOf(req: Received): Record<string, string> {
  return {
    "webhook-id": String(req.headers["webhook-id"]),
    "webhook-timestamp": String(req.headers["webhook-timestamp"]),
    "webhook-signature": String(req.headers["webhook-signature"]),
  };
}

describe("CallbackSender (one attempt)", () => {
  it("sends one POST that the standardwebhooks library verifies, with the documented body", async () => {
    const rx = await startReceiver([{ status: 200 }]);
    const { s, logs } = sender();

    const result = await s.attempt(target(rx.url), payload, ID);

    expect(result).toEqual<AttemptResult>({ outcome: "delivered", httpStatus: 200 });
    expect(rx.requests).toHaveLength(1);
    const req = rx.requests[0] as Received;
    expect(JSON.parse(req.body)).toEqual(payload);
    expect(req.headers["content-type"]).toBe("application/json");
    expect(req.headers["user-agent"]).toBe("kilo-cloud-agent");
    expect(req.headers["x-custom"]).toBe("yes");
    expect(req.headers.authorization).toBe("Bearer receiver-token");
    expect(req.headers["webhook-id"]).toBe("msg_exec_789");
    expect(req.headers["webhook-signature"]).toMatch(/^v1,[A-Za-z0-9+/]+=*$/);
    const headers = webhookHeadersOf(req);
    expect(new Webhook(SECRET).verify(req.body, headers)).toEqual(payload);
    expect(() => new Webhook(generateWebhookSecret()).verify(req.body, headers)).toThrow();
    expect(() => new Webhook(SECRET).verify(req.body.replace("failed", "completed"), headers)).toThrow();
    // Header values, the body and the URL's query never reach the log.
    const log = logs();
    expect(log).toContain("127.0.0.1");
    for (const secret of [
      "receiver-token",
      "model said something private",
      "query-secret",
      SECRET,
      "kilo/fix-1",
    ]) {
      expect(log).not.toContain(secret);
    }
  });

  it("signs with a plain secret as its whsec_ form, which receivers are given", async () => {
    const rx = await startReceiver([{ status: 204 }]);
    const { s } = sender({ secret: PLAIN_SECRET });
    expect(await s.attempt(target(rx.url), payload, ID)).toMatchObject({ outcome: "delivered" });
    const req = rx.requests[0] as Received;
    expect(new Webhook(receiverSecret(PLAIN_SECRET)).verify(req.body, webhookHeadersOf(req))).toEqual(
      payload,
    );
  });

  it("does not let the target's headers replace its own", async () => {
    const rx = await startReceiver([{ status: 200 }]);
    const { s } = sender();
    const hostile = {
      url: rx.url,
      headers: {
        "Webhook-Signature": "v1,forged",
        "webhook-id": "msg_forged",
        "Content-Type": "text/plain",
        "User-Agent": "evil",
        "x-custom": "kept",
      },
    };
    await s.attempt(hostile, payload, ID);
    const req = rx.requests[0] as Received;
    expect(req.headers["webhook-id"]).toBe("msg_exec_789");
    expect(req.headers["content-type"]).toBe("application/json");
    expect(req.headers["user-agent"]).toBe("kilo-cloud-agent");
    expect(req.headers["x-custom"]).toBe("kept");
    expect(new Webhook(SECRET).verify(req.body, webhookHeadersOf(req))).toEqual(payload);
  });

  it.each([
    [400, "failed"],
    [401, "failed"],
    [404, "failed"],
    [410, "failed"],
    [408, "retry"],
    [429, "retry"],
    [500, "retry"],
    [503, "retry"],
  ] as const)("HTTP %i → %s", async (status, outcome) => {
    const rx = await startReceiver([{ status }]);
    const result = await sender().s.attempt(target(rx.url), payload, ID);
    expect(result).toMatchObject({
      outcome,
      httpStatus: status,
      error: `127.0.0.1:${rx.port} answered HTTP ${status}`,
    });
  });

  it("gives up on a redirect, without following it", async () => {
    const rx = await startReceiver([{ status: 302, headers: { location: "http://127.0.0.1:1/elsewhere" } }]);
    const result = await sender().s.attempt(target(rx.url), payload, ID);
    expect(result).toMatchObject({ outcome: "failed", httpStatus: 302 });
    expect(rx.requests).toHaveLength(1);
  });

  it("reports a receiver's Retry-After (seconds or a date)", async () => {
    const rx = await startReceiver([{ status: 429, headers: { "retry-after": "7" } }]);
    expect(await sender().s.attempt(target(rx.url), payload, ID)).toMatchObject({
      outcome: "retry",
      retryAfterMs: 7_000,
    });
    const now = Date.parse("2026-01-01T00:00:00Z");
    const rx2 = await startReceiver([
      { status: 503, headers: { "retry-after": "Thu, 01 Jan 2026 00:01:00 GMT" } },
    ]);
    expect(await sender({ clock: () => now }).s.attempt(target(rx2.url), payload, ID)).toMatchObject({
      outcome: "retry",
      retryAfterMs: 60_000,
    });
  });

  it("times out an attempt against a receiver that never answers: retry later", async () => {
    const rx = await startReceiver(["hang"]);
    const started = performance.now();
    const result = await sender({ timeoutMs: 150 }).s.attempt(target(rx.url), payload, ID);
    expect(result.outcome).toBe("retry");
    expect(performance.now() - started).toBeLessThan(5_000);
  });

  it("a network error (nothing listening) is retried later", async () => {
    const rx = await startReceiver([{ status: 200 }]);
    await rx.close();
    receivers.splice(receivers.indexOf(rx), 1);
    expect((await sender().s.attempt(target(rx.url), payload, ID)).outcome).toBe("retry");
  });

  it("refuses a URL that resolves to loopback when loopback is not allowed, without sending anything", async () => {
    const rx = await startReceiver([{ status: 200 }]);
    const { s } = sender({ policy: { allowHttp: true, allowLoopback: false } });
    const result = await s.attempt(target(rx.url), payload, ID);
    expect(result.outcome).toBe("failed");
    expect(rx.requests).toHaveLength(0);
  });

  it("requires a whsec_ secret or one of at least 32 bytes", () => {
    expect(() => sender({ secret: "short" })).toThrow(/whsec_<base64> or at least 32 bytes/);
    expect(() => sender({ secret: "whsec_c2hvcnQ=" })).toThrow(/at least 24 bytes/);
  });
});

describe("the retry schedule", () => {
  it("by default retries over about 27.5 hours, then gives up", () => {
    const delays = DEFAULT_RETRY_SCHEDULE_MS.map((_, i) =>
      nextRetryDelayMs(DEFAULT_RETRY_SCHEDULE_MS, i + 1, undefined, 0.5),
    );
    expect(delays).toEqual([5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000]);
    const total = delays.reduce((a, b) => (a ?? 0) + (b ?? 0), 0) ?? 0;
    expect(total / 3_600_000).toBeCloseTo(27.5, 0);
    expect(nextRetryDelayMs(DEFAULT_RETRY_SCHEDULE_MS, 8, undefined, 0.5)).toBeUndefined();
  });

  it("jitters by ±10 % and honours a longer Retry-After, capped at a day", () => {
    expect(nextRetryDelayMs([1_000], 1, undefined, 0)).toBe(900);
    expect(nextRetryDelayMs([1_000], 1, undefined, 0.999)).toBe(1_100);
    expect(nextRetryDelayMs([1_000], 1, 60_000, 0.5)).toBe(60_000);
    expect(nextRetryDelayMs([1_000], 1, 10, 0.5)).toBe(1_000);
    expect(nextRetryDelayMs([1_000], 1, 9 * 86_400_000, 0.5)).toBe(86_400_000);
  });

  it("parses CALLBACK_RETRY_SCHEDULE and names a bad item", () => {
    expect(parseRetrySchedule("500ms, 5s,5m,2h")).toEqual([500, 5_000, 300_000, 7_200_000]);
    expect(() => parseRetrySchedule("5s,soon")).toThrow(/"soon" is not a delay/);
  });
});
