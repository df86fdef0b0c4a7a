import { createLogger, serveUntilSignal } from "@kilo-cloud/common";
import { buildToken, connectTokenInfra } from "./build.js";
import { loadTokenConfig } from "./config.js";

const config = loadTokenConfig(process.env);
const logger = createLogger({ service: "token", level: config.logLevel });
const infra = await connectTokenInfra(config, logger);
const app = await buildToken(config, infra);
await serveUntilSignal({
  name: "token service",
  logger,
  handler: app.handler,
  port: config.port,
  host: config.host,
  fields: { githubApiUrl: config.githubApiUrl },
  close: () => infra.close(),
});
