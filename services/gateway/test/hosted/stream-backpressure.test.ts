import { randomBytes } from "node:crypto";
import { connect, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import {
  createLogger,
  JetStreamEventLog,
  listen,
  newExecutionId,
  newSessionId,
  type RunningServer,
} from "@kilo-cloud/common";
import { EventSchema, OutputSource } from "@kilo-cloud/proto";
import { startNats, type TestNats } from "@kilo-cloud/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createStreamTickets } from "../../src/handlers/stream-tickets.js";
import { CLOSE } from "../../src/stream-ws/pump.js";
import { createStreamSocket } from "../../src/stream-ws/stream-socket.js";
import { openSocket } from "./ws-client.js";

/**
 * `/stream` backpressure with a real JetStream event log: a client that stops reading is
 * closed with CLOSE.tooSlow once it stays behind, having received a bounded amount, while
 * a client that reads gets every event of the same large session.
 */

const EVENTS = 1500;
const CONTENT = "x".repeat(8 * 1024);
const HIGH_WATER = 64 * 1024;

describe("/stream backpressure", { timeout: 120_000 }, () => {
  let nats: TestNats;
  let log: JetStreamEventLog;
  let server: RunningServer;
  const shutdown = new AbortController();
  const tickets = createStreamTickets(randomBytes(32).toString("hex"));
  const sessionId = newSessionId();

  beforeAll(async () => {
    nats = await startNats();
    const stream = `T_${randomBytes(4).toString("hex")}`;
    log = await JetStreamEventLog.connect({ servers: nats.url, stream, subjectPrefix: `t.${stream}` });
    const executionId = newExecutionId();
    for (let i = 0; i < EVENTS; i++) {
      const event = create(EventSchema, {
        cloudAgentSessionId: sessionId,
        executionId,
        timestamp: timestampNow(),
        payload: { case: "output", value: { content: CONTENT, source: OutputSource.STDOUT } },
      });
      await log.publish({ event, msgId: `${executionId}:${i}` });
    }
    const socket = createStreamSocket({
      events: log,
      verifyTicket: tickets.verify,
      logger: createLogger({ service: "test", level: "silent" }),
      shutdown: shutdown.signal,
      settings: { highWaterBytes: HIGH_WATER, slowClientMs: 1_500, pingMs: 60_000 },
    });
    const handler = Object.assign(
      (_req: unknown, res: { writeHead(s: number): void; end(): void }) => {
        res.writeHead(404);
        res.end();
      },
      { upgrade: socket.upgrade },
    );
    server = await listen(handler as never, { port: 0, host: "127.0.0.1" });
  });
  afterAll(async () => {
    shutdown.abort();
    await server?.close(100);
    await log?.close();
    await nats?.[Symbol.asyncDispose]();
  });

  const query = async () => {
    const { ticket } = await tickets.issue({ userId: "u", cloudAgentSessionId: sessionId });
    return `/stream?cloudAgentSessionId=${sessionId}&ticket=${ticket}`;
  };

  it("a client that reads gets every event", async () => {
    const s = await openSocket(`ws://127.0.0.1:${server.port}${await query()}`);
    while (s.frames.length < EVENTS) await sleep(50);
    expect(s.frames.map((f) => f.eventId)).toEqual(Array.from({ length: EVENTS }, (_, i) => i + 1));
    s.ws.close();
  });

  it("a client that stops reading is closed with 1013 after a bounded amount", async () => {
    const sock: Socket = connect(server.port, "127.0.0.1");
    await new Promise((r) => sock.once("connect", r));
    sock.write(
      `GET ${await query()} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    );
    const first: Buffer = await new Promise((r) => sock.once("data", r));
    expect(first.toString().startsWith("HTTP/1.1 101")).toBe(true);
    sock.pause();
    await sleep(4_000); // the slow-client limit (1.5 s) passes while the socket is not read
    const chunks: Buffer[] = [first];
    sock.on("data", (c: Buffer) => chunks.push(c));
    sock.resume();
    // The close frame: 0x88, its length, then the code (big-endian) and the reason.
    const code = Buffer.from([CLOSE.tooSlow >> 8, CLOSE.tooSlow & 0xff]);
    const closeFrameAt = (buf: Buffer) => {
      const at = buf.lastIndexOf(code);
      return at >= 2 && buf[at - 2] === 0x88 ? at : -1;
    };
    for (let i = 0; i < 400 && closeFrameAt(Buffer.concat(chunks)) < 0; i++) await sleep(25);
    sock.destroy();
    const all = Buffer.concat(chunks);
    expect(closeFrameAt(all)).toBeGreaterThan(0);
    expect(all.length).toBeLessThan(EVENTS * CONTENT.length * 0.75);
  });
});
