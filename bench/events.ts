/**
 * events: the event pipeline's latency, replay rate and per-stream memory, each beside a raw
 * JetStream baseline measured in the same run.
 *
 *   producer:  ExecutionEvents.emit() (the sandbox-manager's publishing path, with a secret
 *              masker as the runner sets one) over JetStreamEventLog, payloads = captured
 *              real kilo JSON lines (packages/testing/fixtures/kilo-streams) parsed as the
 *              runner parses them
 *   consumers: Connect clients of the gateway's StreamService.Subscribe (HTTP/1.1, stream
 *              tickets); the gateway runs in a child process on its own NATS connection
 *   baseline:  raw js.publish (pre-encoded bytes, same subjects and msgIDs) → a JetStream
 *              ordered consumer configured as JetStreamEventLog.read does, in this process
 *
 *   npm run bench:events -- [--seconds=5] [--replay-events=100000] [--idle-streams=1000]
 *                           [--phases=latency,replay,open,idle] [--max-minutes=10]
 *
 * Env: BENCH_SECONDS, BENCH_REPLAY_EVENTS, BENCH_IDLE_STREAMS, BENCH_PHASES, BENCH_MAX_MINUTES,
 * BENCH_CPU_PROF=<dir> (V8 CPU profiles of the child processes). Loopback only; every phase
 * has a time limit, and the whole run gives up after --max-minutes.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { cpus, loadavg, totalmem } from "node:os";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { type Client, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createLogger, JetStreamEventLog, PostgresEventLog } from "@kilo-cloud/common";
import { createStreamTickets } from "@kilo-cloud/gateway";
import { EventSchema, StreamService } from "@kilo-cloud/proto";
import { CAPTURED_KILO_STREAMS_DIR, createTestDatabase } from "@kilo-cloud/testing";
import { DeliverPolicy, type JetStreamClient, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/nats-core";
import { connect } from "@nats-io/transport-node";
import { ExecutionEvents } from "../services/sandbox-manager/src/events/emitter.js";
import { parseStdoutLine, SecretMasker } from "../services/sandbox-manager/src/kilo/output.js";
import { Child, type MemoryUsage } from "./lib/ipc.js";
import { type BenchNats, startBenchNats } from "./lib/nats.js";
import {
  kib,
  median,
  mib,
  ms,
  numberOption,
  percentile,
  printTable,
  progress,
  rate,
  ratio,
  stringOption,
} from "./lib/stats.js";

const SECONDS = numberOption("seconds", "BENCH_SECONDS", 5);
const RATES = [1_000, 10_000];
const REPLAY_EVENTS = numberOption("replay-events", "BENCH_REPLAY_EVENTS", 100_000);
const REPLAY_ROUNDS = 2;
const IDLE_STREAMS = numberOption("idle-streams", "BENCH_IDLE_STREAMS", 1_000);
const MAX_MINUTES = numberOption("max-minutes", "BENCH_MAX_MINUTES", 10);
/** How long a phase may take to deliver what it emitted once emission stopped. */
const DRAIN_MS = 20_000;
const OPEN_CONCURRENCY = 32;
const PHASES = new Set(
  (stringOption("phases", "BENCH_PHASES") ?? "latency,replay,postgres,open,idle")
    .split(",")
    .map((p) => p.trim()),
);

type KiloPayload = Record<string, never>;

const newSessionId = () => `agent_${randomUUID()}`;
const newExecutionId = () => `exec_${randomUUID()}`;
const sleep = (msec: number) => new Promise((r) => setTimeout(r, msec));

/** Every kilo JSON line captured in the fixtures, parsed as the runner parses stdout. */
async function kiloPayloads(): Promise<KiloPayload[]> {
  const dir = new URL(CAPTURED_KILO_STREAMS_DIR);
  const out: KiloPayload[] = [];
  for (const name of (await readdir(dir)).filter((n) => n.endsWith(".jsonl")).sort()) {
    for (const line of (await readFile(new URL(name, dir), "utf8")).split("\n")) {
      const e = parseStdoutLine(line);
      if (e.type === "kilocode") out.push(e.payload as KiloPayload);
    }
  }
  if (out.length === 0) throw new Error("no captured kilo lines found");
  return out;
}

interface Ctx {
  nats: BenchNats;
  stream: string;
  prefix: string;
  producer: JetStreamEventLog;
  subNc: NatsConnection;
  subJs: JetStreamClient;
  gateway: Child;
  client: Client<typeof StreamService>;
  tickets: ReturnType<typeof createStreamTickets>;
  payloads: KiloPayload[];
  masker: SecretMasker;
}

/** One measured phase: n events over `sessions` sessions; latency of each, emit → arrival. */
interface PhaseResult {
  emitted: number;
  delivered: number;
  latencies: number[];
  /** Delivered events per second, first emit → last arrival. */
  throughput: number;
  /** This process's heap right after the last emit (a producer backlog shows here). */
  heapAfterEmit: number;
  /** p99 event-loop delay of this process during the phase (ms): is the measurer itself saturated? */
  loopDelayP99: number;
}

/**
 * Emits `n` events at `perSecond` (a batch every ~1 ms, as many as are due), round-robin
 * over the sessions; `emitTimes[s][i]` is when the i-th event of session s was emitted.
 */
