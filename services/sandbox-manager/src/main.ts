import { createLogger, serveUntilSignal } from "@kilo-cloud/common";
import { buildSandboxManager, connectSandboxManagerInfra } from "./build.js";
import { loadSandboxManagerConfig } from "./config.js";

const config = loadSandboxManagerConfig(process.env);
const logger = createLogger({ service: "sandbox-manager", level: config.logLevel });
const infra = await connectSandboxManagerInfra(config, logger);
const app = await buildSandboxManager(config, infra);
await serveUntilSignal({
  name: "sandbox-manager",
  logger,
  handler: app.handler,
  port: config.port,
  host: config.host,
  fields: { driver: config.driver, isolation: config.isolation },
  close: async () => {
    await app.close();
    await infra.close();
  },
});
