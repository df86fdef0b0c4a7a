/**
 * The per-user cap on open Subscribe streams (here 2), through the gateway with a real
 * event log (PostgreSQL): one more is RESOURCE_EXHAUSTED, other users are not affected,
 * and a closed stream frees its slot.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Stack, startStack } from "./support/stack.js";

describe("cap on open streams per user", () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack({ streams: { keepaliveMs: 200, maxStreamsPerUser: 2 } });
    await stack.login("streamer");
    await stack.login("other");
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  const sessionOf = async (user: string) =>
    (
      await stack.sessions(user).prepareSession({
        prompt: "Watch me",
        mode: "code",
        model: "anthropic/claude-sonnet-4.5",
        repository: { case: "githubRepo", value: "acme/widgets" },
      })
    ).cloudAgentSessionId;

  /** Opens a stream and waits for its first message (a keep-alive): the stream is open. */
  const open = async (user: string, cloudAgentSessionId: string, fromId?: bigint) => {
    const abort = new AbortController();
    const it = stack
      .stream(user)
      .subscribe(
        { cloudAgentSessionId, ...(fromId !== undefined ? { fromId } : {}) },
        { signal: abort.signal },
      )
      [Symbol.asyncIterator]();
    const first = await it.next();
    expect(first.done).toBe(false);
    return { close: () => abort.abort() };
  };

  it("refuses a third stream, lets another user open theirs, and frees a slot on close", async () => {
    const id = await sessionOf("streamer");
    const a = await open("streamer", id);
    const b = await open("streamer", id);
    const err = await open("streamer", id).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(err?.code).toBe(Code.ResourceExhausted);
    expect(err?.rawMessage).toContain("limit 2 per user");

    const other = await open("other", await sessionOf("other"));

    a.close();
    // The server notices the closed stream at its next write (a keep-alive): retry until then.
    let c: { close(): void } | undefined;
    for (let i = 0; i < 50 && !c; i++) {
      c = await open("streamer", id).catch(async () => {
        await new Promise((r) => setTimeout(r, 100));
        return undefined;
      });
    }
    expect(c).toBeDefined();
    b.close();
    c?.close();
    other.close();
  });

  it("answers INVALID_ARGUMENT to a from_id of 2^63 or more", async () => {
    const id = await sessionOf("other");
    for (const fromId of [2n ** 63n, 2n ** 64n - 1n]) {
      const err = await open("other", id, fromId).then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect(err?.code).toBe(Code.InvalidArgument);
      expect(err?.rawMessage).toContain("from_id");
    }
    const ok = await open("other", id, 2n ** 63n - 1n);
    ok.close();
  });

  it("answers INVALID_ARGUMENT to page tokens it did not write", async () => {
    const enc = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
    const odd = [
      "%%%",
      enc(["+275760-09-13T00:00:00.000000Z", "agent_123e4567-e89b-12d3-a456-426614174000"]),
      enc(["1", "agent_123e4567-e89b-12d3-a456-426614174000"]),
      enc(["2026-01-01T00:00:00.000000Z", "x\u0000y"]),
      enc(["2026-13-45T99:99:99.999999Z", "agent_123e4567-e89b-12d3-a456-426614174000"]),
      enc(["2026-02-30T00:00:00.000000Z", "agent_123e4567-e89b-12d3-a456-426614174000"]),
      enc({ at: 1 }),
    ];
    for (const pageToken of odd) {
      const err = await stack
        .sessions("other")
        .listSessions({ pageToken })
        .then(
          () => undefined,
          (e: unknown) => ConnectError.from(e),
        );
      expect({ pageToken, code: err?.code }).toEqual({ pageToken, code: Code.InvalidArgument });
    }
  });
});
