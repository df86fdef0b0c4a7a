/**
 * `npm start`: the whole Kilo Cloud Agent in one process (see app/local-system.ts).
 *
 * With nothing configured it needs only Node: PostgreSQL is embedded (PGlite, data in
 * KILO_CLOUD_DATA_DIR, default ./.kilo-cloud) and events live in that database. Setting
 * DATABASE_URL and NATS_URL switches to a real PostgreSQL and NATS JetStream. Sandboxes use
 * bubblewrap (installed with apt when missing and running as root); SANDBOX_ISOLATION=none
 * runs without isolation, for development only.
 */
import { spawnSync } from "node:child_process";
import { resolve } from "node:path";
import { createLogger, EnvReader } from "@kilo-cloud/common";
import type { KiloProvider } from "@kilo-cloud/sandbox-manager";
import { startLocalSystem } from "../app/local-system.js";
import { ensureBubblewrap } from "./ensure-services.js";

const env = new EnvReader(process.env);
const isolation = env.oneOf("SANDBOX_ISOLATION", ["bwrap", "none"] as const, "bwrap");
const providerKind = env.oneOf("KILO_PROVIDER", ["kilo", "openai-compatible"] as const, "kilo");
const provider: KiloProvider =
  providerKind === "kilo"
    ? { kind: "kilo" }
    : {
        kind: "openai-compatible",
        baseUrl: env.url("KILO_PROVIDER_BASE_URL"),
        apiKey: env.string("KILO_PROVIDER_API_KEY", "none"),
        id: env.string("KILO_PROVIDER_ID", "cloud"),
      };
const appId = env.optional("GITHUB_APP_ID");
const options = {
  port: env.int("PORT", 8080, { min: 0, max: 65535 }),
  host: env.string("HOST", "127.0.0.1"),
  dataDir: resolve(env.string("KILO_CLOUD_DATA_DIR", ".kilo-cloud")),
  databaseUrl: env.optional("DATABASE_URL"),
  natsUrl: env.optional("NATS_URL"),
  provider,
  kiloBinary: env.optional("KILO_BIN"),
  isolation,
  allowInsecureGit: env.bool("GIT_ALLOW_INSECURE", false),
  outboundAllowHosts: (env.optional("SESSION_OUTBOUND_ALLOW_HOSTS") ?? "")
    .split(",")
    .map((h) => h.trim().toLowerCase())
    .filter((h) => h !== ""),
  callbackPolicy: {
    allowHttp: env.bool("CALLBACK_ALLOW_HTTP", false),
    allowLoopback: env.bool("CALLBACK_ALLOW_LOOPBACK", false),
    allowPrivate: env.bool("CALLBACK_ALLOW_PRIVATE", false),
  },
  github: appId
    ? {
        appId,
        privateKey: env.string("GITHUB_APP_PRIVATE_KEY").replace(/\\n/g, "\n"),
        apiUrl: env.optional("GITHUB_API_URL"),
      }
    : undefined,
  devUser: env.string("KILO_CLOUD_DEV_USER", "dev-user"),
};
const logger = createLogger({ service: "kilo-cloud", level: env.string("LOG_LEVEL", "info") });
try {
  env.done();
  const missing = (cmd: string, arg: string) => spawnSync(cmd, [arg], { stdio: "ignore" }).status !== 0;
  if (isolation === "bwrap" && (missing("bwrap", "--version") || missing("socat", "-V"))) {
    ensureBubblewrap();
  }
} catch (err) {
  process.stderr.write(`kilo-cloud: ${(err as Error).message}\n`);
  process.stderr.write(
    "(sandboxes need bubblewrap and socat: apt-get install bubblewrap socat; or set SANDBOX_ISOLATION=none to run without isolation)\n",
  );
  process.exit(1);
}

const system = await startLocalSystem({ ...options, env: process.env, logger }).catch((err: unknown) => {
  process.stderr.write(`kilo-cloud: could not start: ${(err as Error).message}\n`);
  process.exit(1);
});

process.stdout.write(
  [
    "",
    `Kilo Cloud Agent listening on ${system.url} (Connect, gRPC and gRPC-Web)`,
    `mode: ${system.mode}`,
    `data: ${options.dataDir}`,
    "",
    `The CLI is configured for user "${options.devUser}" (${system.cliConfigPath}):`,
    "  npx kilo-cloud run --repo owner/name --prompt 'Add a README'",
    "For other clients, a bearer token (24 hours; a new one at each start) and the backend key for PrepareSession:",
    `  export KILO_TOKEN=${system.token}`,
    `  export KILO_INTERNAL_KEY=${system.internalKey}`,
    "A backend encrypts encryptedSecrets (RSA-OAEP SHA-256 over an AES-256-GCM key) with the public key in:",
    `  ${system.envVarsPublicKeyPath}`,
    "",
  ].join("\n"),
);

let stopping = false;
const shutdown = async (signal: string) => {
  if (stopping) return;
  stopping = true;
  logger.info({ signal }, "shutting down");
  await system.close();
  process.exit(0);
};
process.once("SIGINT", () => void shutdown("SIGINT"));
process.once("SIGTERM", () => void shutdown("SIGTERM"));
