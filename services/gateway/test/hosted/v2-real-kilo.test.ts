import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FullStack, REPO, startFullStack } from "../support/full-stack.js";
import { hostedClient, prepareInput } from "./clients.js";
import { type Frame, openSocket, streamUrl, terminalsOf, ticketFor, waitFrames } from "./ws-client.js";

/**
 * A whole V2 run as a hosted client does it, with the REAL kilo binary (scripted model
 * server), real git, bwrap, NATS and Postgres: prepare → initiate → ticket → /stream →
 * complete → sendMessageV2 → reconnect with fromId → only the later events.
 */

describe("hosted V2 flow with the real kilo", { timeout: 300_000 }, () => {
  let stack: FullStack;
  beforeAll(async () => {
    stack = await startFullStack({ kilo: "real" });
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  it("prepare → initiate → /stream → complete → sendMessageV2 → resume from fromId", async () => {
    const token = await stack.login("alice");
    const client = hostedClient(stack, token);
    const { cloudAgentSessionId } = await client.prepareSession.mutate(
      prepareInput({ prompt: "Write the first file", autoCommit: true }),
    );
    const ack = await client.initiateFromKilocodeSessionV2.mutate({ cloudAgentSessionId });
    expect(ack.status).toBe("started");

    const first = await openSocket(
      streamUrl(stack, { cloudAgentSessionId, ticket: await ticketFor(stack, token, cloudAgentSessionId) }),
    );
    await waitFrames(first, (f) => terminalsOf(f).length >= 1, 240_000);
    first.ws.close();
    const firstRun = [...first.frames];
    expect(terminalsOf(firstRun).map((f) => [f.streamEventType, f.executionId, f.data.exitCode])).toEqual([
      ["complete", ack.executionId, 0],
    ]);
    expect(firstRun.some((f) => f.streamEventType === "kilocode")).toBe(true);
    const complete = terminalsOf(firstRun)[0] as Frame;
    expect(complete.data.currentBranch).toBe(`session/${cloudAgentSessionId}`);

    const session = await client.getSession.query({ cloudAgentSessionId });
    expect(session).toMatchObject({ execution: null, queuedCount: 0, githubRepo: REPO });

    const next = await client.sendMessageV2.mutate({
      cloudAgentSessionId,
      prompt: "Write the second file",
      mode: "code",
      model: "mock-model",
    });
    const lastSeen = (firstRun.at(-1) as Frame).eventId;
    const resumed = await openSocket(
      streamUrl(stack, {
        cloudAgentSessionId,
        ticket: await ticketFor(stack, token, cloudAgentSessionId),
        fromId: String(lastSeen),
      }),
    );
    await waitFrames(resumed, (f) => terminalsOf(f).length >= 1, 240_000);
    resumed.ws.close();
    expect(resumed.frames.every((f) => f.eventId > lastSeen)).toBe(true);
    expect(resumed.frames.every((f) => f.executionId === next.executionId)).toBe(true);
    expect(terminalsOf(resumed.frames).map((f) => [f.streamEventType, f.data.exitCode])).toEqual([
      ["complete", 0],
    ]);
    const ids = resumed.frames.map((f) => f.eventId);
    expect([...ids].sort((a, b) => a - b)).toEqual(ids);
  });
});
