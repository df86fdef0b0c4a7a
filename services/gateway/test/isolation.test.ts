import { randomUUID } from "node:crypto";
import { type MessageInitShape, toJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { type PrepareSessionRequestSchema, SessionInfoSchema, SessionService } from "@kilo-cloud/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { INTERNAL_API_KEY, type Stack, startStack } from "./support/stack.js";

const prepareRequest = (): MessageInitShape<typeof PrepareSessionRequestSchema> => ({
  prompt: "refactor the parser",
  mode: "code",
  model: "mock/model",
  repository: { case: "githubRepo", value: "acme/widgets" },
  githubToken: "ghp_alice_token_value",
  envVars: { values: { FOO: "bar" } },
});

/** What a caller can observe of a failed call. */
interface Observed {
  code: Code;
  message: string;
  details: unknown;
  metadata: [string, string][];
}

async function observe(p: Promise<unknown>): Promise<Observed> {
  try {
    await p;
  } catch (err) {
    const ce = ConnectError.from(err);
    return {
      code: ce.code,
      message: ce.rawMessage,
      details: ce.details,
      metadata: [...ce.metadata.entries()].filter(([k]) => k !== "date").sort(),
    };
  }
  throw new Error("expected the call to fail");
}

/** The JSON of every method a user can call on one session id (Connect protocol, as sent). */
const RPC_BODIES: Record<string, (id: string) => unknown> = {
  GetSession: (id) => ({ cloudAgentSessionId: id }),
  UpdateSession: (id) => ({ cloudAgentSessionId: id, model: "mock/evil", githubToken: "ghp_bob" }),
  DeleteSession: (id) => ({ cloudAgentSessionId: id }),
  InitiateSession: (id) => ({ cloudAgentSessionId: id }),
  SendMessage: (id) => ({ cloudAgentSessionId: id, prompt: "leak it" }),
  InterruptSession: (id) => ({ cloudAgentSessionId: id }),
  CreateStreamTicket: (id) => ({ cloudAgentSessionId: id }),
};

describe("isolation between users", () => {
  let stack: Stack;
  let bobToken: string;

  beforeAll(async () => {
    stack = await startStack();
    await stack.login("alice");
    bobToken = await stack.login("bob");
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  /** Bob's calls, through the typed client (with the internal API key, so no method is refused for lack of it). */
  const bobCalls = (id: string) => {
    const bob = stack.sessions("bob");
    return {
      GetSession: () => bob.getSession({ cloudAgentSessionId: id }),
      UpdateSession: () =>
        bob.updateSession({ cloudAgentSessionId: id, model: "mock/evil", githubToken: "ghp_bob" }),
      DeleteSession: () => bob.deleteSession({ cloudAgentSessionId: id }),
      InitiateSession: () => bob.initiateSession({ cloudAgentSessionId: id }),
      SendMessage: () => bob.sendMessage({ cloudAgentSessionId: id, prompt: "leak it" }),
      InterruptSession: () => bob.interruptSession({ cloudAgentSessionId: id }),
      CreateStreamTicket: () => bob.createStreamTicket({ cloudAgentSessionId: id }),
    };
  };

  /** One Connect unary call with fetch: the exact status, headers and body bytes. */
  const raw = async (method: string, body: unknown) => {
    const res = await fetch(new URL(`/${SessionService.typeName}/${method}`, stack.gatewayUrl), {
      method: "POST",
      headers: {
        "content-type": "application/json",
        authorization: `Bearer ${bobToken}`,
        "x-internal-api-key": INTERNAL_API_KEY,
      },
      body: JSON.stringify(body),
    });
    const headers = [...res.headers.entries()].filter(([k]) => k !== "date").sort();
    return { status: res.status, headers, body: await res.text() };
  };

  const snapshot = async (id: string) => {
    const got = await stack.sessions("alice").getSession({ cloudAgentSessionId: id });
    const { rows } = await stack.db.query("SELECT t::text AS row FROM session.sessions t WHERE id = $1", [
      id,
    ]);
    const executions = await stack.db.query(
      "SELECT count(*)::int AS n FROM session.executions WHERE session_id = $1",
      [id],
    );
    return {
      info: toJsonString(SessionInfoSchema, got.session!),
      version: got.session!.version,
      row: rows[0]?.row as string,
      executions: executions.rows[0].n as number,
    };
  };

  it("every SessionService RPC on another user's session is NOT_FOUND, identical to a missing session", async () => {
    const aliceId = (await stack.sessions("alice").prepareSession(prepareRequest())).cloudAgentSessionId;
    const before = await snapshot(aliceId);
    const missingId = `agent_${randomUUID()}`;

    const foreign = bobCalls(aliceId);
    const missing = bobCalls(missingId);
    for (const name of Object.keys(foreign) as (keyof typeof foreign)[]) {
      const a = await observe(foreign[name]());
      const m = await observe(missing[name]());
      expect(a.code, name).toBe(Code.NotFound);
      expect(m.code, name).toBe(Code.NotFound);
      // The message names the id the caller gave, and nothing else differs.
      expect(a.message, name).toBe(`session ${aliceId} not found`);
      expect(a.message.replaceAll(aliceId, "<id>"), name).toBe(m.message.replaceAll(missingId, "<id>"));
      expect(JSON.stringify(a.details), name).toBe(JSON.stringify(m.details));
      expect(a.metadata, name).toEqual(m.metadata);
      // On the wire too (status, headers and body).
      const ra = await raw(name, RPC_BODIES[name]!(aliceId));
      const rm = await raw(name, RPC_BODIES[name]!(missingId));
      expect(ra.status, name).toBe(404);
      expect(ra.body.replaceAll(aliceId, "<id>"), name).toBe(rm.body.replaceAll(missingId, "<id>"));
      expect(ra.headers, name).toEqual(rm.headers);
    }

    // PrepareLegacySession with alice's id: NOT_FOUND, worded like a missing session.
    const bob = stack.sessions("bob");
    const legacy = await observe(
      bob.prepareLegacySession({
        cloudAgentSessionId: aliceId,
        kiloSessionId: randomUUID(),
        session: { ...prepareRequest(), prompt: "mine now", githubToken: "ghp_bob" },
      }),
    );
    const missingGet = await observe(bob.getSession({ cloudAgentSessionId: missingId }));
    expect(legacy.code).toBe(Code.NotFound);
    expect(legacy.message.replaceAll(aliceId, "<id>")).toBe(missingGet.message.replaceAll(missingId, "<id>"));
    expect(JSON.stringify(legacy.details)).toBe(JSON.stringify(missingGet.details));
    expect(legacy.metadata).toEqual(missingGet.metadata);

    // Alice's session is untouched: same version, same row, not initiated, no execution.
    const after = await snapshot(aliceId);
    expect(after).toEqual(before);
    expect(after.version).toBe(1n);
    expect(after.executions).toBe(0);
    // The missing id stayed missing (no method created it).
    const { rows } = await stack.db.query("SELECT count(*)::int AS n FROM session.sessions WHERE id = $1", [
      missingId,
    ]);
    expect(rows[0].n).toBe(0);
  });

  it("for the same id, a foreign session and a deleted one answer byte for byte alike", async () => {
    const alice = stack.sessions("alice");
    const id = (await alice.prepareSession(prepareRequest())).cloudAgentSessionId;
    const whileForeign: Record<string, unknown> = {};
    for (const [name, run] of Object.entries(bobCalls(id))) {
      whileForeign[name] = { typed: await observe(run()), raw: await raw(name, RPC_BODIES[name]!(id)) };
    }
    await alice.deleteSession({ cloudAgentSessionId: id });
    expect((await observe(alice.getSession({ cloudAgentSessionId: id }))).code).toBe(Code.NotFound);
    for (const [name, run] of Object.entries(bobCalls(id))) {
      const now = { typed: await observe(run()), raw: await raw(name, RPC_BODIES[name]!(id)) };
      expect(now, name).toEqual(whileForeign[name]);
    }
  });

  it("the owner still sees and drives the session afterwards", async () => {
    const alice = stack.sessions("alice");
    const id = (await alice.prepareSession(prepareRequest())).cloudAgentSessionId;
    for (const run of Object.values(bobCalls(id))) await observe(run());
    const updated = await alice.updateSession({ cloudAgentSessionId: id, expectedVersion: 1n, mode: "ask" });
    expect(updated.session?.version).toBe(2n);
    expect(updated.session?.model).toBe("mock/model");
    const started = await alice.initiateSession({ cloudAgentSessionId: id });
    expect(started.executionId).toMatch(/^exec_/);
    const initiated = await snapshot(id);
    // …and bob still learns nothing of it in its new state: not its state (FAILED_PRECONDITION)
    // nor its version (ABORTED).
    const missingId = `agent_${randomUUID()}`;
    const foreign = bobCalls(id);
    const missing = bobCalls(missingId);
    for (const name of Object.keys(foreign) as (keyof typeof foreign)[]) {
      const a = await observe(foreign[name]());
      const m = await observe(missing[name]());
      expect(a.code, name).toBe(Code.NotFound);
      expect(a.message.replaceAll(id, "<id>"), name).toBe(m.message.replaceAll(missingId, "<id>"));
    }
    const bob = stack.sessions("bob");
    for (const expectedVersion of [1n, 3n, 99n]) {
      const err = await observe(bob.updateSession({ cloudAgentSessionId: id, expectedVersion, mode: "ask" }));
      expect(err.code).toBe(Code.NotFound);
    }
    expect(await snapshot(id)).toEqual(initiated);
    expect(initiated.executions).toBe(1);
  });
});
