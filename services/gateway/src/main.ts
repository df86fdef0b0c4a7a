import { createLogger, listen } from "@kilo-cloud/common";
import { loadGatewayConfig } from "./config.js";
import { createGateway } from "./server.js";

const config = loadGatewayConfig(process.env);
const logger = createLogger({ service: "gateway", level: config.logLevel });
const app = await createGateway({ logger, ...config });
const server = await listen(app.handler, {
  port: config.port,
  host: config.host,
  timeouts: config.limits.timeouts,
});
logger.info({ url: server.url }, "gateway listening");

const shutdown = async (signal: string) => {
  logger.info({ signal }, "shutting down");
  app.close();
  await server.close();
  process.exit(0);
};
process.once("SIGTERM", () => void shutdown("SIGTERM"));
process.once("SIGINT", () => void shutdown("SIGINT"));
