import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FullStack, startFullStack } from "../support/full-stack.js";
import { hostedClient, prepareInput } from "./clients.js";
import { type Frame, openSocket, streamUrl, terminalsOf, ticketFor, waitFrames } from "./ws-client.js";

/**
 * The hosted `/stream` WebSocket on the gateway's port, with the `ws` client, against the
 * whole stack (the kilo replayer prints captured real kilo output): frames, replay then
 * live, `fromId`, every filter, the handshake's refusals, hosted tickets and API tokens,
 * and the WebSocket ping.
 */

const HOSTED_SECRET = randomBytes(32).toString("hex");
const key = new TextEncoder().encode(HOSTED_SECRET);

/** A ticket as the hosted backend mints it (src/lib/cloud-agent/stream-ticket.ts). */
function hostedTicket(claims: Record<string, unknown>, expiresIn: string | number = "60s") {
  return new SignJWT({ type: "stream_ticket", nonce: crypto.randomUUID(), ...claims })
    .setProtectedHeader({ alg: "HS256" })
    .setIssuedAt()
    .setExpirationTime(expiresIn)
    .sign(key);
}

/** An API token as the hosted backend's generateApiToken makes it. */
function hostedApiToken(kiloUserId: string, version = 3) {
  return new SignJWT({ kiloUserId, version, apiTokenPepper: null, env: "test" })
    .setProtectedHeader({ alg: "HS256" })
    .setIssuedAt()
    .setExpirationTime("5y")
    .sign(key);
}

