/**
 * URLs a session names (git remote, remote MCP servers) are refused at prepare and update
 * when they point at loopback, private, link-local or metadata addresses — as IP literals in
 * any spelling or as names that resolve there — before anything is stored.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Stack, startStack } from "./support/stack.js";

const USER = "url-user";

async function refusal(p: Promise<unknown>): Promise<ConnectError> {
  try {
    await p;
  } catch (err) {
    return ConnectError.from(err);
  }
  throw new Error("expected the call to fail");
}

const BAD_HOSTS = [
  "127.0.0.1",
  "2130706433", // 127.0.0.1 as one number
  "0x7f.1",
  "[::1]",
  "[::ffff:127.0.0.1]",
  "localhost", // a name that resolves to loopback
  "10.1.2.3",
  "192.168.0.10",
  "172.16.5.4",
  "169.254.169.254", // cloud metadata
  "[fd00::1]",
  "100.64.0.1",
  "0.0.0.0",
];

describe("outbound URLs of a session", () => {
  let stack: Stack;
  const base = {
    prompt: "Fix it",
    mode: "code",
    model: "anthropic/claude-sonnet-4.5",
  };
  beforeAll(async () => {
    stack = await startStack();
    await stack.login(USER);
  });
  afterAll(async () => {
    await stack?.[Symbol.asyncDispose]();
  });

  const count = async () =>
    (await stack.db.query("SELECT count(*)::int AS n FROM session.sessions WHERE user_id = $1", [USER]))
      .rows[0].n as number;

  it.each(BAD_HOSTS)("refuses a git URL on %s and stores nothing", async (host) => {
    const before = await count();
    const err = await refusal(
      stack.sessions(USER).prepareSession({
        ...base,
        repository: { case: "gitUrl", value: `https://${host}/acme/widgets.git` },
      }),
    );
    expect(err.code).toBe(Code.InvalidArgument);
    // The proto rules refuse some spellings first; the address policy the rest.
    expect(err.rawMessage).toMatch(
      /git_url: (it is|it resolves to) an? (loopback|private|link-local|cloud metadata|shared|unspecified)|^invalid request: git_url/,
    );
    expect(await count()).toBe(before);
  });

  it.each(BAD_HOSTS)("refuses an MCP server URL on %s at prepare and at update", async (host) => {
    const mcp = (kind: "sse" | "streamableHttp") => ({
      values: { tools: { transport: { case: kind, value: { url: `https://${host}/mcp` } } } },
    });
    const err = await refusal(
      stack.sessions(USER).prepareSession({
        ...base,
        repository: { case: "githubRepo", value: "acme/widgets" },
        mcpServers: mcp("sse"),
      }),
    );
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage).toContain('mcp_servers.values["tools"].sse.url');

    const { cloudAgentSessionId } = await stack.sessions(USER).prepareSession({
      ...base,
      repository: { case: "githubRepo", value: "acme/widgets" },
    });
    const upd = await refusal(
      stack.sessions(USER).updateSession({ cloudAgentSessionId, mcpServers: mcp("streamableHttp") }),
    );
    expect(upd.code).toBe(Code.InvalidArgument);
    expect(upd.rawMessage).toContain('mcp_servers.values["tools"].streamable_http.url');
    const info = await stack.sessions(USER).getSession({ cloudAgentSessionId });
    expect(info.session?.mcpServerCount).toBe(0);
  });

  it("accepts public literals and names that do not resolve here", async () => {
    for (const url of ["https://8.8.8.8/a/b.git", "https://git.example.com/acme/widgets.git"]) {
      await stack.sessions(USER).prepareSession({ ...base, repository: { case: "gitUrl", value: url } });
    }
  });
});
