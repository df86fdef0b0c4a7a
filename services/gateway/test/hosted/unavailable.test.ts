import { randomBytes } from "node:crypto";
import { createLogger, generateServiceKeyPair, listen, type RunningServer } from "@kilo-cloud/common";
import { freePort } from "@kilo-cloud/testing";
import { SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createGateway, type GatewayApp } from "../../src/index.js";

/** The facade when the session service is down: a neutral SERVICE_UNAVAILABLE, no address. */

describe("tRPC facade with the session service down", () => {
  let app: GatewayApp;
  let server: RunningServer;
  let token: string;
  let deadPort: number;
  const logs: string[] = [];

  beforeAll(async () => {
    const secret = randomBytes(32).toString("hex");
    deadPort = await freePort();
    app = await createGateway({
      logger: createLogger({
        service: "gw",
        level: "info",
        destination: { write: (l: string) => void logs.push(l) },
      }),
      userTokens: { hs256Secret: secret },
      internalApiKey: "internal-key-0123456789",
      serviceTokenPrivateKey: (await generateServiceKeyPair()).privateKeyPem,
      streamTicketSecret: randomBytes(32).toString("hex"),
      sessionServiceUrl: `http://127.0.0.1:${deadPort}`,
      upstreamTimeoutMs: 2_000,
    });
    server = await listen(app.handler, { port: 0, host: "127.0.0.1" });
    token = await new SignJWT({})
      .setProtectedHeader({ alg: "HS256" })
      .setSubject("alice")
      .setExpirationTime("1h")
      .sign(new TextEncoder().encode(secret));
  });
  afterAll(async () => {
    app?.close();
    await server?.close(100);
  });

  it("answers 503 with a neutral message and no address", async () => {
    const input = encodeURIComponent(JSON.stringify({ cloudAgentSessionId: `agent_${crypto.randomUUID()}` }));
    const res = await fetch(`${server.url}/trpc/getSession?input=${input}`, {
      headers: { authorization: `Bearer ${token}` },
    });
    const body = await res.text();
    expect(res.status).toBe(503);
    expect(JSON.parse(body)).toMatchObject({
      error: {
        message: "session service is unavailable",
        data: { code: "SERVICE_UNAVAILABLE", httpStatus: 503 },
      },
    });
    expect(body).not.toContain(String(deadPort));
    expect(body).not.toContain("stack");
  });
});
