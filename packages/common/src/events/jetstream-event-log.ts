import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Event, EventSchema } from "@kilo-cloud/proto";
import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  JetStreamApiError,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
} from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/nats-core";
import { connect } from "@nats-io/transport-node";
import {
  type EventLog,
  type EventTypeName,
  eventTypeOf,
  type PublishInput,
  type PublishResult,
  type ReadOptions,
} from "./event-log.js";
import { OrderedPublisher } from "./ordered-publisher.js";
import { decodeStored, type StoredEvent } from "./stored-event.js";

export interface JetStreamEventLogOptions {
  servers: string | string[];
  /** Stream name (default KILO_EVENTS). */
  stream?: string;
  /** Subject prefix (default kilo.events): subjects are `<prefix>.<sessionId>.<type>`. */
  subjectPrefix?: string;
  /** Retention by age (default 7 days). */
  maxAgeMs?: number;
  /** Retention by size (default 10 GiB). */
  maxBytes?: number;
  /** Window in which a repeated message id is dropped (default 2 minutes). */
  duplicateWindowMs?: number;
  replicas?: number;
  name?: string;
  /**
   * Create the stream or bring it to these limits (default true). Exactly one service owns
   * the stream (sandbox-manager); the others bind to it with `false`.
   */
  provision?: boolean;
  /** How long one publish attempt waits for its acknowledgement (default 5 s). */
  publishTimeoutMs?: number;
}

/** Most bytes a reader pulls ahead of what it has handed on (bounds a slow reader's memory). */
const READ_AHEAD_BYTES = 1024 * 1024;
/** Most events handed on in one batch by `readStored`. */
const MAX_BATCH = 512;
const LATER = Symbol("later");

const NS = 1_000_000;
/** How long a durable consumer waits for an ack before redelivering an event. */
const CONSUMER_ACK_WAIT_MS = 5_000;

/** The JetStream stream configuration derived from the options (file storage, limits). */
export function streamConfig(opts: JetStreamEventLogOptions): Partial<StreamConfig> & { name: string } {
  const prefix = opts.subjectPrefix ?? "kilo.events";
  return {
    name: opts.stream ?? "KILO_EVENTS",
    subjects: [`${prefix}.>`],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    max_age: (opts.maxAgeMs ?? 7 * 24 * 3600 * 1000) * NS,
    max_bytes: opts.maxBytes ?? 10 * 1024 ** 3,
    duplicate_window: (opts.duplicateWindowMs ?? 120_000) * NS,
    num_replicas: opts.replicas ?? 1,
  };
}

/**
 * Creates the stream, or brings an existing one to the configured limits. Safe to run
 * from every replica at every start.
 */
export async function provisionStream(jsm: JetStreamManager, opts: JetStreamEventLogOptions): Promise<void> {
  const cfg = streamConfig(opts);
  try {
    await jsm.streams.info(cfg.name);
    await jsm.streams.update(cfg.name, cfg);
  } catch (err) {
    if (err instanceof JetStreamApiError && err.status === 404) {
      await jsm.streams.add(cfg);
      return;
    }
    // Another replica may have created it between our two calls.
    if (err instanceof JetStreamApiError && /already in use/i.test(err.message)) return;
    throw err;
  }
}

export class JetStreamEventLog implements EventLog {
  private readonly publisher: OrderedPublisher;

  private constructor(
    readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly opts: JetStreamEventLogOptions,
  ) {
    const timeout = opts.publishTimeoutMs ?? 5_000;
    this.publisher = new OrderedPublisher({
      send: async (subject, data, msgID) => {
        const ack = await this.js.publish(subject, data, { msgID, timeout });
        return { seq: BigInt(ack.seq), duplicate: ack.duplicate };
      },
      closed: () => this.nc.isClosed(),
      // Retries stay well inside the duplicate window, so a late retry is still deduplicated.
      retryForMs: Math.min(60_000, (opts.duplicateWindowMs ?? 120_000) / 2),
    });
    void this.watchConnection();
  }

  static async connect(opts: JetStreamEventLogOptions): Promise<JetStreamEventLog> {
    const nc = await connect({
      servers: opts.servers,
      name: opts.name ?? "kilo-cloud",
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
    });
    const jsm = await jetstreamManager(nc);
    if (opts.provision !== false) await provisionStream(jsm, opts);
    return new JetStreamEventLog(nc, jetstream(nc), jsm, opts);
  }

  /** Throws unless connected and the stream exists (readiness). */
  async checkReady(): Promise<void> {
    if (this.nc.isClosed()) throw new Error("NATS connection closed");
    await this.jsm.streams.info(this.streamName);
  }

  get streamName(): string {
    return this.opts.stream ?? "KILO_EVENTS";
  }

  subject(sessionId: string, type: string): string {
    return `${this.opts.subjectPrefix ?? "kilo.events"}.${sessionId}.${type}`;
  }

  /** Tells the publisher when the connection drops and comes back (see OrderedPublisher). */
  private async watchConnection(): Promise<void> {
    for await (const s of this.nc.status()) {
      if (s.type === "disconnect") this.publisher.disconnected();
      else if (s.type === "reconnect") this.publisher.reconnected();
    }
  }

