/**
 * The per-user and per-organization caps on concurrent executions, through the gateway with
 * the session service's defaults (5 per user, 20 per organization). Without a
 * sandbox-manager the initiated sessions stay waiting to start, which counts the same.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { SessionState } from "@kilo-cloud/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Stack, startStack } from "./support/stack.js";

async function refusal(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("expected the call to fail");
}

describe("caps on concurrent executions", () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack();
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  const prepared = async (user: string, org?: string) => {
    await stack.login(user);
    const res = await stack.sessions(user).prepareSession({
      prompt: "Fix the flaky test",
      mode: "code",
      model: "anthropic/claude-sonnet-4.5",
      repository: { case: "githubRepo", value: "acme/widgets" },
      ...(org ? { kilocodeOrganizationId: org } : {}),
    });
    return res.cloudAgentSessionId;
  };
  const initiate = (user: string, id: string) =>
    stack.sessions(user).initiateSession({ cloudAgentSessionId: id });

  it("refuses a sixth concurrent session of one user with RESOURCE_EXHAUSTED and leaves it prepared", async () => {
    const ids = await Promise.all(Array.from({ length: 6 }, () => prepared("cap-alice")));
    for (const id of ids.slice(0, 5)) await initiate("cap-alice", id);
    const err = await refusal(initiate("cap-alice", ids[5]!));
    expect(err.code).toBe(Code.ResourceExhausted);
    expect(err.rawMessage).toContain("limit 5 per user");
    const sixth = await stack.sessions("cap-alice").getSession({ cloudAgentSessionId: ids[5]! });
    expect(sixth.session?.state).toBe(SessionState.PREPARED);

    // A follow-up to a session that already has work only joins its queue: accepted.
    await stack.sessions("cap-alice").sendMessage({ cloudAgentSessionId: ids[0]!, prompt: "and the docs" });
    // Another user is not affected.
    await initiate("cap-bob", await prepared("cap-bob"));

    // Once a slot frees (a session deleted), the refused one starts.
    await stack.sessions("cap-alice").deleteSession({ cloudAgentSessionId: ids[1]! });
    await initiate("cap-alice", ids[5]!);
  });

  it("admits exactly the cap when a user initiates many sessions at once", async () => {
    const ids = await Promise.all(Array.from({ length: 12 }, () => prepared("cap-carol")));
    const results = await Promise.allSettled(ids.map((id) => initiate("cap-carol", id)));
    const ok = results.filter((r) => r.status === "fulfilled").length;
    const refused = results.filter(
      (r) => r.status === "rejected" && ConnectError.from(r.reason).code === Code.ResourceExhausted,
    ).length;
    expect({ ok, refused }).toEqual({ ok: 5, refused: 7 });
  });

  it("refuses the 21st concurrent session of one organization, across its users", async () => {
    const org = "org-capped";
    for (let u = 0; u < 4; u++) {
      for (let i = 0; i < 5; i++) await initiate(`org-user-${u}`, await prepared(`org-user-${u}`, org));
    }
    const err = await refusal(initiate("org-user-4", await prepared("org-user-4", org)));
    expect(err.code).toBe(Code.ResourceExhausted);
    expect(err.rawMessage).toContain("limit 20 per organization");
    // The same user outside the organization still may.
    await initiate("org-user-4", await prepared("org-user-4"));
  });
});
