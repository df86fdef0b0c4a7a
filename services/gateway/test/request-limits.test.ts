/**
 * Unauthenticated and authenticated attempts to exhaust the gateway's memory or hold its
 * connections, against the gateway started from its own main.ts (as deployed) in a child
 * process whose peak resident memory (VmHWM in /proc) the test reads before and after.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { connect as h2connect } from "node:http2";
import { connect as netConnect } from "node:net";
import { fileURLToPath } from "node:url";
import { createGzip } from "node:zlib";
import { generateServiceKeyPair } from "@kilo-cloud/common";
import { startNats, type TestNats } from "@kilo-cloud/testing";
import { SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const MAIN = fileURLToPath(new URL("../src/main.ts", import.meta.url));
const MIB = 1024 * 1024;
const LIMIT = 1 * MIB;
/** A few MiB: what a refused request may cost at most (the old code grew by ~755 MiB). */
const MAX_GROWTH = 12 * MIB;
const PATH = "/kilocode.cloudagent.v1.SessionService/GetSession";
const HEADERS_TIMEOUT_MS = 2_000;

let child: ChildProcess;
let port: number;
let token: string;

/** Peak resident memory of the gateway so far. */
function peakRss(): number {
  const status = readFileSync(`/proc/${child.pid}/status`, "utf8");
  const kb = /VmHWM:\s+(\d+) kB/.exec(status)?.[1];
  if (!kb) throw new Error("no VmHWM");
  return Number(kb) * 1024;
}

let nats: TestNats;

async function startGateway(): Promise<void> {
  // The gateway serves Subscribe from its event log (it binds to the stream, never creates it).
  nats = await startNats();
  const keys = await generateServiceKeyPair();
  const secret = randomBytes(32).toString("hex");
  child = spawn(process.execPath, ["--import", "tsx", MAIN], {
    env: {
      PATH: process.env.PATH,
      PORT: "0",
      HOST: "127.0.0.1",
      AUTH_HS256_SECRET: secret,
      INTERNAL_API_SECRET: randomBytes(16).toString("hex"),
      SERVICE_TOKEN_PRIVATE_KEY: keys.privateKeyPem,
      STREAM_TICKET_SECRET: randomBytes(32).toString("hex"),
      // Nothing listens there: a refused request never gets that far.
      SESSION_SERVICE_URL: "http://127.0.0.1:9",
      NATS_URL: nats.url,
      MAX_REQUEST_BYTES: String(LIMIT),
      HTTP_HEADERS_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS),
      HTTP2_IDLE_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS),
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  port = await new Promise<number>((resolve, reject) => {
    let out = "";
    child.stdout?.on("data", (b: Buffer) => {
      out += b.toString();
      const m = /"url":"http:\/\/127\.0\.0\.1:(\d+)"/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once("exit", (code) => reject(new Error(`gateway exited (${code}): ${out}`)));
  });
  token = await new SignJWT({})
    .setProtectedHeader({ alg: "HS256" })
    .setSubject("attacker")
    .setIssuedAt()
    .setExpirationTime("10m")
    .sign(new TextEncoder().encode(secret));
}

/** `total` bytes from one reused chunk, so the sender holds no more than the chunk. */
async function* zeros(total: number): AsyncGenerator<Buffer> {
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  for (let sent = 0; sent < total; sent += chunk.length) yield chunk;
}

/** A gzip of `size` zero bytes, made in chunks (about 1/1000 of the size). */
async function gzipBomb(size: number): Promise<Buffer> {
  const gz = createGzip({ level: 9 });
  const parts: Buffer[] = [];
  gz.on("data", (b: Buffer) => parts.push(b));
  const done = new Promise((r) => gz.once("end", r));
  const chunk = Buffer.alloc(MIB, 0);
  for (let i = 0; i < size / MIB; i++) {
    if (!gz.write(chunk)) await new Promise((r) => gz.once("drain", r));
  }
  gz.end();
  await done;
  return Buffer.concat(parts);
}

interface Answer {
  status: number;
  body: string;
}

/** Sends a Connect unary POST with the body; resolves at the response (the rest unsent). */
function post(
  body: AsyncIterable<Buffer> | Buffer,
  headers: Record<string, string | number> = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      host: "127.0.0.1",
      port,
      path: PATH,
      method: "POST",
      agent: false,
      headers: { "content-type": "application/json", ...headers },
    });
    req.on("response", (res) => {
      let text = "";
      res.on("data", (b: Buffer) => {
        text += b.toString();
      });
      res.on("end", () => {
        resolve({ status: res.statusCode ?? 0, body: text });
        req.destroy();
      });
    });
    req.on("error", (err: NodeJS.ErrnoException) => {
      // The server answers and closes while we still write: the write fails (EPIPE,
      // ECONNRESET) and its answer may arrive just after; give it a moment.
      // Without an answer by then, the server cut the upload: report it as status 0.
      if (err.code === "EPIPE" || err.code === "ECONNRESET") {
        setTimeout(() => resolve({ status: 0, body: "connection cut" }), 2_000);
      } else reject(err);
    });
    if (Buffer.isBuffer(body)) {
      req.end(body);
      return;
    }
    void (async () => {
      for await (const chunk of body) {
        if (req.destroyed) return;
        if (!req.write(chunk)) await new Promise((r) => req.once("drain", r));
      }
      req.end();
    })().catch(() => {});
  });
}

