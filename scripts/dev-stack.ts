/**
 * `npm start`: the gateway and the session service in one process, for a laptop.
 *
 * Without DATABASE_URL it uses the local PostgreSQL (installed and started like the tests
 * do) and a database `kilo_cloud`. Secrets that are not configured are generated once and
 * kept in .kilo-cloud/dev-secrets.json, so sealed data survives a restart. It prints a
 * bearer token and the internal API key for local use. Production runs each service on
 * its own (services/<name>/src/main.ts) with real secrets.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  createLogger,
  createPool,
  generateServiceKeyPair,
  listen,
  parseSealingKeys,
} from "@kilo-cloud/common";
import { createGateway } from "@kilo-cloud/gateway";
import { createSessionService, migrateSessionSchema } from "@kilo-cloud/session";
import { SignJWT } from "jose";
import pg from "pg";
import { ensurePostgres } from "./ensure-services.js";

interface DevSecrets {
  sealingKeys: string;
  hs256Secret: string;
  internalApiKey: string;
  streamTicketSecret: string;
  serviceKeys: { privateKeyPem: string; publicKeyPem: string };
}

const dataDir = process.env.KILO_CLOUD_DATA_DIR ?? join(process.cwd(), ".kilo-cloud");
const secretsFile = join(dataDir, "dev-secrets.json");

async function devSecrets(): Promise<DevSecrets> {
  if (existsSync(secretsFile)) return JSON.parse(readFileSync(secretsFile, "utf8")) as DevSecrets;
  const secrets: DevSecrets = {
    sealingKeys: `dev1:${randomBytes(32).toString("base64")}`,
    hs256Secret: randomBytes(32).toString("hex"),
    internalApiKey: randomBytes(24).toString("hex"),
    streamTicketSecret: randomBytes(32).toString("hex"),
    serviceKeys: await generateServiceKeyPair(),
  };
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  writeFileSync(secretsFile, JSON.stringify(secrets, null, 2), { mode: 0o600 });
  return secrets;
}

async function databaseUrl(): Promise<string> {
  if (process.env.DATABASE_URL) return process.env.DATABASE_URL;
  ensurePostgres();
  const admin = new pg.Client({ connectionString: "postgres://postgres:postgres@127.0.0.1:5432/postgres" });
  await admin.connect();
  const { rowCount } = await admin.query("SELECT 1 FROM pg_database WHERE datname = 'kilo_cloud'");
  if (!rowCount) await admin.query("CREATE DATABASE kilo_cloud");
  await admin.end();
  return "postgres://postgres:postgres@127.0.0.1:5432/kilo_cloud";
}

const env = process.env;
const secrets = await devSecrets();
const logger = createLogger({ service: "kilo-cloud", level: env.LOG_LEVEL ?? "info" });
const pool = createPool(await databaseUrl());
await migrateSessionSchema(pool, logger);

const session = await createSessionService({
  pool,
  logger: logger.child({ component: "session" }),
  sealingKeys: parseSealingKeys(env.SESSION_SEALING_KEYS ?? secrets.sealingKeys),
  serviceTokenPublicKey: secrets.serviceKeys.publicKeyPem,
});
const sessionServer = await listen(session.handler, { port: 0, host: "127.0.0.1" });

const hs256Secret = env.AUTH_HS256_SECRET ?? secrets.hs256Secret;
const internalApiKey = env.INTERNAL_API_SECRET ?? secrets.internalApiKey;
const gateway = await createGateway({
  logger: logger.child({ component: "gateway" }),
  userTokens: { hs256Secret, userIdClaim: env.AUTH_USER_ID_CLAIM ?? "sub" },
  internalApiKey,
  serviceTokenPrivateKey: secrets.serviceKeys.privateKeyPem,
  streamTicketSecret: env.STREAM_TICKET_SECRET ?? secrets.streamTicketSecret,
  sessionServiceUrl: sessionServer.url,
});
const port = Number(env.PORT ?? 8080);
const server = await listen(gateway.handler, { port, host: env.HOST ?? "127.0.0.1" });

const devUser = env.KILO_CLOUD_DEV_USER ?? "dev-user";
const token = await new SignJWT({})
  .setProtectedHeader({ alg: "HS256" })
  .setSubject(devUser)
  .setIssuedAt()
  .setExpirationTime("12h")
  .sign(new TextEncoder().encode(hs256Secret));

process.stdout.write(
  [
    "",
    `Kilo Cloud Agent listening on ${server.url} (Connect, gRPC and gRPC-Web)`,
    "mode: local (gateway + session in one process, PostgreSQL)",
    `data: ${dataDir}`,
    "",
    `A bearer token for user "${devUser}" (valid 12 h):`,
    `  export KILO_TOKEN=${token}`,
    "The internal API key (x-internal-api-key) for PrepareSession/UpdateSession:",
    `  export KILO_INTERNAL_KEY=${internalApiKey}`,
    "",
  ].join("\n"),
);

const shutdown = async () => {
  gateway.close();
  await server.close();
  await sessionServer.close();
  await pool.end();
  process.exit(0);
};
process.once("SIGINT", () => void shutdown());
process.once("SIGTERM", () => void shutdown());
