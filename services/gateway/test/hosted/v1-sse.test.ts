import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { V1Event } from "../../src/trpc/v1-events.js";
import { type FullStack, startFullStack } from "../support/full-stack.js";
import { hostedClient, prepareInput } from "./clients.js";

/**
 * The deprecated V1 SSE subscriptions through @trpc/client's httpSubscriptionLink, on the
 * whole stack (kilo replayer): flat V1 events of the started execution, ending with its
 * `complete`; the Connect API's rules (SSRF policy of callbacks) apply through them too.
 */

type V1 = V1Event;

function collect(
  subscribe: (handlers: {
    onData: (e: V1) => void;
    onError: (err: unknown) => void;
    onComplete: () => void;
  }) => { unsubscribe(): void },
): Promise<V1[]> {
  return new Promise((resolve, reject) => {
    const events: V1[] = [];
    const timer = setTimeout(() => reject(new Error(`timed out after ${events.length} events`)), 120_000);
    const sub = subscribe({
      onData(e) {
        events.push(e);
        if (e.streamEventType === "complete" || e.streamEventType === "error") {
          clearTimeout(timer);
          sub.unsubscribe();
          resolve(events);
        }
      },
      onError(err) {
        clearTimeout(timer);
        sub.unsubscribe();
        reject(err);
      },
      onComplete() {
        clearTimeout(timer);
        resolve(events);
      },
    });
  });
}

describe("tRPC facade: deprecated V1 SSE subscriptions", { timeout: 180_000 }, () => {
  let stack: FullStack;
  let token: string;
  beforeAll(async () => {
    stack = await startFullStack({ kilo: { replay: "stream-write-tool.jsonl", lineDelayMs: 20 } });
    token = await stack.login("alice");
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  const expectV1Run = (events: V1[], sessionId?: string) => {
    const last = events.at(-1) as V1;
    expect(last).toMatchObject({
      streamEventType: "complete",
      exitCode: 0,
      metadata: expect.objectContaining({ executionTimeMs: expect.any(Number), userId: "alice" }),
    });
    if (sessionId) expect(last.sessionId).toBe(sessionId);
    for (const e of events) {
      expect(e).not.toHaveProperty("eventId");
      expect(e).not.toHaveProperty("data");
      expect(typeof e.sessionId).toBe("string");
    }
    expect(events.find((e) => e.streamEventType === "kilocode")).toMatchObject({
      payload: expect.any(Object),
    });
    expect(events.find((e) => e.streamEventType === "status")).toMatchObject({
      message: expect.any(String),
      timestamp: expect.any(String),
    });
  };

  it("initiateSessionStream runs a new session and streams V1 events to its complete", async () => {
    const client = hostedClient(stack, token);
    const events = await collect((h) => client.initiateSessionStream.subscribe(prepareInput(), h));
    expectV1Run(events);
  });

  it("initiateFromKilocodeSession (prepared) and sendMessageStream", async () => {
    const client = hostedClient(stack, token);
    const { cloudAgentSessionId } = await client.prepareSession.mutate(prepareInput());
    expectV1Run(
      await collect((h) => client.initiateFromKilocodeSession.subscribe({ cloudAgentSessionId }, h)),
      cloudAgentSessionId,
    );
    const followUp = await collect((h) =>
      client.sendMessageStream.subscribe(
        { sessionId: cloudAgentSessionId, prompt: "again", mode: "code", model: "mock-model" },
        h,
      ),
    );
    expectV1Run(followUp, cloudAgentSessionId);
  });

  it("errors arrive as tRPC errors; our rules apply (a loopback callback URL is refused)", async () => {
    const client = hostedClient(stack, token);
    await expect(
      collect((h) =>
        client.initiateSessionAsync.subscribe(
          { ...prepareInput(), callbackUrl: "https://127.0.0.1:9/cb" },
          h,
        ),
      ),
    ).rejects.toMatchObject({
      data: { code: "BAD_REQUEST" },
      message: expect.stringContaining("callbackTarget"),
    });
    await expect(
      collect((h) =>
        client.sendMessageStream.subscribe(
          { sessionId: "agent_00000000-0000-4000-8000-000000000000", prompt: "x", mode: "code", model: "m" },
          h,
        ),
      ),
    ).rejects.toMatchObject({ data: { code: "NOT_FOUND" } });
  });
});
