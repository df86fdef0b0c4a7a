import { createLogger, createServiceTokenSigner, JetStreamEventLog, listen } from "@kilo-cloud/common";
import { createTokenClient, TOKEN_SERVICE_CALLER_ISSUER } from "@kilo-cloud/token/client";
import { loadSandboxManagerConfig } from "./config.js";
import type { Driver } from "./drivers/driver.js";
import { kubernetesDriverOptions, loadKubernetesDriverConfig } from "./drivers/kubernetes/config.js";
import { KubernetesDriver } from "./drivers/kubernetes/kubernetes-driver.js";
import { LocalDriver } from "./drivers/local/local-driver.js";
import { localDriverConfinement } from "./drivers/local/settings.js";
import { DEFAULT_RUNNER_SETTINGS } from "./execution/runner.js";
import { packagedKiloBinary } from "./kilo/command.js";
import { createSandboxManager } from "./server.js";

const config = loadSandboxManagerConfig(process.env);
const logger = createLogger({ service: "sandbox-manager", level: config.logLevel });
async function createDriver(): Promise<Driver> {
  if (config.driver === "kubernetes") {
    // kilo, git and the tools live in the sandbox image; the pods are the sandboxes.
    const k8s = loadKubernetesDriverConfig(process.env);
    return KubernetesDriver.create({ ...kubernetesDriverOptions(k8s), logger });
  }
  const kiloBinary = config.kiloBinary ?? packagedKiloBinary();
  if (!kiloBinary) {
    logger.fatal("no kilo binary: install @kilocode/cli-linux-x64 or set KILO_BIN");
    process.exit(1);
  }
  return LocalDriver.create({
    rootDir: config.sandboxRoot,
    isolation: config.isolation,
    kiloBinary,
    logger,
    ...localDriverConfinement(config.localSandbox, config.provider),
  });
}
const driver = await createDriver();
const events = await JetStreamEventLog.connect({
  servers: config.natsUrl,
  stream: config.eventsStream,
  subjectPrefix: config.eventsSubjectPrefix,
  maxAgeMs: config.eventsMaxAgeMs,
  maxBytes: config.eventsMaxBytes,
  name: "sandbox-manager",
});
const tokens = config.tokenService
  ? createTokenClient({
      baseUrl: config.tokenService.url,
      sign: await createServiceTokenSigner(config.tokenService.privateKeyPem, TOKEN_SERVICE_CALLER_ISSUER),
    })
  : undefined;
if (!tokens)
  logger.warn("TOKEN_SERVICE_URL is not set: githubRepo sessions use the githubToken given at prepare time");
const app = await createSandboxManager({
  tokens,
  driver,
  events,
  logger,
  serviceTokenPublicKey: config.serviceTokenPublicKey,
  settings: {
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
  },
  eventsReady: async () => {
    if (events.nc.isClosed()) throw new Error("NATS connection closed");
  },
});
const server = await listen(app.handler, { port: config.port, host: config.host });
logger.info(
  { url: server.url, driver: config.driver, isolation: config.isolation },
  "sandbox-manager listening",
);

const shutdown = async (signal: string) => {
  logger.info({ signal }, "shutting down");
  await app.close();
  await server.close();
  await events.close();
  await driver.close();
  process.exit(0);
};
process.once("SIGTERM", () => void shutdown("SIGTERM"));
process.once("SIGINT", () => void shutdown("SIGINT"));
