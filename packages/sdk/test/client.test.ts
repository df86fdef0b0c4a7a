import { Code, ConnectError, createRouterTransport, type ServiceImpl } from "@connectrpc/connect";
import { createKiloCloudClient, EventType, SessionService, StreamService } from "@kilo-cloud/sdk";
import { describe, expect, it } from "vitest";

type SessionImpl = Partial<ServiceImpl<typeof SessionService>>;
type StreamImpl = Partial<ServiceImpl<typeof StreamService>>;

/** A client over an in-memory router with the given handlers, retries fast. */
function clientOn(session: SessionImpl, stream: StreamImpl = {}, auth = { token: "tok-1" }) {
  return createKiloCloudClient({
    baseUrl: "http://in-memory",
    ...auth,
    retry: { baseDelayMs: 1, maxDelayMs: 5 },
    transport: (interceptors) =>
      createRouterTransport(
        (router) => {
          router.service(SessionService, session);
          router.service(StreamService, stream);
        },
        { transport: { interceptors } },
      ),
  });
}

const event = (id: number, executionId = "exec_1") => ({
  id: BigInt(id),
  cloudAgentSessionId: "agent_1",
  executionId,
  payload: { case: "output" as const, value: { content: `line ${id}` } },
});

describe("retries", () => {
  it("repeats GetSession on UNAVAILABLE until it answers", async () => {
    let calls = 0;
    const client = clientOn({
      getSession() {
        if (++calls < 3) throw new ConnectError("down", Code.Unavailable);
        return { session: { cloudAgentSessionId: "agent_1" } };
      },
    });
    const res = await client.sessions.getSession({ cloudAgentSessionId: "agent_1" });
    expect(res.session?.cloudAgentSessionId).toBe("agent_1");
    expect(calls).toBe(3);
  });

  it("gives up after maxAttempts and surfaces UNAVAILABLE", async () => {
    let calls = 0;
    const client = clientOn({
      listSessions() {
        calls++;
        throw new ConnectError("down", Code.Unavailable);
      },
    });
    await expect(client.sessions.listSessions({})).rejects.toMatchObject({ code: Code.Unavailable });
    expect(calls).toBe(4);
  });

  it("never repeats a call with side effects (PrepareSession, InitiateSession)", async () => {
    let prepares = 0;
    let initiates = 0;
    const client = clientOn({
      prepareSession() {
        prepares++;
        throw new ConnectError("down", Code.Unavailable);
      },
      initiateSession() {
        initiates++;
        throw new ConnectError("down", Code.Unavailable);
      },
    });
    await expect(client.sessions.prepareSession({ prompt: "x" })).rejects.toMatchObject({
      code: Code.Unavailable,
    });
    await expect(client.sessions.initiateSession({ cloudAgentSessionId: "agent_1" })).rejects.toMatchObject({
      code: Code.Unavailable,
    });
    expect([prepares, initiates]).toEqual([1, 1]);
  });

  it("does not retry an idempotent call on other codes", async () => {
    let calls = 0;
    const client = clientOn({
      deleteSession() {
        calls++;
        throw new ConnectError("nope", Code.Internal);
      },
    });
    await expect(client.sessions.deleteSession({ cloudAgentSessionId: "agent_1" })).rejects.toMatchObject({
      code: Code.Internal,
    });
    expect(calls).toBe(1);
  });
});

describe("auth", () => {
  it("sends the bearer token from getToken on each call, and the internal key", async () => {
    const seen: (string | null)[][] = [];
    let n = 0;
    const client = clientOn(
      {
        getSession(_req, ctx) {
          seen.push([ctx.requestHeader.get("authorization"), ctx.requestHeader.get("x-internal-api-key")]);
          return {};
        },
      },
      {},
      { getToken: async () => `tok-${++n}`, internalApiKey: "ik" } as never,
    );
    await client.sessions.getSession({ cloudAgentSessionId: "agent_1" });
    await client.sessions.getSession({ cloudAgentSessionId: "agent_1" });
    expect(seen).toEqual([
      ["Bearer tok-1", "ik"],
      ["Bearer tok-2", "ik"],
    ]);
  });
});

describe("subscribe", () => {
  it("resumes from the last id after a dropped connection, skipping nothing and doubling nothing", async () => {
    const requests: { fromId: bigint | undefined; executionIds: string[]; eventTypes: EventType[] }[] = [];
    const client = clientOn(
      {},
      {
        async *subscribe(req) {
          requests.push({ fromId: req.fromId, executionIds: req.executionIds, eventTypes: req.eventTypes });
          const from = Number(req.fromId ?? 0n);
          if (requests.length === 1) {
            yield { event: event(1) };
            yield { keepalive: true };
            yield { event: event(2) };
            yield { event: event(3) };
            throw new ConnectError("connection reset", Code.Unavailable);
          }
          if (requests.length === 2) {
            // A server that replays its last delivered event must not double it.
            yield { event: event(from) };
            yield { event: event(from + 1) };
            return; // the server ends the stream (a restart): resume again
          }
          for (let id = from + 1; id <= 6; id++) yield { event: event(id) };
        },
      },
    );
    const ids: bigint[] = [];
    for await (const e of client.subscribe("agent_1", {
      executionIds: ["exec_1"],
      types: [EventType.OUTPUT],
    })) {
      ids.push(e.id);
      if (e.id === 6n) break;
    }
    expect(ids).toEqual([1n, 2n, 3n, 4n, 5n, 6n]);
    expect(requests.map((r) => r.fromId)).toEqual([undefined, 3n, 4n]);
    expect(requests[1]?.executionIds).toEqual(["exec_1"]);
    expect(requests[1]?.eventTypes).toEqual([EventType.OUTPUT]);
  });

  it("starts after fromId and throws errors that a reconnect cannot fix", async () => {
    let calls = 0;
    const client = clientOn(
      {},
      {
        // biome-ignore lint/correctness/useYield: it refuses before any event
        async *subscribe(req) {
          calls++;
          expect(req.fromId).toBe(41n);
          throw new ConnectError("older than retained", Code.OutOfRange);
        },
      },
    );
    const iterate = async () => {
      for await (const _ of client.subscribe("agent_1", { fromId: 41n })) {
      }
    };
    await expect(iterate()).rejects.toMatchObject({ code: Code.OutOfRange });
    expect(calls).toBe(1);
  });

  it("ends without an error when the caller's signal aborts", async () => {
    const abort = new AbortController();
    const client = clientOn(
      {},
      {
        async *subscribe(_req, ctx) {
          yield { event: event(1) };
          await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
        },
      },
    );
    const ids: bigint[] = [];
    for await (const e of client.subscribe("agent_1", { signal: abort.signal })) {
      ids.push(e.id);
      abort.abort();
    }
    expect(ids).toEqual([1n]);
  });
});

describe("over fetch", () => {
  it("reports a server it cannot reach as UNAVAILABLE and retries an idempotent call", async () => {
    let calls = 0;
    const client = createKiloCloudClient({
      baseUrl: "http://127.0.0.1:1",
      token: "t",
      retry: { baseDelayMs: 1, maxDelayMs: 2 },
      fetch: async () => {
        calls++;
        throw new TypeError("fetch failed");
      },
    });
    await expect(client.sessions.getSession({ cloudAgentSessionId: "agent_1" })).rejects.toMatchObject({
      code: Code.Unavailable,
    });
    expect(calls).toBe(4);
  });
});