async function paced(
  n: number,
  perSecond: number,
  sessions: number,
  emitTimes: Float64Array[],
  emit: (session: number, index: number, k: number) => void,
): Promise<number> {
  const t0 = performance.now();
  let k = 0;
  while (k < n) {
    const due = Math.min(n, Math.floor(((performance.now() - t0) * perSecond) / 1000) + 1);
    for (; k < due; k++) {
      const s = k % sessions;
      const i = Math.floor(k / sessions);
      (emitTimes[s] as Float64Array)[i] = performance.now();
      emit(s, i, k);
    }
    await sleep(1);
  }
  return t0;
}

/**
 * A receiver per session: `open()` starts it and resolves once its warm-up event arrived;
 * afterwards the i-th event received is matched with the i-th emitted on that session.
 */
interface Receiver {
  open(warmUp: () => void): Promise<void>;
  done: Promise<void>;
  close(): void;
}

async function runPhase(opts: {
  n: number;
  perSecond: number;
  sessions: number;
  receiver: (session: number, onEvent: (now: number) => void) => Receiver;
  warmUp: (session: number) => void;
  emit: (session: number, index: number, k: number) => void;
  /** Runs once the receivers are open, before emission starts. */
  afterOpen?: () => Promise<void>;
}): Promise<PhaseResult> {
  const { n, sessions } = opts;
  const perSession = Math.ceil(n / sessions);
  const emitTimes = Array.from({ length: sessions }, () => new Float64Array(perSession));
  const latencies: number[] = [];
  let delivered = 0;
  let lastArrival = 0;
  const receivers = Array.from({ length: sessions }, (_, s) => {
    let i = 0;
    const target = Math.floor(n / sessions) + (s < n % sessions ? 1 : 0);
    let finish: () => void = () => {};
    const finished = new Promise<void>((r) => {
      finish = r;
    });
    const rec = opts.receiver(s, (now) => {
      latencies.push(now - (emitTimes[s] as Float64Array)[i++]!);
      delivered++;
      lastArrival = now;
      if (i === target) finish();
    });
    return { rec, finished };
  });
  const loop = monitorEventLoopDelay({ resolution: 10 });
  try {
    await Promise.all(receivers.map(({ rec }, s) => rec.open(() => opts.warmUp(s))));
    await opts.afterOpen?.();
    loop.enable();
    const t0 = await paced(n, opts.perSecond, sessions, emitTimes, opts.emit);
    const heapAfterEmit = process.memoryUsage().heapUsed;
    await Promise.race([Promise.all(receivers.map((r) => r.finished)), sleep(DRAIN_MS)]);
    loop.disable();
    return {
      emitted: n,
      delivered,
      latencies,
      throughput: (delivered * 1000) / (lastArrival - t0),
      heapAfterEmit,
      loopDelayP99: loop.percentile(99) / 1e6,
    };
  } finally {
    loop.disable();
    for (const { rec } of receivers) rec.close();
  }
}

/** A Subscribe client of the gateway as a Receiver (the first event is the warm-up). */
function subscribeReceiver(ctx: Ctx, sessionId: string, onEvent: (now: number) => void): Receiver {
  const abort = new AbortController();
  let warm: () => void = () => {};
  const warmed = new Promise<void>((r) => {
    warm = r;
  });
  let seenWarmUp = false;
  let done: Promise<void> = Promise.resolve();
  return {
    async open(warmUp) {
      const { ticket } = await ctx.tickets.issue({ userId: "bench", cloudAgentSessionId: sessionId });
      done = (async () => {
        try {
          for await (const res of ctx.client.subscribe(
            { cloudAgentSessionId: sessionId, ticket, batch: true },
            { signal: abort.signal },
          )) {
            const now = performance.now();
            for (let k = 0; k < res.events.length; k++) {
              if (!seenWarmUp) {
                seenWarmUp = true;
                warm();
                continue;
              }
              onEvent(now);
            }
          }
        } catch (err) {
          if (!abort.signal.aborted) console.error("subscriber failed:", err);
        }
      })();
      warmUp();
      await withTimeout(warmed, 30_000, "warm-up event through the gateway");
    },
    get done() {
      return done;
    },
    close: () => abort.abort(),
  };
}

/** A raw ordered consumer as a Receiver (the first message is the warm-up). */
function rawReceiver(ctx: Ctx, sessionId: string, onEvent: (now: number) => void): Receiver {
  let close: () => void = () => {};
  let done: Promise<void> = Promise.resolve();
  return {
    async open(warmUp) {
      const consumer = await ctx.subJs.consumers.get(ctx.stream, {
        filter_subjects: [`${ctx.prefix}.${sessionId}.>`],
        deliver_policy: DeliverPolicy.All,
      });
      const messages = await consumer.consume({ max_messages: 512 });
      close = () => void messages.close();
      let warm: () => void = () => {};
      const warmed = new Promise<void>((r) => {
        warm = r;
      });
      let seenWarmUp = false;
      done = (async () => {
        for await (const _ of messages) {
          const now = performance.now();
          if (!seenWarmUp) {
            seenWarmUp = true;
            warm();
            continue;
          }
          onEvent(now);
        }
      })();
      warmUp();
      await withTimeout(warmed, 30_000, "warm-up message through the raw consumer");
    },
    get done() {
      return done;
    },
    close: () => close(),
  };
}

