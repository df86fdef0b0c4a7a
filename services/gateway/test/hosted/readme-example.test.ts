import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { type FullStack, INTERNAL_KEY, startFullStack } from "../support/full-stack.js";
import { readmeExample } from "./readme-example/example.js";

/**
 * The reference README's TypeScript example (readme-example/example.ts holds its code)
 * against the gateway and the whole stack. It clones `facebook/react` with no token: here,
 * as on the hosted product without a GitHub App installation, that run ends in an error
 * event, which the example's WebSocket handler logs like any other event.
 */

describe("the reference README's TypeScript example", { timeout: 180_000 }, () => {
  let stack: FullStack;
  beforeAll(async () => {
    stack = await startFullStack({ kilo: { replay: "stream-write-tool.jsonl" } });
  });
  afterAll(async () => {
    vi.restoreAllMocks();
    await stack?.[Symbol.asyncDispose]();
  });

  it("runs as written", async () => {
    const logged: unknown[][] = [];
    vi.spyOn(console, "log").mockImplementation((...args: unknown[]) => void logged.push(args));
    const token = await stack.login("readme-user");
    const { prepared, ack, ws } = await readmeExample({
      WORKER: stack.gatewayUrl,
      WORKER_WS: stack.gatewayUrl.replace(/^http/, "ws"),
      BACKEND: stack.gatewayUrl,
      KILOCODE_TOKEN: token,
      USER_SESSION_TOKEN: token,
      INTERNAL_API_KEY: INTERNAL_KEY,
    });
    expect(prepared.cloudAgentSessionId).toBe(ack.cloudAgentSessionId);
    expect(ack.status).toBe("started");
    // Both executions end, each with a terminal event the example logs.
    await expect
      .poll(() => logged.filter((l) => ["complete", "error", "interrupted"].includes(String(l[1]))).length, {
        timeout: 120_000,
        interval: 200,
      })
      .toBeGreaterThanOrEqual(2);
    for (const line of logged) {
      expect(line[0]).toBe("Stream event:");
      expect(typeof line[2]).toBe("object");
    }
    ws.close();
  });
});
