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
import { createLogger, generateServiceKeyPair, JetStreamEventLog, listen } from "@kilo-cloud/common";
import { createGateway } from "@kilo-cloud/gateway";
import { memoryAfterGc, type ParentMessage } from "./ipc.js";

const env = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

const events = await JetStreamEventLog.connect({
  servers: env("BENCH_NATS_URL"),
  stream: env("BENCH_STREAM"),
  subjectPrefix: env("BENCH_SUBJECT_PREFIX"),
  name: "gateway",
});
const keys = await generateServiceKeyPair();
const app = await createGateway({
  logger: createLogger({ service: "gateway", level: "warn", destination: process.stderr }),
  userTokens: { hs256Secret: randomBytes(32).toString("hex") },
  internalApiKey: randomBytes(16).toString("hex"),
  serviceTokenPrivateKey: keys.privateKeyPem,
  streamTicketSecret: env("BENCH_TICKET_SECRET"),
  // Never called: Subscribe with a ticket does not reach the session service.
  sessionServiceUrl: "http://127.0.0.1:9",
  events,
  keepaliveMs: Number(process.env.BENCH_KEEPALIVE_MS ?? 15_000),
});
const server = await listen(app.handler, { port: 0, host: "127.0.0.1" });

const exit = async () => {
  app.close();
  await server.close(100).catch(() => undefined);
  await events.close().catch(() => undefined);
  process.exit(0);
};
process.on("message", (m: ParentMessage) => {
  if (m.type === "mem") process.send?.({ type: "mem", usage: memoryAfterGc() });
  else if (m.type === "exit") void exit();
});
process.on("disconnect", () => void exit());
process.send?.({ type: "ready", url: server.url });