function encodeEvent(sessionId: string, executionId: string, payload: KiloPayload): Uint8Array {
  return toBinary(
    EventSchema,
    create(EventSchema, {
      cloudAgentSessionId: sessionId,
      executionId,
      timestamp: timestampNow(),
      payload: { case: "kilocode", value: { payload } },
    }),
  );
}

type LatencyVariant = "raw" | "raw-core" | "service" | "pipelined" | "stalled";

/** Up to `limit` publishes in flight, started in submission order (a bounded pipeline). */
class Window {
  #queue: (() => Promise<unknown>)[] = [];
  #inFlight = 0;
  constructor(private readonly limit: number) {}
  push(fn: () => Promise<unknown>): void {
    this.#queue.push(fn);
    this.#pump();
  }
  #pump(): void {
    while (this.#inFlight < this.limit && this.#queue.length > 0) {
      const fn = this.#queue.shift()!;
      this.#inFlight++;
      void fn().finally(() => {
        this.#inFlight--;
        this.#pump();
      });
    }
  }
}
const PIPELINE_WINDOW = 256;

/**
 * One latency phase of a variant at a rate over `sessions` sessions. Each phase publishes on
 * a NATS connection of its own, closed at the end: whatever is still queued when the drain
 * time is up is dropped with it instead of spilling into the next phase.
 */
async function latencyPhase(
  ctx: Ctx,
  variant: LatencyVariant,
  perSecond: number,
  sessions: number,
): Promise<PhaseResult> {
  const n = Math.round(perSecond * SECONDS);
  const ids = Array.from({ length: sessions }, () => ({
    sessionId: newSessionId(),
    executionId: newExecutionId(),
  }));
  const { payloads } = ctx;
  if (variant === "raw-core") {
    // Upper bound: core NATS publishes into the stream's subjects, no ack awaited, no msg id.
    const nc = await connect({ servers: ctx.nats.url, name: "raw-core-publisher" });
    const bytes = payloads.map((p) => encodeEvent(ids[0]!.sessionId, ids[0]!.executionId, p));
    try {
      return await runPhase({
        n,
        perSecond,
        sessions,
        receiver: (s, on) => rawReceiver(ctx, ids[s]!.sessionId, on),
        warmUp: (s) => nc.publish(`${ctx.prefix}.${ids[s]!.sessionId}.status`, new Uint8Array(8)),
        emit: (s, _i, k) =>
          nc.publish(`${ctx.prefix}.${ids[s]!.sessionId}.kilocode`, bytes[k % bytes.length]!),
      });
    } finally {
      await nc.close().catch(ignore);
    }
  }
  if (variant === "raw") {
    const nc = await connect({ servers: ctx.nats.url, name: "raw-publisher" });
    const js = jetstream(nc);
    const bytes = payloads.map((p) => encodeEvent(ids[0]!.sessionId, ids[0]!.executionId, p));
    try {
      return await runPhase({
        n,
        perSecond,
        sessions,
        receiver: (s, on) => rawReceiver(ctx, ids[s]!.sessionId, on),
        warmUp: (s) =>
          void js.publish(`${ctx.prefix}.${ids[s]!.sessionId}.status`, new Uint8Array(8)).catch(ignore),
        emit: (s, i, k) => {
          const id = ids[s]!;
          void js
            .publish(`${ctx.prefix}.${id.sessionId}.kilocode`, bytes[k % bytes.length]!, {
              msgID: `${id.executionId}:${i + 1}`,
              timeout: DRAIN_MS + SECONDS * 1000,
            })
            .catch(ignore);
        },
      });
    } finally {
      await nc.close().catch(ignore);
    }
  }
  const stall = new AbortController();
  const log = await JetStreamEventLog.connect({
    servers: ctx.nats.url,
    stream: ctx.stream,
    subjectPrefix: ctx.prefix,
    name: "sandbox-manager",
  });
  try {
    if (variant === "pipelined") {
      // Diagnostic: the log.publish calls ExecutionEvents makes, without its one-at-a-time
      // chain: up to PIPELINE_WINDOW in flight, started in order.
      const window = new Window(PIPELINE_WINDOW);
      return await runPhase({
        n,
        perSecond,
        sessions,
        receiver: (s, on) => subscribeReceiver(ctx, ids[s]!.sessionId, on),
        warmUp: (s) =>
          void publishDirect(log, ids[s]!, 0, {
            case: "status",
            value: { message: "warm-up", step: "bench" },
          }),
        emit: (s, i, k) => {
          const payload = ctx.masker.maskJson(payloads[k % payloads.length]!) as KiloPayload;
          const event = create(EventSchema, {
            cloudAgentSessionId: ids[s]!.sessionId,
            executionId: ids[s]!.executionId,
            timestamp: timestampNow(),
            payload: { case: "kilocode", value: { payload } },
          });
          window.push(() => log.publish({ event, msgId: `${ids[s]!.executionId}:${i + 1}` }).catch(ignore));
        },
      });
    }
    // Publish failures after the phase (the connection closed under a backlog) are expected.
    const quiet = createLogger({ service: "bench-producer", level: "silent" });
    const emitters = ids.map(
      ({ sessionId, executionId }) => new ExecutionEvents(log, sessionId, executionId, quiet, ctx.masker),
    );
    return await runPhase({
      n,
      perSecond,
      sessions,
      receiver: (s, on) => subscribeReceiver(ctx, ids[s]!.sessionId, on),
      warmUp: (s) => emitters[s]!.status("warm-up", "bench"),
      emit: (s, _i, k) =>
        emitters[s]!.emit({ case: "kilocode", value: { payload: payloads[k % payloads.length]! } }),
      ...(variant === "stalled"
        ? { afterOpen: () => openStalledClient(ctx, ids[0]!.sessionId, stall.signal) }
        : {}),
    });
  } finally {
    stall.abort();
    await log.nc.close().catch(ignore);
  }
}

