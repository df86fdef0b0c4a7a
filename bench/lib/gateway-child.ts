/**
 * The gateway alone in its own process, for bench/events.ts: its StreamService.Subscribe
 * reads a JetStreamEventLog; Subscribe clients authenticate with stream tickets signed with
 * BENCH_TICKET_SECRET, so no session service is needed (nothing calls it). Run with
 * `node --expose-gc --import tsx`, with an IPC channel:
 *   → {type: "mem"}    ← {type: "mem", usage: process.memoryUsage() after two full GCs}
 *   → {type: "exit"}   (also when the parent goes away)
 *   ← {type: "ready", url}
 */
import { randomBytes } from "node:crypto";
import { createLogger, generateServiceKeyPair, listen } from "@kilo-cloud/common";
import { buildGateway, connectGatewayInfra, loadGatewayConfig } from "@kilo-cloud/gateway";
import { memoryAfterGc, type ParentMessage } from "./ipc.js";

const env = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

const keys = await generateServiceKeyPair();
const config = loadGatewayConfig({
  NATS_URL: env("BENCH_NATS_URL"),
  EVENTS_STREAM: env("BENCH_STREAM"),
  EVENTS_SUBJECT_PREFIX: env("BENCH_SUBJECT_PREFIX"),
  AUTH_HS256_SECRET: randomBytes(32).toString("hex"),
  INTERNAL_API_SECRET: randomBytes(16).toString("hex"),
  SERVICE_TOKEN_PRIVATE_KEY: keys.privateKeyPem,
  STREAM_TICKET_SECRET: env("BENCH_TICKET_SECRET"),
  // Never called: Subscribe with a ticket does not reach the session service.
  SESSION_SERVICE_URL: "http://127.0.0.1:9",
});
const logger = createLogger({ service: "gateway", level: "warn", destination: process.stderr });
const infra = await connectGatewayInfra(config, logger);
const app = await buildGateway(config, {
  ...infra,
  keepaliveMs: Number(process.env.BENCH_KEEPALIVE_MS ?? 15_000),
});
const server = await listen(app.handler, { port: 0, host: "127.0.0.1" });

const exit = async () => {
  app.close();
  await server.close(100).catch(() => undefined);
  await infra.close().catch(() => undefined);
  process.exit(0);
};
process.on("message", (m: ParentMessage) => {
  if (m.type === "mem") process.send?.({ type: "mem", usage: memoryAfterGc() });
  else if (m.type === "exit") void exit();
});
process.on("disconnect", () => void exit());
process.send?.({ type: "ready", url: server.url });
