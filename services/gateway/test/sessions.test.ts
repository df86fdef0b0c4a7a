import { randomUUID } from "node:crypto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { PrepareSessionRequestSchema } from "@kilo-cloud/proto";
import { ExecutionStatus, SessionField, SessionState } from "@kilo-cloud/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Stack, startStack } from "./support/stack.js";

type PrepareInit = Exclude<MessageInitShape<typeof PrepareSessionRequestSchema>, { $typeName: string }>;

function validPrepare(over: Partial<PrepareInit> = {}): PrepareInit {
  const base: PrepareInit = {
    prompt: "Add a README",
    mode: "code",
    model: "anthropic/claude-sonnet-4.5",
    repository: { case: "githubRepo", value: "acme/widgets" },
    githubToken: "ghs_prepare_token",
    autoCommit: true,
    envVars: { values: { A: "1", B: "2" } },
    setupCommands: { values: ["npm ci", "npm run build"] },
    mcpServers: {
      values: {
        docs: {
          transport: { case: "streamableHttp", value: { url: "https://mcp.example.com/" } },
          timeoutSeconds: 30,
        },
      },
    },
  };
  return { ...base, ...over } as PrepareInit;
}

async function codeOf(p: Promise<unknown>): Promise<Code> {
  try {
    await p;
  } catch (err) {
    return ConnectError.from(err).code;
  }
  throw new Error("expected the call to fail");
}