function ignore(): void {}

/** A Subscribe client on the session that reads its first event and then nothing more. */
async function openStalledClient(ctx: Ctx, sessionId: string, signal: AbortSignal): Promise<void> {
  const { ticket } = await ctx.tickets.issue({ userId: "bench", cloudAgentSessionId: sessionId });
  const it = ctx.client
    .subscribe({ cloudAgentSessionId: sessionId, ticket }, { signal })
    [Symbol.asyncIterator]();
  await withTimeout(it.next(), 30_000, "the stalled client's first event");
  signal.addEventListener("abort", () => void it.return?.().catch(ignore), { once: true });
}

function publishDirect(
  log: JetStreamEventLog,
  id: { sessionId: string; executionId: string },
  n: number,
  payload: NonNullable<Parameters<ExecutionEvents["emit"]>[0]>,
): Promise<unknown> {
  const event = create(EventSchema, {
    cloudAgentSessionId: id.sessionId,
    executionId: id.executionId,
    timestamp: timestampNow(),
    payload,
  });
  return log.publish({ event, msgId: `${id.executionId}:${n}` }).catch(ignore);
}

/** Stores `count` events of one session as fast as the log takes them; returns the first id. */
async function storeEvents(
  ctx: Ctx,
  sessionId: string,
  count: number,
): Promise<{ firstId: bigint; ms: number }> {
  const executionId = newExecutionId();
  let next = 0;
  let firstId: bigint | undefined;
  const t0 = performance.now();
  const worker = async () => {
    for (let k = next++; k < count; k = next++) {
      const payload = ctx.payloads[k % ctx.payloads.length]!;
      const event = create(EventSchema, {
        cloudAgentSessionId: sessionId,
        executionId,
        timestamp: timestampNow(),
        payload: { case: "kilocode", value: { payload } },
      });
      const r = await ctx.producer.publish({ event, msgId: `${executionId}:${k}` });
      if (firstId === undefined || r.id < firstId) firstId = r.id;
    }
  };
  await Promise.all(Array.from({ length: 256 }, worker));
  return { firstId: firstId ?? 1n, ms: performance.now() - t0 };
}

async function replayService(
  ctx: Ctx,
  sessionId: string,
  fromId: bigint,
  count: number,
  batch: boolean,
): Promise<number> {
  const { ticket } = await ctx.tickets.issue({ userId: "bench", cloudAgentSessionId: sessionId });
  const abort = new AbortController();
  const t0 = performance.now();
  let got = 0;
  try {
    for await (const res of ctx.client.subscribe(
      { cloudAgentSessionId: sessionId, ticket, fromId, batch },
      { signal: AbortSignal.any([abort.signal, AbortSignal.timeout(120_000)]) },
    )) {
      got += res.event ? 1 : res.events.length;
      if (got >= count) break;
    }
  } finally {
    abort.abort();
  }
  if (got !== count) throw new Error(`replay through the gateway delivered ${got} of ${count}`);
  return performance.now() - t0;
}

/** Diagnostic: JetStreamEventLog.read() in this process, i.e. the gateway's source without the gateway. */
async function replayLogRead(ctx: Ctx, sessionId: string, fromId: bigint, count: number): Promise<number> {
  const abort = new AbortController();
  const t0 = performance.now();
  let got = 0;
  const timer = setTimeout(() => abort.abort(), 120_000);
  try {
    for await (const _ of ctx.producer.read(sessionId, { fromId, signal: abort.signal })) {
      if (++got === count) break;
    }
  } finally {
    clearTimeout(timer);
  }
  if (got !== count) throw new Error(`log.read delivered ${got} of ${count}`);
  return performance.now() - t0;
}

async function replayRaw(ctx: Ctx, sessionId: string, firstId: bigint, count: number): Promise<number> {
  const t0 = performance.now();
  const consumer = await ctx.subJs.consumers.get(ctx.stream, {
    filter_subjects: [`${ctx.prefix}.${sessionId}.>`],
    deliver_policy: DeliverPolicy.StartSequence,
    opt_start_seq: Number(firstId),
  });
  const messages = await consumer.consume({ max_messages: 512 });
  let got = 0;
  const timer = setTimeout(() => void messages.close(), 120_000);
  try {
    for await (const _ of messages) if (++got === count) break;
  } finally {
    clearTimeout(timer);
    await messages.close();
  }
  if (got !== count) throw new Error(`raw replay delivered ${got} of ${count}`);
  return performance.now() - t0;
}

