import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { createLogger, type OutboundPolicy } from "@kilo-cloud/common";
import { afterEach, describe, expect, it } from "vitest";
import { CallbackSender, type CallbackSenderDeps, verifyCallbackSignature } from "./callbacks.js";

const SECRET = "test-signing-secret-0123456789abcdef";
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
    baseDelayMs: 10,
    timeoutMs: 2000,
    ...overrides,
  });
  return { s, logs: () => lines.join("") };
}

const payload = {
  cloudAgentSessionId: "ses_123",
  kiloSessionId: "kilo_456",
  executionId: "exe_789",
  status: "failed" as const,
  errorMessage: "model said something private",
  branch: "kilo/fix-1",
};
const target = (url: string) => ({
  url,
  headers: { authorization: "Bearer receiver-token", "x-custom": "yes" },
});

describe("CallbackSender", () => {
  it("delivers one signed POST per execution, retried after a 503", async () => {
    const rx = await startReceiver([{ status: 503 }, { status: 200 }]);
    const { s, logs } = sender();

    const result = await s.send(target(rx.url), payload);

    expect(result).toEqual({ delivered: true, attempts: 2, lastStatus: 200 });
    expect(rx.requests).toHaveLength(2);
    const [first, second] = rx.requests as [Received, Received];
    expect(second.body).toBe(first.body);
    expect(JSON.parse(first.body)).toEqual(payload);
    expect(second.headers["x-kilo-delivery"]).toBe(first.headers["x-kilo-delivery"]);
    expect(first.headers["x-kilo-delivery"]).toMatch(/^[0-9a-f-]{36}$/);
    for (const req of rx.requests) {
      expect(req.headers["content-type"]).toBe("application/json");
      expect(req.headers["user-agent"]).toBe("kilo-cloud-agent");
      expect(req.headers["x-custom"]).toBe("yes");
      expect(req.headers.authorization).toBe("Bearer receiver-token");
      const ts = req.headers["x-kilo-timestamp"] as string;
      const sig = req.headers["x-kilo-signature"] as string;
      expect(sig).toMatch(/^v1=[0-9a-f]{64}$/);
      expect(verifyCallbackSignature(SECRET, ts, req.body, sig)).toBe(true);
      expect(verifyCallbackSignature("another-secret-of-enough-length-000", ts, req.body, sig)).toBe(false);
      expect(verifyCallbackSignature(SECRET, ts, req.body.replace("failed", "completed"), sig)).toBe(false);
    }
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

  it("does not let the target's headers replace its own", async () => {
    const rx = await startReceiver([{ status: 204 }]);
    const { s } = sender();
    const result = await s.send(
      {
        url: rx.url,
        headers: { "X-Kilo-Signature": "v1=forged", "content-type": "text/plain", Host: "evil" },
      },
      payload,
    );
    expect(result.delivered).toBe(true);
    const req = rx.requests[0]!;
    expect(req.headers["content-type"]).toBe("application/json");
    expect(req.headers.host).toBe(`127.0.0.1:${rx.port}`);
    expect(
      verifyCallbackSignature(
        SECRET,
        req.headers["x-kilo-timestamp"] as string,
        req.body,
        req.headers["x-kilo-signature"] as string,
      ),
    ).toBe(true);
  });

  it("gives up at once on a 4xx other than 429", async () => {
    const rx = await startReceiver([{ status: 400 }, { status: 200 }]);
    const { s } = sender();
    const result = await s.send(target(rx.url), payload);
    expect(result).toMatchObject({ delivered: false, attempts: 1, lastStatus: 400 });
    expect(rx.requests).toHaveLength(1);
  });

  it("gives up at once on a redirect, without following it", async () => {
    const elsewhere = await startReceiver([{ status: 200 }]);
    const rx = await startReceiver([{ status: 307, headers: { location: elsewhere.url } }]);
    const { s } = sender();
    const result = await s.send(target(rx.url), payload);
    expect(result).toMatchObject({ delivered: false, attempts: 1, lastStatus: 307 });
    expect(elsewhere.requests).toHaveLength(0);
  });

  it("tries five times against a receiver that keeps answering 503, then gives up", async () => {
    const rx = await startReceiver([{ status: 503 }]);
    const { s } = sender();
    const result = await s.send(target(rx.url), payload);
    expect(result).toMatchObject({ delivered: false, attempts: 5, lastStatus: 503 });
    expect(result.error).toContain("503");
    expect(rx.requests).toHaveLength(5);
    expect(new Set(rx.requests.map((r) => r.headers["x-kilo-delivery"])).size).toBe(1);
  });

  it("times out each attempt against a receiver that never answers", async () => {
    const rx = await startReceiver(["hang"]);
    const { s } = sender({ timeoutMs: 150, maxAttempts: 3 });
    const started = performance.now();
    const result = await s.send(target(rx.url), payload);
    expect(result).toMatchObject({ delivered: false, attempts: 3 });
    expect(result.error).toMatch(/no response from 127\.0\.0\.1 within 150 ms/);
    expect(rx.requests).toHaveLength(3);
    expect(performance.now() - started).toBeGreaterThanOrEqual(3 * 150 - 10);
  });

  it("waits as long as a 429's Retry-After asks", async () => {
    const rx = await startReceiver([{ status: 429, headers: { "retry-after": "1" } }, { status: 200 }]);
    const { s } = sender();
    const result = await s.send(target(rx.url), payload);
    expect(result).toEqual({ delivered: true, attempts: 2, lastStatus: 200 });
    const [first, second] = rx.requests as [Received, Received];
    expect(second.at - first.at).toBeGreaterThanOrEqual(990);
  });

  it("refuses a URL that resolves to loopback when loopback is not allowed, without sending anything", async () => {
    const rx = await startReceiver([{ status: 200 }]);
    const { s, logs } = sender({ policy: { allowHttp: true, allowLoopback: false } });
    const result = await s.send(target(`http://localhost:${rx.port}/hooks?token=query-secret`), payload);
    expect(result).toMatchObject({ delivered: false, attempts: 1 });
    expect(result.error).toMatch(/localhost refused: it resolves to a loopback address/);
    expect(rx.requests).toHaveLength(0);
    const warn = logs()
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l))
      .find((l) => l.msg === "callback refused by outbound policy");
    expect(warn).toMatchObject({ level: 40, host: "localhost" });
    expect(logs()).not.toContain("query-secret");
  });

  it("requires a signing secret of at least 32 bytes", () => {
    expect(() => sender({ secret: "short" })).toThrow(/at least 32 bytes/);
  });
});

describe("verifyCallbackSignature", () => {
  it("rejects a timestamp older than the tolerance, even with a correct signature", async () => {
    const { signCallback } = await import("./callbacks.js");
    const body = '{"a":1}';
    const now = 1_700_000_000_000;
    const ts = now / 1000 - 301;
    expect(verifyCallbackSignature(SECRET, ts, body, signCallback(SECRET, ts, body), { now })).toBe(false);
    expect(verifyCallbackSignature(SECRET, ts + 2, body, signCallback(SECRET, ts + 2, body), { now })).toBe(
      true,
    );
    // Several v1 entries (secret rotation): any one valid is enough.
    const both = `v1=${"0".repeat(64)}, ${signCallback(SECRET, ts + 2, body)}`;
    expect(verifyCallbackSignature(SECRET, ts + 2, body, both, { now })).toBe(true);
    expect(verifyCallbackSignature(SECRET, "12a", body, signCallback(SECRET, ts, body), { now })).toBe(false);
  });
});
