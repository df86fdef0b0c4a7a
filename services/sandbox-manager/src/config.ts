import {
  ConfigError,
  type Env,
  EnvReader,
  type EventLogConfig,
  readEventLogConfig,
} from "@kilo-cloud/common";
import { type KubernetesDriverConfig, loadKubernetesDriverConfig } from "./drivers/kubernetes/config.js";
import { type LocalSandboxSettings, readLocalSandboxSettings } from "./drivers/local/settings.js";
import type { KiloProvider } from "./kilo/command.js";

export interface SandboxManagerConfig {
  port: number;
  host: string;
  /** The event log; this service owns the stream and applies the retention. */
  events: EventLogConfig;
  driver: "local" | "kubernetes";
  /** The kubernetes driver's settings (K8S_*), when SANDBOX_DRIVER=kubernetes. */
  kubernetes?: KubernetesDriverConfig | undefined;
  /** Where the local driver keeps sandboxes. */
  sandboxRoot: string;
  isolation: "bwrap" | "none";
  /** Network fence, egress allowlist and resource limits of local sandboxes. */
  localSandbox: LocalSandboxSettings;
  /** Executions this sandbox-manager runs at once; more are refused with RESOURCE_EXHAUSTED. */
  maxRunningExecutions: number;
  /** Host path of the kilo binary (default: the packaged @kilocode/cli-linux-x64). */
  kiloBinary?: string | undefined;
  provider: KiloProvider;
  /** PEM of the RSA key that opens encrypted secrets (AGENT_ENV_VARS_PRIVATE_KEY). */
  secretsPrivateKey?: string | undefined;
  githubBaseUrl: string;
  allowInsecureGit: boolean;
  executionTimeoutMs: number;
  idleTimeoutMs: number;
  setupTimeoutMs: number;
  cloneTimeoutMs: number;
  heartbeatIntervalMs: number;
  /** The session service's public key (it signs the calls it makes here). */
  serviceTokenPublicKey: string;
  /** GitHub App tokens for `githubRepo` sessions (absent: the session's own githubToken). */
  tokenService?: { url: string; privateKeyPem: string } | undefined;
  logLevel: string;
}

export function loadSandboxManagerConfig(env: Env): Readonly<SandboxManagerConfig> {
  const r = new EnvReader(env);
  const providerKind = r.oneOf("KILO_PROVIDER", ["kilo", "openai-compatible"] as const, "kilo");
  let provider: KiloProvider = { kind: "kilo" };
  if (providerKind === "openai-compatible") {
    provider = {
      kind: "openai-compatible",
      baseUrl: r.url("KILO_PROVIDER_BASE_URL"),
      apiKey: r.string("KILO_PROVIDER_API_KEY", "none"),
      id: r.string("KILO_PROVIDER_ID", "cloud"),
    };
  }
  const driver = r.oneOf("SANDBOX_DRIVER", ["local", "kubernetes"] as const, "local");
  const config: SandboxManagerConfig = {
    port: r.int("PORT", 8082, { min: 0, max: 65535 }),
    host: r.string("HOST", "0.0.0.0"),
    events: readEventLogConfig(r, { owner: true }),
    driver,
    kubernetes: driver === "kubernetes" ? kubernetesConfig(env, r) : undefined,
    sandboxRoot: r.string("SANDBOX_ROOT", "/var/lib/kilo-cloud"),
    isolation: r.oneOf("SANDBOX_ISOLATION", ["bwrap", "none"] as const, "bwrap"),
    localSandbox: readLocalSandboxSettings(r),
    maxRunningExecutions: r.int("MAX_RUNNING_EXECUTIONS", 8, { min: 1 }),
    kiloBinary: r.optional("KILO_BIN"),
    provider,
    secretsPrivateKey: r.optional("AGENT_ENV_VARS_PRIVATE_KEY")?.replace(/\\n/g, "\n"),
    githubBaseUrl: r.url("GITHUB_GIT_BASE_URL", "https://github.com"),
    allowInsecureGit: r.bool("GIT_ALLOW_INSECURE", false),
    executionTimeoutMs: r.int("EXECUTION_TIMEOUT_MS", 60 * 60_000, { min: 1_000 }),
    idleTimeoutMs: r.int("IDLE_TIMEOUT_MS", 10 * 60_000, { min: 1_000 }),
    setupTimeoutMs: r.int("SETUP_TIMEOUT_MS", 2 * 60_000, { min: 1_000 }),
    cloneTimeoutMs: r.int("CLONE_TIMEOUT_MS", 5 * 60_000, { min: 1_000 }),
    heartbeatIntervalMs: r.int("HEARTBEAT_INTERVAL_MS", 30_000, { min: 100 }),
    serviceTokenPublicKey: r.string("SERVICE_TOKEN_PUBLIC_KEY").replace(/\\n/g, "\n"),
    tokenService: r.optional("TOKEN_SERVICE_URL")
      ? {
          url: r.url("TOKEN_SERVICE_URL"),
          // sandbox-manager's own key; the token service holds its public half.
          privateKeyPem: r.string("SANDBOX_SERVICE_TOKEN_PRIVATE_KEY").replace(/\\n/g, "\n"),
        }
      : undefined,
    logLevel: r.string("LOG_LEVEL", "info"),
  };
  r.done();
  return Object.freeze(config);
}

/** The K8S_* settings, their problems reported with the others. */
function kubernetesConfig(env: Env, r: EnvReader): KubernetesDriverConfig | undefined {
  try {
    return loadKubernetesDriverConfig(env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    r.problem(err.message.replace(/^invalid configuration:\n\s*- /, ""));
    return undefined;
  }
}