  async publish({ event, msgId }: PublishInput): Promise<PublishResult> {
    const subject = this.subject(event.cloudAgentSessionId, eventTypeOf(event));
    const data = toBinary(EventSchema, { ...event, id: 0n });
    const sent = await this.publisher.publish(subject, data, msgId);
    return { id: sent.seq, duplicate: sent.duplicate };
  }

  async *read(sessionId: string, opts: ReadOptions = {}): AsyncIterable<Event> {
    for await (const batch of this.readStored(sessionId, opts)) {
      for (const stored of batch) yield decodeStored(stored);
    }
  }

  async *readStored(sessionId: string, opts: ReadOptions = {}): AsyncIterable<StoredEvent[]> {
    const info = await this.jsm.streams.info(this.streamName);
    const firstSeq = BigInt(info.state.first_seq);
    const lastSeq = BigInt(info.state.last_seq);
    const fromId = opts.fromId ?? 0n;
    if (opts.fromId !== undefined && fromId + 1n < firstSeq && lastSeq > 0n) {
      throw new ConnectError(
        `fromId ${fromId} is older than the retained events (the oldest retained id is ${firstSeq}); replay from a later id or from the start`,
        Code.OutOfRange,
      );
    }
    if (opts.storedOnly && fromId >= lastSeq) return;
    const consumer = await this.js.consumers.get(this.streamName, {
      // One filter as a string: nats-server takes a much slower path for a list (measured 154 ms vs 3.5 ms
      // to the first event with 295k other events in the stream; see bench/README.md).
      filter_subjects: this.subject(sessionId, ">"),
      ...(fromId > 0n
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: Number(fromId + 1n) }
        : { deliver_policy: DeliverPolicy.All }),
    });
    if (opts.storedOnly && (await consumer.info(true)).num_pending === 0) return;
    // Pulled by bytes: a reader that does not keep up holds at most this much, and the
    // server keeps the rest.
    const messages = await consumer.consume({ max_bytes: READ_AHEAD_BYTES });
    const it = messages[Symbol.asyncIterator]();
    const stop = () => void messages.close();
    opts.signal?.addEventListener("abort", stop, { once: true });
    const typeAt = this.subject(sessionId, "").length;
    let next: Promise<IteratorResult<JsMsg>> | undefined = it.next();
    try {
      for (;;) {
        let r = await next;
        next = undefined;
        if (r.done) return;
        // Then whatever has already arrived: anything queued resolves within microtasks,
        // before the next turn of the event loop (`later`); the rest waits for next time.
        const later = new Promise<typeof LATER>((resolve) => setImmediate(() => resolve(LATER)));
        const batch: StoredEvent[] = [];
        let end = false;
        for (;;) {
          const m = r.value;
          batch.push({
            id: BigInt(m.seq),
            type: m.subject.slice(typeAt) as EventTypeName,
            data: m.data,
            behind: m.info.pending,
          });
          if (opts.storedOnly && m.info.pending === 0) {
            end = true;
            break;
          }
          const more = it.next();
          if (batch.length >= MAX_BATCH) {
            next = more;
            break;
          }
          const got = await Promise.race([more, later]);
          if (got === LATER) {
            next = more;
            break;
          }
          r = got;
          if (r.done) {
            end = true;
            break;
          }
        }
        yield batch;
        if (end) return;
        next ??= it.next();
      }
    } finally {
      opts.signal?.removeEventListener("abort", stop);
      // Closing ends a pending next() (done), so the iterator can then be returned.
      const closing = messages.close();
      await it.return?.();
      await closing;
    }
  }

  async consume(
    name: string,
    types: readonly EventTypeName[],
    handler: (event: Event) => Promise<void>,
    signal: AbortSignal,
  ): Promise<void> {
    const config = {
      durable_name: name,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      filter_subjects: types.map((t) => this.subject("*", t)),
      // A consumer that died mid-event (a session replica killed) has it redelivered this
      // soon; handling one event takes milliseconds.
      ack_wait: CONSUMER_ACK_WAIT_MS * NS,
      max_deliver: -1,
    };
    try {
      await this.jsm.consumers.info(this.streamName, name);
      await this.jsm.consumers.update(this.streamName, name, {
        filter_subjects: config.filter_subjects,
        ack_wait: config.ack_wait,
      });
    } catch (err) {
      if (!(err instanceof JetStreamApiError && err.status === 404)) throw err;
      await this.jsm.consumers.add(this.streamName, config);
    }
    while (!signal.aborted) {
      const consumer = await this.js.consumers.get(this.streamName, name);
      const messages = await consumer.consume({ max_messages: 256 });
      const stop = () => void messages.close();
      signal.addEventListener("abort", stop, { once: true });
      try {
        for await (const m of messages) {
          try {
            const event = fromBinary(EventSchema, m.data);
            event.id = BigInt(m.seq);
            await handler(event);
            m.ack();
          } catch {
            m.nak(1_000);
          }
        }
      } catch {
        // The iterator ends on connection trouble; loop and resume from the durable state.
        await new Promise((r) => setTimeout(r, 500));
      } finally {
        signal.removeEventListener("abort", stop);
      }
    }
  }

  async close(): Promise<void> {
    if (!this.nc.isClosed()) await this.nc.drain().catch(() => this.nc.close());
  }
}