interface MemoryResult {
  streams: number;
  openMs: number;
  before: MemoryUsage;
  after: MemoryUsage;
}

/** Opens `sessionIds.length` idle Subscribe streams (each got its one stored event) on a fresh gateway. */
async function idleGatewayStreams(
  ctx: Ctx,
  gateway: Child,
  url: string,
  sessionIds: string[],
): Promise<MemoryResult> {
  const client = createClient(StreamService, createConnectTransport({ baseUrl: url, httpVersion: "1.1" }));
  const aborts: AbortController[] = [];
  const openOne = async (sessionId: string) => {
    const abort = new AbortController();
    aborts.push(abort);
    const { ticket } = await ctx.tickets.issue({ userId: "bench", cloudAgentSessionId: sessionId });
    const first = new Promise<void>((resolve, reject) => {
      void (async () => {
        try {
          for await (const res of client.subscribe(
            { cloudAgentSessionId: sessionId, ticket },
            { signal: abort.signal },
          )) {
            if (res.event) resolve();
          }
        } catch (err) {
          if (!abort.signal.aborted) reject(err);
        }
      })();
    });
    await withTimeout(first, 60_000, "first event of an idle stream");
  };
  try {
    // Warm the gateway's code paths so lazy initialisation is not counted per stream.
    await inBatches(sessionIds.slice(0, 10), openOne);
    for (const a of aborts.splice(0)) a.abort();
    await sleep(1_000);
    const before = await gateway.memory();
    const t0 = performance.now();
    await inBatches(sessionIds, openOne);
    const openMs = performance.now() - t0;
    await sleep(2_000);
    const after = await gateway.memory();
    return { streams: sessionIds.length, openMs, before, after };
  } finally {
    for (const a of aborts) a.abort();
  }
}

async function idleRawConsumers(ctx: Ctx, sessionIds: string[]): Promise<MemoryResult> {
  const child = new Child("./consumers-child.ts", { BENCH_NATS_URL: ctx.nats.url });
  try {
    await child.request("ready");
    const subjects = sessionIds.map((s) => `${ctx.prefix}.${s}.>`);
    await child.request("opened", { type: "open", stream: ctx.stream, subjects: subjects.slice(0, 10) });
    await child.request("closed", { type: "close" });
    await sleep(1_000);
    const before = await child.memory();
    const { ms: openMs } = await child.request<{ type: "opened"; ms: number }>("opened", {
      type: "open",
      stream: ctx.stream,
      subjects,
    });
    await sleep(2_000);
    const after = await child.memory();
    return { streams: sessionIds.length, openMs, before, after };
  } finally {
    await child.stop();
  }
}

async function inBatches<T>(items: T[], fn: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  const worker = async () => {
    for (let x = queue.shift(); x !== undefined; x = queue.shift()) await fn(x);
  };
  await Promise.all(Array.from({ length: OPEN_CONCURRENCY }, worker));
}

function withTimeout<T>(p: Promise<T>, msec: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${msec} ms waiting for the ${what}`)), msec);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function startGateway(nats: BenchNats, stream: string, prefix: string, secret: string) {
  const child = new Child("./gateway-child.ts", {
    BENCH_NATS_URL: nats.url,
    BENCH_STREAM: stream,
    BENCH_SUBJECT_PREFIX: prefix,
    BENCH_TICKET_SECRET: secret,
  });
  const { url } = await child.request<{ type: "ready"; url: string }>("ready", undefined, 60_000);
  cleanups.push(() => child.stop());
  return { child, url };
}

const cleanups: (() => Promise<unknown>)[] = [];
async function cleanup(): Promise<void> {
  for (const fn of cleanups.splice(0).reverse()) {
    await withTimeout(fn(), 5_000, "cleanup step").catch(ignore);
  }
}

async function main(): Promise<void> {
  const load0 = loadavg();
  const nats = await startBenchNats();
  cleanups.push(() => nats.stop());
  const tag = randomBytes(4).toString("hex");
  const stream = `BENCH_EVENTS_${tag}`;
  const prefix = `bench${tag}`;
  const producer = await JetStreamEventLog.connect({
    servers: nats.url,
    stream,
    subjectPrefix: prefix,
    name: "sandbox-manager",
  });
  cleanups.push(() => producer.close());
  const subNc = await connect({ servers: nats.url, name: "raw-consumer" });
  cleanups.push(() => subNc.close());
  const secret = randomBytes(32).toString("hex");
  const gw = await startGateway(nats, stream, prefix, secret);
  const ctx: Ctx = {
    nats,
    stream,
    prefix,
    producer,
    subNc,
    subJs: jetstream(subNc),
    gateway: gw.child,
    client: createClient(StreamService, createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" })),
    tickets: createStreamTickets(secret),
    payloads: await kiloPayloads(),
    // The runner always masks the git token; the masker is active on every event.
    masker: new SecretMasker([`ghs_${randomBytes(18).toString("hex")}`]),
  };
  const avgBytes =
    ctx.payloads.reduce((a, p) => a + encodeEvent(newSessionId(), newExecutionId(), p).length, 0) /
    ctx.payloads.length;
  progress(
    `${ctx.payloads.length} captured kilo lines as payloads, ${avgBytes.toFixed(0)} B per encoded event on average`,
  );

  console.log(`# events (${new Date().toISOString().slice(0, 10)})`);
  console.log(
    `node ${process.version}, ${cpus().length} cores, ${(totalmem() / 2 ** 30).toFixed(0)} GiB; load average ` +
      `${load0[0]?.toFixed(2)} at start; ${SECONDS} s per latency phase; ` +
      `payloads: ${ctx.payloads.length} captured kilo lines, ~${avgBytes.toFixed(0)} B per encoded event`,
  );

  if (PHASES.has("latency")) await latencySection(ctx);
  if (PHASES.has("replay")) await replaySection(ctx);
  if (PHASES.has("postgres")) await postgresSection(ctx);
  if (PHASES.has("open")) await openSection(ctx);
  await gw.child.stop();
  if (PHASES.has("idle")) await idleSection(ctx, secret);
  console.log(`\n(load average at the end: ${loadavg()[0]?.toFixed(2)})`);
}

