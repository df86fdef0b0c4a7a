import { createLogger, createPool, JetStreamEventLog, listen } from "@kilo-cloud/common";
import { CallbackSender } from "./callbacks/callbacks.js";
import { loadSessionConfig } from "./config.js";
import { createSessionService, migrateSessionSchema } from "./server.js";

const config = loadSessionConfig(process.env);
const logger = createLogger({ service: "session", level: config.logLevel });
const pool = createPool(config.databaseUrl, { applicationName: "kilo-cloud-session" });
await migrateSessionSchema(pool, logger);
const x = config.executions;
const events = x
  ? await JetStreamEventLog.connect({
      servers: x.natsUrl,
      stream: x.eventsStream,
      subjectPrefix: x.eventsSubjectPrefix,
      name: "session",
    })
  : undefined;
if (!x) logger.warn("SANDBOX_MANAGER_URL is not set: sessions can be prepared and read, but nothing runs");
const app = await createSessionService({
  pool,
  logger,
  sealingKeys: config.sealingKeys,
  serviceTokenPublicKey: config.serviceTokenPublicKey,
  ...(x && events
    ? {
        executions: {
          sandboxUrl: x.sandboxManagerUrl,
          serviceTokenPrivateKey: x.serviceTokenPrivateKey,
          events,
          dispatcher: { queueExpiryMs: x.queueExpiryMs, staleAfterMs: x.staleAfterMs },
          queue: {
            maxWaiting: x.queueMaxWaiting,
            heartbeatStaleMs: x.heartbeatStaleMs,
            caps: { maxActivePerUser: x.maxActivePerUser, maxActivePerOrg: x.maxActivePerOrg },
          },
          callbackPolicy: x.callbackPolicy,
          allowInsecureGit: x.allowInsecureGit,
          outboundAllowHosts: x.outboundAllowHosts,
          ...(x.callbackSigningSecret
            ? {
                callbacks: new CallbackSender({
                  secret: x.callbackSigningSecret,
                  policy: x.callbackPolicy,
                  logger,
                }),
              }
            : {}),
        },
      }
    : {}),
});
const server = await listen(app.handler, { port: config.port, host: config.host });
logger.info({ url: server.url }, "session service listening");

const shutdown = async (signal: string) => {
  logger.info({ signal }, "shutting down");
  await server.close();
  await app.close();
  await events?.close();
  await pool.end();
  process.exit(0);
};
process.once("SIGTERM", () => void shutdown("SIGTERM"));
process.once("SIGINT", () => void shutdown("SIGINT"));