const bearer = () => ({ authorization: `Bearer ${token}` });

describe("request size and connection limits (gateway from main.ts)", () => {
  let baseline: number;

  beforeAll(async () => {
    await startGateway();
    // Warm every refusal path once (lazy code, buffers), then take the baseline.
    await post(zeros(2 * MIB));
    await post(zeros(2 * MIB), bearer());
    await post(await gzipBomb(8 * MIB), { ...bearer(), "content-encoding": "gzip" });
    baseline = peakRss();
  }, 60_000);

  afterAll(async () => {
    child?.kill("SIGKILL");
    await nats?.[Symbol.asyncDispose]();
  });

  it("refuses a 200 MB body without a token before reading it", async () => {
    const answer = await post(zeros(200 * MIB));
    // 401, or (when the kernel resets the connection before the client reads the answer)
    // the upload cut: either way nothing of it was read.
    if (answer.status !== 0) {
      expect(answer.status).toBe(401);
      expect(answer.body).toContain("unauthenticated");
    }
    expect(peakRss() - baseline).toBeLessThan(MAX_GROWTH);
  });

  it("refuses a 200 MB body with a valid token at the size limit", async () => {
    const answer = await post(zeros(200 * MIB), bearer());
    if (answer.status !== 0) expect(answer.body).toContain("resource_exhausted");
    expect(peakRss() - baseline).toBeLessThan(MAX_GROWTH);
  });

  it("answers 413 to a declared Content-Length over the limit without waiting for it", async () => {
    const answer = await post(zeros(LIMIT * 2 + 10), { ...bearer(), "content-length": LIMIT * 2 + 10 });
    expect([413, 0]).toContain(answer.status);
  });

  it("refuses a gzip bomb (512 MB in about 500 KB) at the decompressed limit", async () => {
    const bomb = await gzipBomb(512 * MIB);
    expect(bomb.length).toBeLessThan(LIMIT);
    const answer = await post(bomb, { ...bearer(), "content-encoding": "gzip" });
    expect(answer.body).toContain("resource_exhausted");
    expect(answer.body).toContain("after decompression");
    expect(peakRss() - baseline).toBeLessThan(MAX_GROWTH);
  }, 60_000);

  it("refuses a gRPC message whose frame declares 200 MB, over HTTP/2", async () => {
    const session = h2connect(`http://127.0.0.1:${port}`);
    try {
      const stream = session.request({
        ":method": "POST",
        ":path": PATH,
        "content-type": "application/grpc",
        te: "trailers",
        ...bearer(),
      });
      const frame = Buffer.alloc(5);
      frame.writeUInt32BE(200 * MIB, 1);
      stream.write(frame);
      const trailers = await new Promise<Record<string, unknown>>((resolve, reject) => {
        stream.on("trailers", (t) => resolve(t as Record<string, unknown>));
        stream.on("response", (h) => {
          if (h["grpc-status"] !== undefined) resolve(h as Record<string, unknown>);
        });
        stream.on("error", reject);
        stream.resume();
      });
      expect(trailers["grpc-status"]).toBe("8"); // RESOURCE_EXHAUSTED
      stream.destroy();
    } finally {
      session.destroy();
    }
    expect(peakRss() - baseline).toBeLessThan(MAX_GROWTH);
  });

  /** Resolves with how long the server kept the connection after `send` was written. */
  const heldFor = (send: string) =>
    new Promise<number>((resolve, reject) => {
      const socket = netConnect(port, "127.0.0.1");
      const start = Date.now();
      socket.on("connect", () => {
        if (send) socket.write(send);
      });
      socket.on("data", () => {});
      socket.on("error", () => {});
      socket.on("close", () => resolve(Date.now() - start));
      setTimeout(() => reject(new Error("connection still open after 30 s")), 30_000).unref();
    });

  it("closes a connection that sends nothing within seconds", async () => {
    const ms = await heldFor("");
    expect(ms).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS - 100);
    expect(ms).toBeLessThan(HEADERS_TIMEOUT_MS + 10_000);
  }, 35_000);

  it("closes an HTTP/1.1 connection whose headers never end within seconds", async () => {
    const ms = await heldFor(`POST ${PATH} HTTP/1.1\r\nhost: x\r\n`);
    expect(ms).toBeLessThan(HEADERS_TIMEOUT_MS + 10_000);
  }, 35_000);

  it("closes an HTTP/2 connection that opens no stream within seconds", async () => {
    const ms = await heldFor("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    expect(ms).toBeLessThan(HEADERS_TIMEOUT_MS + 10_000);
  }, 35_000);
});