async function latencySection(ctx: Ctx): Promise<void> {
  const rows: string[][] = [];
  const results = new Map<string, PhaseResult>();
  const phases: { label: string; variant: LatencyVariant; perSecond: number; sessions: number }[] = [];
  for (const perSecond of RATES) {
    phases.push({
      label: "raw: js.publish (acked) → ordered consumer",
      variant: "raw",
      perSecond,
      sessions: 1,
    });
    if (perSecond >= 10_000) {
      phases.push({
        label: "raw, no ack: core publish → ordered consumer",
        variant: "raw-core",
        perSecond,
        sessions: 1,
      });
    }
    phases.push({ label: "service: emit() → Subscribe client", variant: "service", perSecond, sessions: 1 });
    if (perSecond < 10_000) {
      phases.push({
        label: "service, beside a stalled Subscribe client on the same session",
        variant: "stalled",
        perSecond,
        sessions: 1,
      });
    }
    if (perSecond >= 10_000) {
      phases.push({ label: "service, over 10 executions", variant: "service", perSecond, sessions: 10 });
      phases.push({
        label: `diagnostic: log.publish, ${PIPELINE_WINDOW} in flight → Subscribe`,
        variant: "pipelined",
        perSecond,
        sessions: 1,
      });
    }
  }
  for (const p of phases) {
    progress(`latency: ${p.label} at ${p.perSecond}/s (${p.sessions} session(s))`);
    const r = await latencyPhase(ctx, p.variant, p.perSecond, p.sessions);
    results.set(`${p.variant}:${p.perSecond}:${p.sessions}`, r);
    const raw = results.get(`raw:${p.perSecond}:1`);
    const p50 = percentile(r.latencies, 50);
    const p99 = percentile(r.latencies, 99);
    rows.push([
      rate(p.perSecond),
      p.label,
      `${r.delivered}/${r.emitted}`,
      rate(r.throughput),
      ms(p50, 2),
      ms(p99, 2),
      ms(percentile(r.latencies, 100), 1),
      raw && !p.variant.startsWith("raw") ? ratio(p50, percentile(raw.latencies, 50)) : "",
      raw && !p.variant.startsWith("raw") ? ratio(p99, percentile(raw.latencies, 99)) : "",
      ms(r.loopDelayP99, 0),
      mib(r.heapAfterEmit),
    ]);
    await sleep(500);
  }
  console.log("\n## End-to-end latency (emit → arrival, same process clock). Goal: p99 ≤ 5 ms at 10k ev/s\n");
  printTable(
    [
      "rate",
      "path",
      "delivered",
      "throughput",
      "p50",
      "p99",
      "max",
      "p50 vs raw",
      "p99 vs raw",
      "bench loop delay p99",
      "bench heap after emit",
    ],
    rows,
  );
}

async function replaySection(ctx: Ctx): Promise<void> {
  progress(`replay: storing ${REPLAY_EVENTS} events in one session`);
  const replaySession = newSessionId();
  const stored = await storeEvents(ctx, replaySession, REPLAY_EVENTS);
  const replay: { raw: number[]; service: number[]; single: number[]; read: number[] } = {
    raw: [],
    service: [],
    single: [],
    read: [],
  };
  for (let round = 0; round < REPLAY_ROUNDS; round++) {
    progress(`replay round ${round + 1}/${REPLAY_ROUNDS}`);
    replay.raw.push(await replayRaw(ctx, replaySession, stored.firstId, REPLAY_EVENTS));
    replay.service.push(await replayService(ctx, replaySession, stored.firstId - 1n, REPLAY_EVENTS, true));
    replay.single.push(await replayService(ctx, replaySession, stored.firstId - 1n, REPLAY_EVENTS, false));
    replay.read.push(await replayLogRead(ctx, replaySession, stored.firstId - 1n, REPLAY_EVENTS));
  }
  const readRate = (REPLAY_EVENTS * 1000) / median(replay.read);
  const rawRate = (REPLAY_EVENTS * 1000) / median(replay.raw);
  const svcRate = (REPLAY_EVENTS * 1000) / median(replay.service);
  const singleRate = (REPLAY_EVENTS * 1000) / median(replay.single);
  console.log(
    `\n## Replay of ${REPLAY_EVENTS} stored events from fromId (median of ${REPLAY_ROUNDS}). Goal: ≥ 200k ev/s\n`,
  );
  printTable(
    ["path", "times", "rate", "vs raw"],
    [
      ["raw ordered consumer (StartSequence)", replay.raw.map((t) => ms(t)).join(", "), rate(rawRate), ""],
      [
        "service: Subscribe{fromId, batch} client",
        replay.service.map((t) => ms(t)).join(", "),
        rate(svcRate),
        ratio(svcRate, rawRate),
      ],
      [
        "service: Subscribe{fromId} client, one event per message (old clients)",
        replay.single.map((t) => ms(t)).join(", "),
        rate(singleRate),
        ratio(singleRate, rawRate),
      ],
      [
        "diagnostic: JetStreamEventLog.read() in-process, no gateway",
        replay.read.map((t) => ms(t)).join(", "),
        rate(readRate),
        ratio(readRate, rawRate),
      ],
    ],
  );
  console.log(
    `(storing them took ${ms(stored.ms)}: ${rate((REPLAY_EVENTS * 1000) / stored.ms)} with 256 publishes in flight)`,
  );
}

