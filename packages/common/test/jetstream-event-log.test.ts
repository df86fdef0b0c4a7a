import { randomBytes } from "node:crypto";
import { startNats, type TestNats } from "@kilo-cloud/testing";
import { jetstreamManager } from "@nats-io/jetstream";
import { afterAll, beforeAll } from "vitest";
import { JetStreamEventLog } from "../src/index.js";
import { eventLogContract } from "./event-log-contract.js";

let nats: TestNats;
let log: JetStreamEventLog;
const stream = `T_${randomBytes(4).toString("hex")}`;

beforeAll(async () => {
  nats = await startNats();
  log = await JetStreamEventLog.connect({ servers: nats.url, stream, subjectPrefix: `t.${stream}` });
});
afterAll(async () => {
  await log?.close();
  await nats?.[Symbol.asyncDispose]();
});

eventLogContract("JetStream", () => ({
  log: () => log,
  async dropBefore(id) {
    const jsm = await jetstreamManager(log.nc);
    await jsm.streams.purge(stream, { seq: Number(id) });
  },
}));
