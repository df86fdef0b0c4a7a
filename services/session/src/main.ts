import { createLogger, createPool, listen } from "@kilo-cloud/common";
import { loadSessionConfig } from "./config.js";
import { createSessionService, migrateSessionSchema } from "./server.js";

const config = loadSessionConfig(process.env);
const logger = createLogger({ service: "session", level: config.logLevel });
const pool = createPool(config.databaseUrl, { applicationName: "kilo-cloud-session" });
await migrateSessionSchema(pool, logger);
const app = await createSessionService({
  pool,
  logger,
  sealingKeys: config.sealingKeys,
  serviceTokenPublicKey: config.serviceTokenPublicKey,
});
const server = await listen(app.handler, { port: config.port, host: config.host });
logger.info({ url: server.url }, "session service listening");

const shutdown = async (signal: string) => {
  logger.info({ signal }, "shutting down");
  await server.close();
  await pool.end();
  process.exit(0);
};
process.once("SIGTERM", () => void shutdown("SIGTERM"));
process.once("SIGINT", () => void shutdown("SIGINT"));