/**
 * The embedded event log (PostgresEventLog on the local PostgreSQL): publish rates one at a
 * time (what the old emitter did) and through ExecutionEvents (pipelined, batched), and
 * replay rates of the stored bytes and of decoded events.
 */
async function postgresSection(ctx: Ctx): Promise<void> {
  const n = Math.min(REPLAY_EVENTS, 50_000);
  const single = 500;
  progress(`postgres: ${single} publishes one at a time, then ${n} through ExecutionEvents`);
  const db = await createTestDatabase("kc_bench_events");
  cleanups.push(() => db.drop());
  const log = await PostgresEventLog.connect({ connectionString: db.url, pruneIntervalMs: 0 });
  cleanups.push(() => log.close());
  const sessionId = newSessionId();
  const executionId = newExecutionId();
  const payload = (k: number) => ctx.payloads[k % ctx.payloads.length]!;
  let t0 = performance.now();
  for (let i = 0; i < single; i++) {
    const event = create(EventSchema, {
      cloudAgentSessionId: sessionId,
      executionId,
      timestamp: timestampNow(),
      payload: { case: "kilocode", value: { payload: payload(i) } },
    });
    await log.publish({ event, msgId: `${executionId}:single:${i}` });
  }
  const oneRate = (single * 1000) / (performance.now() - t0);
  const quiet = createLogger({ service: "bench-producer", level: "silent" });
  const emitter = new ExecutionEvents(log, sessionId, executionId, quiet, ctx.masker);
  t0 = performance.now();
  for (let i = 0; i < n; i++) {
    emitter.emit({ case: "kilocode", value: { payload: payload(i) } });
    await emitter.backpressure();
  }
  await emitter.flush();
  const pipeRate = (n * 1000) / (performance.now() - t0);
  const total = n + single;
  const timeRead = async (stored: boolean) => {
    const start = performance.now();
    let got = 0;
    if (stored) for await (const page of log.readStored(sessionId, { storedOnly: true })) got += page.length;
    else for await (const _ of log.read(sessionId, { storedOnly: true })) got++;
    if (got !== total) throw new Error(`postgres replay delivered ${got} of ${total}`);
    return (total * 1000) / (performance.now() - start);
  };
  const storedRate = await timeRead(true);
  const decodedRate = await timeRead(false);
  await log.close();
  console.log(`\n## Embedded Postgres event log (${total} events in one session)\n`);
  printTable(
    ["operation", "rate"],
    [
      ["publish, one at a time (awaiting each)", rate(oneRate)],
      ["publish through ExecutionEvents (window 256, batched statements)", rate(pipeRate)],
      ["replay: readStored (stored bytes, pages of 2048)", rate(storedRate)],
      ["replay: read (decoded events)", rate(decodedRate)],
    ],
  );
}

/** Stores one status event in each session (so a stream that got it is open and then idle). */
async function storeOneEach(log: JetStreamEventLog, sessionIds: string[]): Promise<void> {
  await inBatches(sessionIds, async (sessionId) => {
    const event = create(EventSchema, {
      cloudAgentSessionId: sessionId,
      executionId: newExecutionId(),
      timestamp: timestampNow(),
      payload: { case: "status", value: { message: "started", step: "kilo" } },
    });
    await log.publish({ event, msgId: `${event.executionId}:0` });
  });
}

/**
 * Memory per idle stream, on a JetStream stream of its own (so that opening 1,000 consumers
 * is not slowed down by the other phases' events, see openSection) and fresh processes.
 */