describe("sessions through the gateway", () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await startStack();
    await stack.login("alice");
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  const prepare = async (over: Partial<PrepareInit> = {}) =>
    stack.sessions("alice").prepareSession(validPrepare(over));
  const get = async (id: string) =>
    (await stack.sessions("alice").getSession({ cloudAgentSessionId: id })).session!;

  it("prepares a session with generated ids and returns its sanitized shape", async () => {
    const res = await prepare({
      kilocodeOrganizationId: "org-1",
      botId: "reviewer",
      upstreamBranch: "develop",
    });
    expect(res.cloudAgentSessionId).toMatch(/^agent_[0-9a-f-]{36}$/);
    expect(res.kiloSessionId).toMatch(/^[0-9a-f-]{36}$/);
    expect(res.version).toBe(1n);
    const s = await get(res.cloudAgentSessionId);
    expect(s).toMatchObject({
      cloudAgentSessionId: res.cloudAgentSessionId,
      kiloSessionId: res.kiloSessionId,
      userId: "alice",
      orgId: "org-1",
      botId: "reviewer",
      githubRepo: "acme/widgets",
      prompt: "Add a README",
      mode: "code",
      model: "anthropic/claude-sonnet-4.5",
      autoCommit: true,
      upstreamBranch: "develop",
      envVarCount: 2,
      setupCommandCount: 2,
      mcpServerCount: 1,
      encryptedSecretCount: 0,
      hasGithubToken: true,
      hasGitToken: false,
      hasCallbackTarget: false,
      state: SessionState.PREPARED,
      version: 1n,
    });
    expect(s.preparedAt).toBeDefined();
    expect(s.initiatedAt).toBeUndefined();
  });

  describe("UpdateSession semantics: absent = unchanged, clear = null, empty = cleared, value = set", () => {
    it("absent fields are left unchanged (and a no-op does not move the version)", async () => {
      const { cloudAgentSessionId: id } = await prepare();
      const res = await stack.sessions("alice").updateSession({ cloudAgentSessionId: id });
      expect(res.session).toMatchObject({
        mode: "code",
        model: "anthropic/claude-sonnet-4.5",
        envVarCount: 2,
        version: 1n,
      });
    });

    it("values are set, collections replaced as a whole", async () => {
      const { cloudAgentSessionId: id } = await prepare();
      const res = await stack.sessions("alice").updateSession({
        cloudAgentSessionId: id,
        mode: "architect",
        model: "other/model",
        autoCommit: false,
        envVars: { values: { ONLY: "x" } },
        setupCommands: { values: ["make"] },
        gitToken: "new-token",
      });
      expect(res.session).toMatchObject({
        mode: "architect",
        model: "other/model",
        autoCommit: false,
        envVarCount: 1,
        setupCommandCount: 1,
        mcpServerCount: 1,
        hasGitToken: true,
        hasGithubToken: true,
        version: 2n,
      });
    });

    it("listed scalar fields are cleared", async () => {
      const { cloudAgentSessionId: id } = await prepare();
      const res = await stack.sessions("alice").updateSession({
        cloudAgentSessionId: id,
        clear: [SessionField.MODE, SessionField.MODEL, SessionField.GITHUB_TOKEN, SessionField.AUTO_COMMIT],
      });
      expect(res.session?.mode).toBeUndefined();
      expect(res.session?.model).toBeUndefined();
      expect(res.session?.autoCommit).toBeUndefined();
      expect(res.session?.hasGithubToken).toBe(false);
      expect(res.session?.version).toBe(2n);
      // The stored token is gone, not just hidden.
      const { rows } = await stack.db.query(
        "SELECT github_token_sealed FROM session.sessions WHERE id = $1",
        [id],
      );
      expect(rows[0].github_token_sealed).toBeNull();
    });

    it("empty collections clear them", async () => {
      const { cloudAgentSessionId: id } = await prepare();
      const res = await stack.sessions("alice").updateSession({
        cloudAgentSessionId: id,
        envVars: { values: {} },
        setupCommands: { values: [] },
        mcpServers: { values: {} },
      });
      expect(res.session).toMatchObject({ envVarCount: 0, setupCommandCount: 0, mcpServerCount: 0 });
      const { rows } = await stack.db.query(
        "SELECT env_vars_sealed, setup_commands_sealed, mcp_servers_sealed FROM session.sessions WHERE id = $1",
        [id],
      );
      expect(rows[0]).toEqual({
        env_vars_sealed: null,
        setup_commands_sealed: null,
        mcp_servers_sealed: null,
      });
    });

    it("a field cannot be both set and cleared", async () => {
      const { cloudAgentSessionId: id } = await prepare();
      const err = await stack
        .sessions("alice")
        .updateSession({ cloudAgentSessionId: id, mode: "ask", clear: [SessionField.MODE] })
        .catch((e) => ConnectError.from(e));
      expect(err).toBeInstanceOf(ConnectError);
      expect((err as ConnectError).code).toBe(Code.InvalidArgument);
      expect((err as ConnectError).rawMessage).toContain("both set and cleared");
    });
  });

  describe("optimistic concurrency", () => {
    it("an update with the current expected version applies; a stale one is ABORTED", async () => {
      const { cloudAgentSessionId: id } = await prepare();
      const ok = await stack
        .sessions("alice")
        .updateSession({ cloudAgentSessionId: id, expectedVersion: 1n, mode: "ask" });
      expect(ok.session?.version).toBe(2n);
      expect(
        await codeOf(
          stack
            .sessions("alice")
            .updateSession({ cloudAgentSessionId: id, expectedVersion: 1n, mode: "debug" }),
        ),
      ).toBe(Code.Aborted);
      expect((await get(id)).mode).toBe("ask");
    });

    it("concurrent updates with the same expected version: exactly one wins", async () => {
      const { cloudAgentSessionId: id } = await prepare();
      const c = stack.sessions("alice");
      const attempts = ["ask", "debug", "orchestrator", "architect", "code"].map((mode) =>
        c.updateSession({ cloudAgentSessionId: id, expectedVersion: 1n, mode }).then(
          (r) => ({ ok: true as const, mode: r.session?.mode }),
          (e) => ({ ok: false as const, code: ConnectError.from(e).code }),
        ),
      );
      const results = await Promise.all(attempts);
      const winners = results.filter((r) => r.ok);
      expect(winners).toHaveLength(1);
      expect(results.filter((r) => !r.ok).every((r) => "code" in r && r.code === Code.Aborted)).toBe(true);
      const s = await get(id);
      expect(s.version).toBe(2n);
      expect(s.mode).toBe(winners[0]?.mode);
    });
  });

  describe("state machine", () => {
    it("initiate moves prepared → initiated, is idempotent, and freezes the configuration", async () => {
      const { cloudAgentSessionId: id } = await prepare();
      const c = stack.sessions("alice");
      const first = await c.initiateSession({ cloudAgentSessionId: id });
      expect(first).toMatchObject({
        cloudAgentSessionId: id,
        status: ExecutionStatus.QUEUED,
        streamUrl: `/stream?cloudAgentSessionId=${id}`,
      });
      expect(first.executionId).toMatch(/^exec_/);
      const again = await c.initiateSession({ cloudAgentSessionId: id });
      expect(again.executionId).toBe(first.executionId);
      const { rows } = await stack.db.query(
        "SELECT count(*)::int AS n FROM session.executions WHERE session_id = $1",
        [id],
      );
      expect(rows[0].n).toBe(1);

      const s = await get(id);
      expect(s.state).toBe(SessionState.INITIATED);
      expect(s.initiatedAt).toBeDefined();
      const err = await c
        .updateSession({ cloudAgentSessionId: id, mode: "ask" })
        .catch((e) => ConnectError.from(e));
      expect((err as ConnectError).code).toBe(Code.FailedPrecondition);
      expect((err as ConnectError).rawMessage).toContain("only prepared sessions can be updated");
    });

    it("initiate needs a model", async () => {
      const { cloudAgentSessionId: id } = await prepare();
      const c = stack.sessions("alice");
      await c.updateSession({ cloudAgentSessionId: id, clear: [SessionField.MODEL] });
      expect(await codeOf(c.initiateSession({ cloudAgentSessionId: id }))).toBe(Code.FailedPrecondition);
      expect((await get(id)).state).toBe(SessionState.PREPARED);
    });
  });

  describe("legacy sessions", () => {
    it("keeps the given ids", async () => {
      const id = `agent_${randomUUID()}`;
      const kiloSessionId = "ses_df5920bccffe0ST1nIuW0q7GqA";
      const session = validPrepare();
      const res = await stack
        .sessions("alice")
        .prepareLegacySession({ cloudAgentSessionId: id, kiloSessionId, session });
      expect(res).toMatchObject({ cloudAgentSessionId: id, kiloSessionId, version: 1n });
      expect((await get(id)).kiloSessionId).toBe(kiloSessionId);
      expect(
        await codeOf(
          stack.sessions("alice").prepareLegacySession({ cloudAgentSessionId: id, kiloSessionId, session }),
        ),
      ).toBe(Code.AlreadyExists);
    });
  });

  it("ListSessions pages through the caller's sessions, newest first, and only theirs", async () => {
    await stack.login("carol");
    await stack.login("dave");
    const carol = stack.sessions("carol");
    const ids: string[] = [];
    for (let i = 0; i < 5; i++)
      ids.push((await carol.prepareSession(validPrepare({ prompt: `p${i}` }))).cloudAgentSessionId);
    await stack.sessions("dave").prepareSession(validPrepare());
    const seen: string[] = [];
    let pageToken = "";
    do {
      const page = await carol.listSessions({ pageSize: 2, pageToken });
      expect(page.sessions.length).toBeLessThanOrEqual(2);
      seen.push(...page.sessions.map((s) => s.cloudAgentSessionId));
      pageToken = page.nextPageToken;
    } while (pageToken);
    expect(seen).toEqual([...ids].reverse());
    expect(await codeOf(carol.listSessions({ pageToken: "garbage" }))).toBe(Code.InvalidArgument);
  });

  it("DeleteSession removes the session and its executions", async () => {
    const { cloudAgentSessionId: id } = await prepare();
    const c = stack.sessions("alice");
    await c.initiateSession({ cloudAgentSessionId: id });
    await c.deleteSession({ cloudAgentSessionId: id });
    expect(await codeOf(c.getSession({ cloudAgentSessionId: id }))).toBe(Code.NotFound);
    const { rows } = await stack.db.query(
      "SELECT count(*)::int AS n FROM session.executions WHERE session_id = $1",
      [id],
    );
    expect(rows[0].n).toBe(0);
    expect(await codeOf(c.deleteSession({ cloudAgentSessionId: id }))).toBe(Code.NotFound);
  });
});
