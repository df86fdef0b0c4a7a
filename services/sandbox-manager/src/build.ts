import {
  type ConnectedEventLog,
  connectEventLog,
  createServiceTokenSigner,
  type EventLog,
  type Logger,
} from "@kilo-cloud/common";
import { createTokenClient, TOKEN_SERVICE_CALLER_ISSUER } from "@kilo-cloud/token/client";
import type { SandboxManagerConfig } from "./config.js";
import type { Driver } from "./drivers/driver.js";
import { kubernetesDriverOptions } from "./drivers/kubernetes/config.js";
import { KubernetesDriver } from "./drivers/kubernetes/kubernetes-driver.js";
import { LocalDriver } from "./drivers/local/local-driver.js";
import { localDriverConfinement } from "./drivers/local/settings.js";
import { DEFAULT_RUNNER_SETTINGS, type RepositoryTokens, type RunnerSettings } from "./execution/runner.js";
import { packagedKiloBinary } from "./kilo/command.js";
import { createSandboxManager, type SandboxManagerApp } from "./server.js";

/** What sandbox-manager runs on, connected (main.ts makes it; tests may share theirs). */
export interface SandboxManagerInfra {
  logger: Logger;
  driver: Driver;
  /** The event log, provisioned by this service (it owns the stream). */
  events: EventLog;
  eventsReady?: () => Promise<void>;
  /** Replaces the token-service client made from TOKEN_SERVICE_URL. */
  tokens?: RepositoryTokens;
  /** Knobs with no variable (tests: fast heartbeats). */
  settings?: Partial<RunnerSettings>;
}

/** The runner's settings from the config. */
export function runnerSettings(config: SandboxManagerConfig): RunnerSettings {
  return {
    ...DEFAULT_RUNNER_SETTINGS,
    provider: config.provider,
    secretsPrivateKey: config.secretsPrivateKey,
    githubBaseUrl: config.githubBaseUrl,
    allowInsecureGit: config.allowInsecureGit,
    executionTimeoutMs: config.executionTimeoutMs,
    idleTimeoutMs: config.idleTimeoutMs,
    setupTimeoutMs: config.setupTimeoutMs,
    cloneTimeoutMs: config.cloneTimeoutMs,
    heartbeatIntervalMs: config.heartbeatIntervalMs,
    maxRunningExecutions: config.maxRunningExecutions,
  };
}

/** sandbox-manager's one composition root: main.ts, the one-process mode and the test stacks call it. */
export async function buildSandboxManager(
  config: SandboxManagerConfig,
  infra: SandboxManagerInfra,
): Promise<SandboxManagerApp> {
  const tokens = infra.tokens ?? (await tokenClient(config));
  if (!tokens)
    infra.logger.warn(
      "TOKEN_SERVICE_URL is not set: githubRepo sessions use the githubToken given at prepare time",
    );
  return createSandboxManager({
    tokens,
    driver: infra.driver,
    events: infra.events,
    logger: infra.logger,
    serviceTokenPublicKey: config.serviceTokenPublicKey,
    settings: { ...runnerSettings(config), ...infra.settings },
    ...(infra.eventsReady ? { eventsReady: infra.eventsReady } : {}),
  });
}

async function tokenClient(config: SandboxManagerConfig): Promise<RepositoryTokens | undefined> {
  if (!config.tokenService) return undefined;
  return createTokenClient({
    baseUrl: config.tokenService.url,
    sign: await createServiceTokenSigner(config.tokenService.privateKeyPem, TOKEN_SERVICE_CALLER_ISSUER),
  });
}

/** The configured sandbox driver: pods (kubernetes) or bubblewrap sandboxes on this host (local). */
export async function createDriver(config: SandboxManagerConfig, logger: Logger): Promise<Driver> {
  if (config.kubernetes) {
    // kilo, git and the tools live in the sandbox image; the pods are the sandboxes.
    return KubernetesDriver.create({ ...kubernetesDriverOptions(config.kubernetes), logger });
  }
  const kiloBinary = config.kiloBinary ?? packagedKiloBinary();
  if (!kiloBinary) throw new Error("no kilo binary: install @kilocode/cli-linux-x64 or set KILO_BIN");
  return LocalDriver.create({
    rootDir: config.sandboxRoot,
    isolation: config.isolation,
    kiloBinary,
    logger,
    ...localDriverConfinement(config.localSandbox, config.provider),
  });
}

/** Connects what the config names: the driver and the event log (provisioned: this service owns it). */
export async function connectSandboxManagerInfra(
  config: SandboxManagerConfig,
  logger: Logger,
): Promise<SandboxManagerInfra & { close(): Promise<void> }> {
  const driver = await createDriver(config, logger);
  let log: ConnectedEventLog;
  try {
    log = await connectEventLog(config.events, { name: "sandbox-manager", logger });
  } catch (err) {
    await driver.close();
    throw err;
  }
  return {
    logger,
    driver,
    events: log.events,
    eventsReady: log.ready,
    async close() {
      await log.close();
      await driver.close();
    },
  };
}
