import { createLogger, serveUntilSignal } from "@kilo-cloud/common";
import { buildGateway, connectGatewayInfra } from "./build.js";
import { loadGatewayConfig } from "./config.js";

const config = loadGatewayConfig(process.env);
const logger = createLogger({ service: "gateway", level: config.logLevel });
const infra = await connectGatewayInfra(config, logger);
const app = await buildGateway(config, infra);
await serveUntilSignal({
  name: "gateway",
  logger,
  handler: app.handler,
  port: config.port,
  host: config.host,
  timeouts: config.limits.timeouts,
  stopping: () => app.close(),
  close: () => infra.close(),
});