describe("/stream WebSocket", { timeout: 180_000 }, () => {
  let stack: FullStack;
  let alice: string;
  let bob: string;
  let sessionId: string;
  let firstExec: string;
  let secondExec: string;
  let all: Frame[];

  beforeAll(async () => {
    stack = await startFullStack({
      kilo: { replay: "stream-write-tool.jsonl", lineDelayMs: 30 },
      gateway: { hostedAuthSecret: HOSTED_SECRET, streamPingMs: 1_000 },
    });
    alice = await stack.login("alice");
    bob = await stack.login("bob");
    const client = hostedClient(stack, alice);
    ({ cloudAgentSessionId: sessionId } = await client.prepareSession.mutate(prepareInput()));
    const ack = await client.initiateFromKilocodeSessionV2.mutate({ cloudAgentSessionId: sessionId });
    firstExec = ack.executionId;
    const s = await openSocket(
      streamUrl(stack, { cloudAgentSessionId: sessionId, ticket: await ticketFor(stack, alice, sessionId) }),
    );
    await waitFrames(s, (f) => terminalsOf(f).length >= 1);
    const second = await client.sendMessageV2.mutate({
      cloudAgentSessionId: sessionId,
      prompt: "again",
      mode: "code",
      model: "mock-model",
    });
    secondExec = second.executionId;
    all = await waitFrames(s, (f) => terminalsOf(f).length >= 2);
    s.ws.close();
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  it("sends hosted frames, replay then live, ids increasing with no gap in what it sends", () => {
    expect(terminalsOf(all).map((f) => [f.streamEventType, f.executionId])).toEqual([
      ["complete", firstExec],
      ["complete", secondExec],
    ]);
    const ids = all.map((f) => f.eventId);
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort((a, b) => a - b)).toEqual(ids);
    for (const f of all) {
      expect(Object.keys(f).sort()).toEqual([
        "data",
        "eventId",
        "executionId",
        "sessionId",
        "streamEventType",
        "timestamp",
      ]);
      expect(f.sessionId).toBe(sessionId);
      expect(new Date(f.timestamp).toISOString()).toBe(f.timestamp);
    }
    const complete = all.find((f) => f.streamEventType === "complete");
    expect(complete?.data).toMatchObject({ exitCode: 0 });
    const kilocode = all.find((f) => f.streamEventType === "kilocode");
    expect(kilocode?.data).toEqual(expect.objectContaining({ type: expect.any(String) }));
    const status = all.find((f) => f.streamEventType === "status");
    expect(status?.data).toEqual(expect.objectContaining({ message: expect.any(String) }));
    const heartbeat = all.find((f) => f.streamEventType === "heartbeat");
    if (heartbeat) expect(heartbeat.data).toEqual({ executionId: heartbeat.executionId });
  });

  it("reconnects with fromId and gets only later events", async () => {
    const cut = all[Math.floor(all.length / 2)] as Frame;
    const s = await openSocket(
      streamUrl(stack, {
        cloudAgentSessionId: sessionId,
        ticket: await ticketFor(stack, alice, sessionId),
        fromId: String(cut.eventId),
      }),
    );
    const later = all.filter((f) => f.eventId > cut.eventId);
    const got = await waitFrames(s, (f) => f.length >= later.length);
    await sleep(300);
    expect(got.map((f) => f.eventId)).toEqual(later.map((f) => f.eventId));
    s.ws.close();
  });

  it("filters by executionIds, eventTypes and time range (replay)", async () => {
    const open = async (q: Record<string, string>) =>
      openSocket(
        streamUrl(stack, {
          cloudAgentSessionId: sessionId,
          ticket: await ticketFor(stack, alice, sessionId),
          ...q,
        }),
      );
    const expectFiltered = async (q: Record<string, string>, want: Frame[]) => {
      const s = await open(q);
      await waitFrames(s, (f) => f.length >= want.length);
      await sleep(300);
      expect(s.frames.map((f) => f.eventId)).toEqual(want.map((f) => f.eventId));
      s.ws.close();
    };
    await expectFiltered(
      { executionIds: secondExec },
      all.filter((f) => f.executionId === secondExec),
    );
    await expectFiltered(
      { eventTypes: "complete,status" },
      all.filter((f) => f.streamEventType === "complete" || f.streamEventType === "status"),
    );
    const mid = all[Math.floor(all.length / 3)] as Frame;
    const end = all[Math.floor((2 * all.length) / 3)] as Frame;
    const t0 = Date.parse(mid.timestamp);
    const t1 = Date.parse(end.timestamp);
    const inRange = all.filter((f) => Date.parse(f.timestamp) >= t0 && Date.parse(f.timestamp) <= t1);
    await expectFiltered({ startTime: String(t0), endTime: new Date(t1).toISOString() }, inRange);
    expect(inRange.length).toBeLessThan(all.length);
  });

  it("filters live events too, and pings idle sockets", async () => {
    const client = hostedClient(stack, alice);
    const s = await openSocket(
      streamUrl(stack, {
        cloudAgentSessionId: sessionId,
        ticket: await ticketFor(stack, alice, sessionId),
        eventTypes: "complete",
        fromId: String(all.at(-1)?.eventId),
      }),
    );
    let pings = 0;
    s.ws.on("ping", () => pings++);
    const third = await client.sendMessageV2.mutate({
      cloudAgentSessionId: sessionId,
      prompt: "third",
      mode: "code",
      model: "mock-model",
    });
    const got = await waitFrames(s, (f) => f.length >= 1);
    expect(got.map((f) => [f.streamEventType, f.executionId])).toEqual([["complete", third.executionId]]);
    await sleep(2_500);
    expect(pings).toBeGreaterThanOrEqual(1);
    expect(s.ws.readyState).toBe(s.ws.OPEN);
    s.ws.close();
  });

  it("refuses bad, expired and other-session tickets before the upgrade", async () => {
    const { cloudAgentSessionId: other } = await hostedClient(stack, alice).prepareSession.mutate(
      prepareInput(),
    );
    const refusal = async (query: Record<string, string>) =>
      openSocket(streamUrl(stack, query)).then(
        (s) => {
          s.ws.close();
          return { status: 101, body: "" };
        },
        (e: { status?: number; body?: string }) => ({ status: e.status, body: e.body }),
      );
    const good = await ticketFor(stack, alice, sessionId);
    expect(await refusal({ cloudAgentSessionId: sessionId })).toMatchObject({
      status: 401,
      body: expect.stringContaining("Missing ticket"),
    });
    expect(await refusal({ ticket: good })).toMatchObject({ status: 400 });
    expect(await refusal({ cloudAgentSessionId: sessionId, ticket: "garbage" })).toMatchObject({
      status: 401,
    });
    expect(
      await refusal({ cloudAgentSessionId: sessionId, ticket: `${good.slice(0, -4)}AAAA` }),
    ).toMatchObject({ status: 401 });
    expect(await refusal({ cloudAgentSessionId: other, ticket: good })).toMatchObject({ status: 403 });
    // The hosted backend's tickets: expired, for another session, for a session the user does not own.
    const past = Math.floor(Date.now() / 1000) - 120;
    expect(
      await refusal({
        cloudAgentSessionId: sessionId,
        ticket: await hostedTicket({ userId: "alice", cloudAgentSessionId: sessionId }, past),
      }),
    ).toMatchObject({ status: 401, body: expect.stringMatching(/expired/i) });
    expect(
      await refusal({
        cloudAgentSessionId: other,
        ticket: await hostedTicket({ userId: "alice", cloudAgentSessionId: sessionId }),
      }),
    ).toMatchObject({ status: 403 });
    expect(
      await refusal({
        cloudAgentSessionId: sessionId,
        ticket: await hostedTicket({ userId: "bob", cloudAgentSessionId: sessionId }),
      }),
    ).toMatchObject({ status: 404 });
    expect(
      await refusal({
        cloudAgentSessionId: sessionId,
        ticket: await hostedTicket({ cloudAgentSessionId: sessionId }),
      }),
    ).toMatchObject({ status: 401 });
    // A ticket of ours cannot be minted for another user's session.
    const res = await fetch(`${stack.gatewayUrl}/api/cloud-agent/sessions/stream-ticket`, {
      method: "POST",
      headers: { authorization: `Bearer ${bob}`, "content-type": "application/json" },
      body: JSON.stringify({ cloudAgentSessionId: sessionId }),
    });
    expect(res.status).toBe(404);
    // Not an upgrade at all.
    expect((await fetch(`${stack.gatewayUrl}/stream?cloudAgentSessionId=${sessionId}`)).status).toBe(426);
  });

  it("accepts the hosted backend's tickets and API tokens", async () => {
    const ticket = await hostedTicket({
      userId: "alice",
      cloudAgentSessionId: sessionId,
      kiloSessionId: "k",
    });
    const s = await openSocket(
      streamUrl(stack, { cloudAgentSessionId: sessionId, ticket, eventTypes: "complete" }),
    );
    await waitFrames(s, (f) => f.length >= 2);
    s.ws.close();

    const token = await hostedApiToken("alice");
    const asAlice = hostedClient(stack, token);
    expect((await asAlice.getSession.query({ cloudAgentSessionId: sessionId })).userId).toBe("alice");
    const res = await fetch(`${stack.gatewayUrl}/api/cloud-agent/sessions/stream-ticket`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ cloudAgentSessionId: sessionId }),
    });
    const body = (await res.json()) as { ticket: string; expiresAt: number };
    expect(body.expiresAt).toBeGreaterThan(Date.now() / 1000);
    expect(body.expiresAt).toBeLessThanOrEqual(Date.now() / 1000 + 61);
    await expect(hostedClient(stack, await hostedApiToken("alice", 2)).health.query()).rejects.toMatchObject({
      data: { code: "UNAUTHORIZED", httpStatus: 401 },
      message: expect.stringContaining("version"),
    });
    await expect(
      hostedClient(stack, await hostedApiToken("bob")).getSession.query({ cloudAgentSessionId: sessionId }),
    ).rejects.toMatchObject({ data: { code: "NOT_FOUND" } });
  });
});