async function idleSection(ctx: Ctx, secret: string): Promise<void> {
  const tag = randomBytes(4).toString("hex");
  const idle: Ctx = { ...ctx, stream: `BENCH_IDLE_${tag}`, prefix: `idle${tag}` };
  idle.producer = await JetStreamEventLog.connect({
    servers: ctx.nats.url,
    stream: idle.stream,
    subjectPrefix: idle.prefix,
    name: "sandbox-manager",
  });
  cleanups.push(() => idle.producer.close());
  progress(`idle streams: storing one event in each of ${IDLE_STREAMS} sessions (stream ${idle.stream})`);
  const idleSessions = Array.from({ length: IDLE_STREAMS }, newSessionId);
  await storeOneEach(idle.producer, idleSessions);
  progress(`idle streams: ${IDLE_STREAMS} Subscribe streams on a fresh gateway process`);
  const fresh = await startGateway(ctx.nats, idle.stream, idle.prefix, secret);
  const gwMem = await idleGatewayStreams(idle, fresh.child, fresh.url, idleSessions);
  await fresh.child.stop();
  await sleep(2_000);
  progress(`idle streams: ${IDLE_STREAMS} raw ordered consumers in a fresh process`);
  const rawMem = await idleRawConsumers(idle, idleSessions);

  console.log(
    `\n## Memory per idle stream, ${IDLE_STREAMS} concurrent (after GC). Goal: ≤ 64 KiB per idle stream\n`,
  );
  const per = (m: MemoryResult, k: keyof MemoryUsage) => (m.after[k] - m.before[k]) / m.streams;
  const row = (label: string, m: MemoryResult) => [
    label,
    kib(per(m, "heapUsed")),
    kib(per(m, "external")),
    kib(per(m, "rss")),
    `${ms(m.openMs)} (${ms(m.openMs / m.streams, 1)} each, ${OPEN_CONCURRENCY} at a time)`,
  ];
  printTable(
    ["process", "heap/stream", "external/stream", "RSS/stream", "opening all"],
    [
      row("gateway: Subscribe streams (HTTP/1.1 clients)", gwMem),
      row("raw ordered consumers", rawMem),
      [
        "ratio gateway / raw",
        ratio(per(gwMem, "heapUsed"), per(rawMem, "heapUsed")),
        "",
        ratio(per(gwMem, "rss"), per(rawMem, "rss")),
        ratio(gwMem.openMs, rawMem.openMs),
      ],
    ],
  );
}

/**
 * Diagnostic: how long a new stream takes to deliver its first (only) stored event when the
 * JetStream stream holds many other sessions' events, as every Subscribe does in production
 * (one stream for all sessions). One at a time, median of `count`.
 */
async function openSection(ctx: Ctx): Promise<void> {
  const count = 20;
  const sessions = Array.from({ length: count * 3 }, newSessionId);
  await storeOneEach(ctx.producer, sessions);
  const jsm = await jetstreamManager(ctx.subNc);
  const held = (await jsm.streams.info(ctx.stream)).state.messages;
  progress(`first event of a new stream, with ${held} events in the JetStream stream`);
  const timeRaw = async (sessionId: string, single: boolean) => {
    const t0 = performance.now();
    const subject = `${ctx.prefix}.${sessionId}.>`;
    const consumer = await ctx.subJs.consumers.get(ctx.stream, {
      filter_subjects: single ? subject : [subject],
      deliver_policy: DeliverPolicy.All,
    });
    const messages = await consumer.consume({ max_messages: 512 });
    for await (const _ of messages) break;
    const t = performance.now() - t0;
    await messages.close();
    return t;
  };
  const timeGateway = async (sessionId: string) => {
    const { ticket } = await ctx.tickets.issue({ userId: "bench", cloudAgentSessionId: sessionId });
    const abort = new AbortController();
    const t0 = performance.now();
    try {
      for await (const res of ctx.client.subscribe(
        { cloudAgentSessionId: sessionId, ticket },
        { signal: AbortSignal.any([abort.signal, AbortSignal.timeout(60_000)]) },
      )) {
        if (res.event) break;
      }
    } finally {
      abort.abort();
    }
    return performance.now() - t0;
  };
  const gateway: number[] = [];
  const rawList: number[] = [];
  const rawSingle: number[] = [];
  for (let i = 0; i < count; i++) {
    gateway.push(await timeGateway(sessions[i]!));
    rawList.push(await timeRaw(sessions[count + i]!, false));
    rawSingle.push(await timeRaw(sessions[2 * count + i]!, true));
  }
  console.log(
    `\n## Diagnostic: a new stream's first event, with ${held} other events in the JetStream stream (median of ${count})\n`,
  );
  printTable(
    ["path", "median", "p90"],
    [
      [
        "gateway Subscribe (read() uses filter_subjects: [subject])",
        ms(median(gateway), 1),
        ms(percentile(gateway, 90), 1),
      ],
      [
        "raw ordered consumer, filter_subjects: [subject] (as read())",
        ms(median(rawList), 1),
        ms(percentile(rawList, 90), 1),
      ],
      [
        "raw ordered consumer, filter_subjects: subject (→ filter_subject)",
        ms(median(rawSingle), 1),
        ms(percentile(rawSingle, 90), 1),
      ],
    ],
  );
}

const stop = (why: string, code: number) => {
  console.error(`events: ${why}; cleaning up`);
  const force = setTimeout(() => process.exit(code), 15_000);
  force.unref();
  void cleanup().finally(() => process.exit(code));
};
setTimeout(() => stop(`gave up after ${MAX_MINUTES} minutes`, 2), MAX_MINUTES * 60_000).unref();
process.once("SIGINT", () => stop("interrupted", 130));
process.once("SIGTERM", () => stop("terminated", 143));
main()
  .then(cleanup)
  .then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      void cleanup().finally(() => process.exit(1));
    },
  );
