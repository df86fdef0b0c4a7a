// biome-ignore-all lint/suspicious/noTemplateCurlyInString: ${env:NAME} is kilo's reference syntax under test
import { describe, expect, it } from "vitest";
import { agentForMode, kiloInvocation, kiloMcpConfig, resolveEnvRefs } from "./command.js";

describe("kilo invocation", () => {
  const base = {
    provider: {
      kind: "openai-compatible" as const,
      baseUrl: "http://127.0.0.1:9/v1",
      apiKey: "sk-provider-key",
      id: "mock",
    },
    model: "mock-model",
    mode: "code",
    mcpServers: {},
    sessionEnv: {},
  };

  it("maps the reference's modes to kilo agents (architect → plan)", () => {
    expect(["code", "architect", "ask", "debug", "orchestrator"].map(agentForMode)).toEqual([
      "code",
      "plan",
      "ask",
      "debug",
      "orchestrator",
    ]);
  });

  it("runs `kilo run` with JSON output, auto-approve, the model and the agent; the session to continue", () => {
    const first = kiloInvocation({ ...base, mode: "architect" });
    expect(first.argv).toEqual([
      "kilo",
      "run",
      "--format",
      "json",
      "--auto",
      "--model",
      "mock/mock-model",
      "--agent",
      "plan",
    ]);
    const next = kiloInvocation({ ...base, kiloSessionId: "ses_abc" });
    expect(next.argv.slice(-2)).toEqual(["--session", "ses_abc"]);
  });

  it("keeps keys and tokens out of argv and out of the config text (env references only)", () => {
    const inv = kiloInvocation({ ...base, kiloToken: "kilo-user-token" });
    expect(inv.argv.join(" ")).not.toContain("sk-provider-key");
    const config = JSON.parse(inv.env.KILO_CONFIG_CONTENT ?? "{}");
    expect(JSON.stringify(config)).not.toContain("sk-provider-key");
    expect(config.provider.mock.options.apiKey).toBe("{env:KILO_CLOUD_PROVIDER_KEY}");
    expect(inv.env.KILO_CLOUD_PROVIDER_KEY).toBe("sk-provider-key");
    expect(config.permission).toMatchObject({ external_directory: "deny" });
    expect(config.enabled_providers).toEqual(["mock"]);
    expect(config.autoupdate).toBe(false);
    expect(inv.env.KILO_DISABLE_MODELS_FETCH).toBe("1");
  });

  it("gives the Kilo gateway the caller's token through the auth environment", () => {
    const inv = kiloInvocation({ ...base, provider: { kind: "kilo" }, kiloToken: "kilo-user-token" });
    expect(inv.argv).toContain("kilo/mock-model");
    expect(JSON.parse(inv.env.KILO_AUTH_CONTENT ?? "{}")).toEqual({
      kilo: { type: "api", key: "kilo-user-token" },
    });
    expect(inv.env.KILO_CONFIG_CONTENT).not.toContain("kilo-user-token");
  });

  it("puts MCP servers where the current kilo reads them, resolving ${env:VAR} from the session env", () => {
    const env = { GITHUB_PAT: "pat-123", TOKEN: "t" };
    const mcp = kiloMcpConfig(
      {
        github: {
          streamableHttp: {
            url: "https://api.githubcopilot.com/mcp/",
            headers: { Authorization: "Bearer ${env:GITHUB_PAT}" },
          },
          timeoutSeconds: 120,
        },
        events: { sse: { url: "https://mcp.example.com/sse", headers: {} }, disabled: true },
        local: {
          stdio: {
            command: "node",
            args: ["server.mjs"],
            env: { KEY: "${env:TOKEN}-x", MISSING: "${env:NOPE}" },
          },
        },
      },
      env,
    );
    expect(mcp).toEqual({
      github: {
        type: "remote",
        url: "https://api.githubcopilot.com/mcp/",
        headers: { Authorization: "Bearer pat-123" },
        enabled: true,
        timeout: 120_000,
      },
      events: { type: "remote", url: "https://mcp.example.com/sse", headers: {}, enabled: false },
      local: {
        type: "local",
        command: ["node", "server.mjs"],
        environment: { KEY: "t-x", MISSING: "" },
        enabled: true,
      },
    });
    const inv = kiloInvocation({
      ...base,
      mcpServers: { github: { streamableHttp: { url: "https://x.example/mcp" } } },
      sessionEnv: env,
    });
    expect(JSON.parse(inv.env.KILO_CONFIG_CONTENT ?? "{}").mcp.github.type).toBe("remote");
  });

  it("resolves only well-formed references", () => {
    expect(resolveEnvRefs("${env:A} ${env:} $env:A ${env:A-B}", { A: "1" })).toBe(
      "1 ${env:} $env:A ${env:A-B}",
    );
  });
});
