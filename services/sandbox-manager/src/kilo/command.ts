import { createRequire } from "node:module";
import { dirname, join } from "node:path";

/** How kilo reaches a model. */
export type KiloProvider =
  | {
      /** The Kilo gateway, with the calling user's Kilo token (production). */
      kind: "kilo";
    }
  | {
      /** Any OpenAI-compatible endpoint (self-hosted gateways, tests, the offline demo). */
      kind: "openai-compatible";
      baseUrl: string;
      /** Sent as the bearer key; given to kilo through the environment, never a file. */
      apiKey: string;
      /** The provider id in kilo's config (model ids are `<id>/<model>`). */
      id?: string;
    };

/** The reference's modes are kilo agents; kilo has no `architect`: it is `plan`. */
export function agentForMode(mode: string): string {
  return mode === "architect" ? "plan" : mode;
}

/** The packaged kilo binary (optional dependency `@kilocode/cli-linux-x64`), if installed. */
export function packagedKiloBinary(): string | undefined {
  try {
    const require = createRequire(import.meta.url);
    return join(dirname(require.resolve("@kilocode/cli-linux-x64/package.json")), "bin", "kilo");
  } catch {
    return undefined;
  }
}

/**
 * Environment that keeps kilo offline apart from its model provider: no model catalogue
 * download, telemetry, auto-update, sharing, presence, default plugins or external skills
 * (measured with strace: only the provider's traffic remains; see docs).
 */
export const KILO_OFFLINE_ENV: Readonly<Record<string, string>> = Object.freeze({
  KILO_DISABLE_MODELS_FETCH: "1",
  KILO_DISABLE_AUTOUPDATE: "1",
  KILO_TELEMETRY_LEVEL: "off",
  KILO_DISABLE_SHARE: "1",
  KILO_DISABLE_SESSION_INGEST: "1",
  KILO_DISABLE_PRESENCE: "1",
  KILO_NO_DAEMON: "1",
  KILO_DISABLE_DEFAULT_PLUGINS: "1",
  KILO_PURE: "1",
  KILO_DISABLE_LSP_DOWNLOAD: "1",
  KILO_DISABLE_CLAUDE_CODE: "1",
  KILO_DISABLE_EXTERNAL_SKILLS: "1",
});

/** An MCP server as stored by the session service (proto JSON of kilocode.cloudagent.v1.McpServer). */
export interface McpServerJson {
  stdio?: { command: string; args?: string[]; env?: Record<string, string>; cwd?: string };
  sse?: { url: string; headers?: Record<string, string> };
  streamableHttp?: { url: string; headers?: Record<string, string> };
  timeoutSeconds?: number;
  disabled?: boolean;
}

/** `${env:NAME}` in MCP headers and env values, resolved from the session environment. */
export function resolveEnvRefs(value: string, env: Record<string, string>): string {
  return value.replace(/\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}/g, (_, name: string) => env[name] ?? "");
}

function resolveAll(
  map: Record<string, string> | undefined,
  env: Record<string, string>,
): Record<string, string> {
  return Object.fromEntries(Object.entries(map ?? {}).map(([k, v]) => [k, resolveEnvRefs(v, env)]));
}

/** MCP servers in the shape the current kilo reads from its config (`mcp` key). */
export function kiloMcpConfig(
  servers: Record<string, McpServerJson>,
  env: Record<string, string>,
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, s] of Object.entries(servers)) {
    const common = {
      enabled: !s.disabled,
      ...(s.timeoutSeconds ? { timeout: s.timeoutSeconds * 1000 } : {}),
    };
    if (s.stdio) {
      out[name] = {
        type: "local",
        command: [s.stdio.command, ...(s.stdio.args ?? [])],
        environment: resolveAll(s.stdio.env, env),
        ...common,
      };
    } else {
      const remote = s.sse ?? s.streamableHttp;
      if (!remote) continue;
      out[name] = { type: "remote", url: remote.url, headers: resolveAll(remote.headers, env), ...common };
    }
  }
  return out;
}

export interface KiloInvocation {
  argv: string[];
  /** Variables to add to the session environment for the kilo process. */
  env: Record<string, string>;
}

/**
 * The kilo command for one execution: `kilo run --format json --auto` with the prompt on
 * stdin, the model, the agent for the mode, and the session to continue. Configuration
 * (provider, MCP servers, permissions) goes in KILO_CONFIG_CONTENT, so nothing with a key
 * or header is written to disk; external-directory writes are denied.
 */
export function kiloInvocation(opts: {
  provider: KiloProvider;
  model: string;
  mode: string;
  kiloSessionId?: string | undefined;
  mcpServers: Record<string, McpServerJson>;
  sessionEnv: Record<string, string>;
  kiloToken?: string | undefined;
}): KiloInvocation {
  const env: Record<string, string> = { ...KILO_OFFLINE_ENV };
  let providerId: string;
  const config: Record<string, unknown> = {
    autoupdate: false,
    share: "disabled",
    experimental: { openTelemetry: false },
    permission: { bash: "allow", edit: "allow", external_directory: "deny" },
  };
  if (opts.provider.kind === "kilo") {
    providerId = "kilo";
    env.KILO_AUTH_CONTENT = JSON.stringify(
      opts.kiloToken ? { kilo: { type: "api", key: opts.kiloToken } } : {},
    );
  } else {
    providerId = opts.provider.id ?? "cloud";
    env.KILO_AUTH_CONTENT = "{}";
    env.KILO_CLOUD_PROVIDER_KEY = opts.provider.apiKey;
    config.provider = {
      [providerId]: {
        npm: "@ai-sdk/openai-compatible",
        name: "Kilo Cloud Agent provider",
        options: { baseURL: opts.provider.baseUrl, apiKey: "{env:KILO_CLOUD_PROVIDER_KEY}" },
        models: {
          [opts.model]: { name: opts.model, tool_call: true, limit: { context: 128000, output: 8192 } },
        },
      },
    };
  }
  const model = `${providerId}/${opts.model}`;
  Object.assign(config, { model, small_model: model, enabled_providers: [providerId] });
  const mcp = kiloMcpConfig(opts.mcpServers, opts.sessionEnv);
  if (Object.keys(mcp).length > 0) config.mcp = mcp;
  env.KILO_CONFIG_CONTENT = JSON.stringify(config);
  const argv = [
    "kilo",
    "run",
    "--format",
    "json",
    "--auto",
    "--model",
    model,
    "--agent",
    agentForMode(opts.mode),
  ];
  if (opts.kiloSessionId) argv.push("--session", opts.kiloSessionId);
  return { argv, env };
}
