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
  const open = async (user: string, cloudAgentSessionId: string) => {
    const abort = new AbortController();
    const it = stack
      .stream(user)
      .subscribe({ cloudAgentSessionId }, { signal: abort.signal })
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
});
