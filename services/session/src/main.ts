import { createLogger, serveUntilSignal } from "@kilo-cloud/common";
import { buildSession, connectSessionInfra } from "./build.js";
import { loadSessionConfig } from "./config.js";

const config = loadSessionConfig(process.env);
const logger = createLogger({ service: "session", level: config.logLevel });
const infra = await connectSessionInfra(config, logger);
const app = await buildSession(config, infra);
await serveUntilSignal({
  name: "session service",
  logger,
  handler: app.handler,
  port: config.port,
  host: config.host,
  close: async () => {
    await app.close();
    await infra.close();
  },
});
