import { createLogger, createPool, listen } from "@kilo-cloud/common";
import { loadTokenConfig } from "./config.js";
import { createTokenService, migrateTokenSchema } from "./server.js";

const config = loadTokenConfig(process.env);
const logger = createLogger({ service: "token", level: config.logLevel });
const pool = createPool(config.databaseUrl, { applicationName: "kilo-cloud-token" });
await migrateTokenSchema(pool, logger);
const app = await createTokenService({
  pool,
  logger,
  sealingKeys: config.sealingKeys,
  serviceTokenPublicKey: config.serviceTokenPublicKey,
  internalApiKey: config.internalApiSecret,
  github: {
    appId: config.githubAppId,
    privateKey: config.githubAppPrivateKey,
    apiUrl: config.githubApiUrl,
    timeoutMs: config.githubTimeoutMs,
  },
  cacheMarginMs: config.cacheMarginMs,
});
const server = await listen(app.handler, { port: config.port, host: config.host });
logger.info({ url: server.url, githubApiUrl: config.githubApiUrl }, "token service listening");

const shutdown = async (signal: string) => {
  logger.info({ signal }, "shutting down");
  await server.close();
  await pool.end();
  process.exit(0);
};
process.once("SIGTERM", () => void shutdown("SIGTERM"));
process.once("SIGINT", () => void shutdown("SIGINT"));
