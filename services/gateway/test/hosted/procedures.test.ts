import { setTimeout as sleep } from "node:timers/promises";
import { TRPCClientError } from "@trpc/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FullStack, GIT_TOKEN, startFullStack } from "../support/full-stack.js";
import { hostedClient, prepareInput, rawTrpc } from "./clients.js";
import { openSocket, streamUrl, terminalsOf, ticketFor, waitFrames } from "./ws-client.js";

/**
 * The hosted product's tRPC API on the gateway, driven by the real @trpc/client v11
 * (httpBatchLink and httpLink) over HTTP against the whole stack (real Postgres, NATS,
 * bwrap sandboxes, git over HTTP; the kilo replayer prints captured real kilo output).
 */

const AGENT_ID = /^agent_[0-9a-f-]{36}$/;

describe("tRPC facade: procedures", { timeout: 180_000 }, () => {
  let stack: FullStack;
  let alice: string;
  let bob: string;
  beforeAll(async () => {
    stack = await startFullStack({ kilo: { replay: "stream-write-tool.jsonl", lineDelayMs: 40 } });
    alice = await stack.login("alice");
    bob = await stack.login("bob");
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  async function waitIdle(sessionId: string) {
    const client = hostedClient(stack, alice);
    for (let i = 0; i < 600; i++) {
      const s = await client.getSession.query({ cloudAgentSessionId: sessionId });
      if (s.execution === null && s.queuedCount === 0) return s;
      await sleep(100);
    }
    throw new Error("session did not become idle");
  }

  for (const link of ["batch", "plain"] as const) {
    it(`prepare, update, get, initiate, send, logs, interrupt, delete (${link} link)`, async () => {
      const client = hostedClient(stack, alice, { link });
      const before = Date.now();
      const prepared = await client.prepareSession.mutate(
        prepareInput({ envVars: { A: "1", B: "2" }, setupCommands: ["true"], autoCommit: false }),
      );
      expect(Object.keys(prepared).sort()).toEqual(["cloudAgentSessionId", "kiloSessionId"]);
      expect(prepared.cloudAgentSessionId).toMatch(AGENT_ID);
      const id = prepared.cloudAgentSessionId;

      let session = await client.getSession.query({ cloudAgentSessionId: id });
      expect(session).toMatchObject({
        sessionId: id,
        kiloSessionId: prepared.kiloSessionId,
        userId: "alice",
        githubRepo: "acme/widgets",
        prompt: "Write a file",
        mode: "code",
        model: "mock-model",
        envVarCount: 2,
        setupCommandCount: 1,
        execution: null,
        queuedCount: 0,
      });
      expect(session.preparedAt).toBeGreaterThanOrEqual(before - 1000);
      expect(session.timestamp).toBeGreaterThanOrEqual(before - 1000);
      expect(typeof session.version).toBe("number");
      expect(session).not.toHaveProperty("initiatedAt");

      // null clears a scalar; {} and [] clear a collection.
      expect(
        await client.updateSession.mutate({ cloudAgentSessionId: id, model: "other-model", envVars: {} }),
      ).toEqual({ success: true });
      await client.updateSession.mutate({ cloudAgentSessionId: id, setupCommands: [], mode: null });
      session = await client.getSession.query({ cloudAgentSessionId: id });
      expect(session.model).toBe("other-model");
      expect(session).not.toHaveProperty("envVarCount");
      expect(session).not.toHaveProperty("setupCommandCount");
      expect(session).not.toHaveProperty("mode");
      await client.updateSession.mutate({ cloudAgentSessionId: id, mode: "code", model: "mock-model" });

      const ack = await client.initiateFromKilocodeSessionV2.mutate({ cloudAgentSessionId: id });
      expect(ack).toEqual({
        executionId: expect.stringMatching(/^exec_/),
        cloudAgentSessionId: id,
        status: "started",
        streamUrl: `/stream?cloudAgentSessionId=${id}`,
      });
      const second = await client.sendMessageV2.mutate({
        cloudAgentSessionId: id,
        prompt: "Now more",
        mode: "code",
        model: "mock-model",
      });
      expect(second.status).toBe("queued");
      session = await client.getSession.query({ cloudAgentSessionId: id });
      expect(session.initiatedAt).toBeGreaterThanOrEqual(before - 1000);
      expect(session.queuedCount + (session.execution ? 1 : 0)).toBeGreaterThanOrEqual(1);
      if (session.execution) {
        expect(session.execution).toMatchObject({
          id: expect.stringMatching(/^exec_/),
          status: "running",
          processId: null,
          error: null,
        });
        expect(["healthy", "stale", "unknown"]).toContain(session.execution.health);
        expect(typeof session.execution.startedAt).toBe("number");
      }

      await waitIdle(id);
      const logs = await client.getSessionLogs.query({ sessionId: id });
      expect(logs.sessionId).toBe(id);
      expect(logs.content).toContain("complete");
      const wrapper = await client.getWrapperLogs.query({ sessionId: id, executionId: second.executionId });
      expect(wrapper).toMatchObject({ sessionId: id, executionId: second.executionId });
      expect(wrapper.content.length).toBeGreaterThan(0);
      expect(wrapper.content.length).toBeLessThan(logs.content.length);

      const interrupted = await client.interruptSession.mutate({ sessionId: id });
      expect(interrupted).toEqual({
        success: expect.any(Boolean),
        killedProcessIds: expect.any(Array),
        failedProcessIds: expect.any(Array),
        message: expect.any(String),
      });
      expect(await client.deleteSession.mutate({ sessionId: id })).toEqual({ success: true });
      await expect(client.getSession.query({ cloudAgentSessionId: id })).rejects.toMatchObject({
        data: { code: "NOT_FOUND", httpStatus: 404 },
      });
    });
  }

  it("health answers with a valid token", async () => {
    const health = await hostedClient(stack, alice).health.query();
    expect(health).toEqual({ status: "ok", timestamp: expect.any(String), version: "1.0.0-trpc" });
    expect(Number.isNaN(Date.parse(health.timestamp))).toBe(false);
  });

  it("another user's session is NOT_FOUND, like a missing one", async () => {
    const { cloudAgentSessionId } = await hostedClient(stack, alice).prepareSession.mutate(prepareInput());
    const asBob = hostedClient(stack, bob);
    for (const call of [
      () => asBob.getSession.query({ cloudAgentSessionId }),
      () => asBob.initiateFromKilocodeSessionV2.mutate({ cloudAgentSessionId }),
      () => asBob.updateSession.mutate({ cloudAgentSessionId, model: "x" }),
      () => asBob.getSessionLogs.query({ sessionId: cloudAgentSessionId }),
      () => asBob.interruptSession.mutate({ sessionId: cloudAgentSessionId }),
      () => asBob.deleteSession.mutate({ sessionId: cloudAgentSessionId }),
    ]) {
      const err = await call().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(TRPCClientError);
      expect((err as TRPCClientError<never>).data).toMatchObject({ code: "NOT_FOUND", httpStatus: 404 });
    }
    // Still there for alice.
    expect((await hostedClient(stack, alice).getSession.query({ cloudAgentSessionId })).sessionId).toBe(
      cloudAgentSessionId,
    );
  });

  it("secrets (the git token) are masked in /stream frames and in the logs procedures", async () => {
    const client = hostedClient(stack, alice);
    // The session's git token (a secret; env vars are plain configuration) echoed by a setup
    // command that fails: it would be in the status event (the command) and the error's output tail.
    const canary = GIT_TOKEN;
    const { cloudAgentSessionId } = await client.prepareSession.mutate(
      prepareInput({ setupCommands: [`echo ${canary}; exit 3`] }),
    );
    const ack = await client.initiateFromKilocodeSessionV2.mutate({ cloudAgentSessionId });
    const s = await openSocket(
      streamUrl(stack, { cloudAgentSessionId, ticket: await ticketFor(stack, alice, cloudAgentSessionId) }),
    );
    const frames = await waitFrames(s, (f) => terminalsOf(f).length >= 1);
    s.ws.close();
    const failed = terminalsOf(frames)[0];
    expect(failed).toMatchObject({
      streamEventType: "error",
      executionId: ack.executionId,
      data: { fatal: true },
    });
    const text = JSON.stringify(frames);
    expect(text).toContain("***");
    expect(text).not.toContain(canary);
    const logs = await client.getSessionLogs.query({ sessionId: cloudAgentSessionId });
    expect(logs.content).toContain("***");
    expect(logs.content).not.toContain(canary);
  });

  describe("error envelopes and HTTP statuses", () => {
    it("a missing or bad token is a tRPC UNAUTHORIZED JSON body (401)", async () => {
      for (const headers of [
        {},
        { authorization: "Bearer not-a-jwt" },
        { authorization: "Basic abc" },
      ] as Record<string, string>[]) {
        const res = await rawTrpc(stack, "health?batch=1&input=%7B%7D", { headers });
        expect(res.status).toBe(401);
        expect(res.headers.get("content-type")).toContain("application/json");
        expect(res.json).toEqual([
          {
            error: {
              message: expect.any(String),
              code: -32001,
              data: { code: "UNAUTHORIZED", httpStatus: 401, path: "health" },
            },
          },
        ]);
      }
      await expect(hostedClient(stack, "nope").health.query()).rejects.toMatchObject({
        data: { code: "UNAUTHORIZED", httpStatus: 401 },
      });
    });

    it("invalid input is BAD_REQUEST (400) naming the field, before any side effect", async () => {
      const client = hostedClient(stack, alice);
      const cases: Array<[Record<string, unknown>, string]> = [
        [prepareInput({ prompt: "" }), "prompt"],
        [prepareInput({ mode: "yolo" }), "mode"],
        [prepareInput({ githubRepo: "not a repo" }), "githubRepo"],
        [prepareInput({ envVars: { HOME: "/x" } }), "envVars"],
        [prepareInput({ setupCommands: Array.from({ length: 21 }, () => "true") }), "setupCommands"],
        [prepareInput({ upstreamBranch: "-bad" }), "upstreamBranch"],
        [prepareInput({ prompt: 42 }), "prompt"],
        [prepareInput({ gitUrl: "https://example.com/a.git" }), "repository"],
      ];
      for (const [input, field] of cases) {
        const err = (await client.prepareSession
          .mutate(input as never)
          .catch((e: unknown) => e)) as TRPCClientError<never>;
        expect(err, field).toBeInstanceOf(TRPCClientError);
        expect(err.data, field).toMatchObject({ code: "BAD_REQUEST", httpStatus: 400 });
        expect(err.message, field).toContain(field);
      }
      const { rows } = await stack.db.query(
        "SELECT count(*)::int AS n FROM session.sessions WHERE user_id = 'alice' AND prompt = ''",
      );
      expect(rows[0].n).toBe(0);
    });

    it("backend-only procedures without x-internal-api-key are FORBIDDEN (403)", async () => {
      const client = hostedClient(stack, alice, { internal: false });
      await expect(client.prepareSession.mutate(prepareInput())).rejects.toMatchObject({
        data: { code: "FORBIDDEN", httpStatus: 403 },
      });
    });

    it("method, procedure and batch rules are tRPC's own", async () => {
      const auth = { authorization: `Bearer ${alice}` };
      const wrongMethod = await rawTrpc(stack, "health", { method: "POST", headers: auth, body: {} });
      expect(wrongMethod.status).toBe(405);
      expect(wrongMethod.json).toMatchObject({
        error: { code: -32005, data: { code: "METHOD_NOT_SUPPORTED" } },
      });
      const unknown = await rawTrpc(stack, "nope?input=%7B%7D", { headers: auth });
      expect(unknown.status).toBe(404);
      expect(unknown.json).toMatchObject({ error: { code: -32004, data: { code: "NOT_FOUND" } } });
      const ok = await rawTrpc(stack, "health", { headers: auth });
      expect(ok.status).toBe(200);
      expect(ok.json).toMatchObject({ result: { data: { status: "ok" } } });

      const missing = "agent_00000000-0000-4000-8000-000000000000";
      const input = encodeURIComponent(JSON.stringify({ 0: {}, 1: { cloudAgentSessionId: missing } }));
      const mixed = await rawTrpc(stack, `health,getSession?batch=1&input=${input}`, { headers: auth });
      expect(mixed.status).toBe(207);
      expect(mixed.json).toMatchObject([
        { result: { data: { status: "ok" } } },
        { error: { code: -32004, data: { code: "NOT_FOUND", httpStatus: 404, path: "getSession" } } },
      ]);
      const head = await fetch(`${stack.gatewayUrl}/trpc/health`, { method: "HEAD", headers: auth });
      expect(head.status).toBe(204);
    });

    it("an id already taken is CONFLICT (409); an oversized body is PAYLOAD_TOO_LARGE (413)", async () => {
      const client = hostedClient(stack, alice);
      const legacy = {
        ...prepareInput(),
        cloudAgentSessionId: `agent_${crypto.randomUUID()}`,
        kiloSessionId: crypto.randomUUID(),
      };
      expect(await client.prepareLegacySession.mutate(legacy)).toEqual({
        cloudAgentSessionId: legacy.cloudAgentSessionId,
        kiloSessionId: legacy.kiloSessionId,
      });
      await expect(client.prepareLegacySession.mutate(legacy)).rejects.toMatchObject({
        data: { code: "CONFLICT", httpStatus: 409 },
      });
      const big = await rawTrpc(stack, "prepareSession", {
        method: "POST",
        headers: { authorization: `Bearer ${alice}` },
        body: prepareInput({ prompt: "x".repeat(3 * 1024 * 1024) }),
      });
      expect(big.status).toBe(413);
      expect(big.json).toMatchObject({ error: { code: -32013, data: { code: "PAYLOAD_TOO_LARGE" } } });
    });

    it("state errors are BAD_REQUEST and a full queue is TOO_MANY_REQUESTS (429)", async () => {
      const client = hostedClient(stack, alice);
      const { cloudAgentSessionId } = await client.prepareSession.mutate(prepareInput());
      await expect(
        client.sendMessageV2.mutate({ cloudAgentSessionId, prompt: "x", mode: "code", model: "m" }),
      ).rejects.toMatchObject({ data: { code: "BAD_REQUEST", httpStatus: 400 } });
      const first = await client.initiateFromKilocodeSessionV2.mutate({ cloudAgentSessionId });
      // Initiate is idempotent here (the hosted product answers BAD_REQUEST): the same execution.
      const again = await client.initiateFromKilocodeSessionV2.mutate({ cloudAgentSessionId });
      expect(again.executionId).toBe(first.executionId);
      const send = () =>
        client.sendMessageV2.mutate({
          cloudAgentSessionId,
          prompt: "more",
          mode: "code",
          model: "mock-model",
        });
      let refused: unknown;
      for (let i = 0; i < 20 && !refused; i++)
        refused = await send().then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(refused).toBeInstanceOf(TRPCClientError);
      expect((refused as TRPCClientError<never>).data).toMatchObject({
        code: "TOO_MANY_REQUESTS",
        httpStatus: 429,
      });
      await client.interruptSession.mutate({ sessionId: cloudAgentSessionId });
    });
  });
});
