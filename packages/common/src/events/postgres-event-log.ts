import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Event, EventSchema } from "@kilo-cloud/proto";
import type pg from "pg";
import type { Logger } from "../logger.js";
import { createPool, migrate } from "../pg.js";
import { BatchPublisher } from "./batch-publisher.js";
import {
  type EventLog,
  type EventTypeName,
  eventTypeOf,
  type PublishInput,
  type PublishResult,
  type ReadOptions,
} from "./event-log.js";
import { decodeStored, type StoredEvent } from "./stored-event.js";

export const EVENTS_MIGRATIONS_DIR = fileURLToPath(new URL("./migrations", import.meta.url));

/** The NOTIFY channel of events.publish; the payload is `<type>:<sessionId>`. */
export const EVENTS_NOTIFY_CHANNEL = "kilo_events";

/** Applies the event log's migrations (schema `events`). */
export function migrateEventsSchema(pool: pg.Pool, logger?: Logger): Promise<number> {
  return migrate(pool, { schema: "events", dir: EVENTS_MIGRATIONS_DIR, ...(logger ? { logger } : {}) });
}

export interface PostgresEventLogOptions {
  /** The pool to use (its owner ends it); or a connection string, for a pool the log owns. */
  pool?: pg.Pool;
  connectionString?: string;
  /**
   * How readers learn of new events. "listen": LISTEN/NOTIFY on a dedicated connection
   * (real Postgres). "poll": the log's own publishes wake its readers at once, and a
   * periodic query finds events other processes published; for embedded PGlite, whose
   * socket server cannot route a notification to the listening connection, and for
   * poolers in transaction mode. Default "listen".
   */
  notifications?: "listen" | "poll";
  /** How often the head of the log is polled (default 250 ms with "poll", 5 s as the safety net of "listen"). */
  pollIntervalMs?: number;
  /** Retention by age (default 7 days). */
  maxAgeMs?: number;
  /** Retention by size of the stored payloads (default 10 GiB). */
  maxBytes?: number;
  /** How often `prune()` runs by itself (default 1 min; 0: never, call it yourself). */
  pruneIntervalMs?: number;
  /** How long a consumer instance owns its name without renewing (default 30 s). */
  consumerLeaseMs?: number;
  /** Delay before a handler that threw gets the event again (default 1 s, doubling up to 30 s). */
  consumerRetryMs?: number;
  /** Events fetched per query by consumers (default 256). */
  batchSize?: number;
  /** Events fetched per query by readers (default 2048): replay goes in large pages. */
  readPageSize?: number;
  /** Most events stored per statement (default 256); a burst goes in batches of up to this. */
  publishBatchSize?: number;
  /** Apply the migrations of schema `events` first (default true). */
  migrate?: boolean;
  logger?: Logger;
}

export interface PruneResult {
  /** The oldest id that may still be stored: older ones answer OUT_OF_RANGE. */
  firstId: bigint;
  deleted: number;
}

/** What a reader or consumer waits on; `version` changes whenever it should query again. */
interface Watch {
  /** One session's events; undefined: every session's (consumers). */
  sessionId: string | undefined;
  /** Only these types (consumers); undefined: all. */
  types: ReadonlySet<string> | undefined;
  version: number;
  /** Every matching event with an id up to here has been seen (the poller may raise it). */
  pos: bigint;
  resolve: (() => void) | undefined;
}

/** The readers and consumers waiting for new events, woken by notifications or the poller. */
class WakeHub {
  readonly all = new Set<Watch>();
  private readonly bySession = new Map<string, Set<Watch>>();

  add(sessionId: string | undefined, types: readonly string[] | undefined, pos: bigint): Watch {
    const w: Watch = {
      sessionId,
      types: types ? new Set(types) : undefined,
      version: 0,
      pos,
      resolve: undefined,
    };
    this.all.add(w);
    if (sessionId !== undefined) {
      const set = this.bySession.get(sessionId) ?? new Set<Watch>();
      this.bySession.set(sessionId, set);
      set.add(w);
    }
    return w;
  }

  remove(w: Watch): void {
    this.all.delete(w);
    if (w.sessionId === undefined) return;
    const set = this.bySession.get(w.sessionId);
    set?.delete(w);
    if (set?.size === 0) this.bySession.delete(w.sessionId);
  }

  bump(w: Watch): void {
    w.version++;
    const r = w.resolve;
    w.resolve = undefined;
    r?.();
  }

  /** Wakes whoever may care about a new event of `type` in `sessionId`. */
  wake(type: string, sessionId: string): void {
    for (const w of this.bySession.get(sessionId) ?? []) this.bump(w);
    for (const w of this.all) if (w.sessionId === undefined && (!w.types || w.types.has(type))) this.bump(w);
  }

  wakeAll(): void {
    for (const w of this.all) this.bump(w);
  }

  /** Resolves once `w.version` differs from `seen`, on abort, or after `timeoutMs`. */
  wait(w: Watch, seen: number, signal: AbortSignal, timeoutMs?: number): Promise<void> {
    if (w.version !== seen || signal.aborted) return Promise.resolve();
    return new Promise<void>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = () => {
        if (timer) clearTimeout(timer);
        signal.removeEventListener("abort", done);
        if (w.resolve === done) w.resolve = undefined;
        resolve();
      };
      w.resolve = done;
      signal.addEventListener("abort", done, { once: true });
      if (timeoutMs !== undefined) timer = setTimeout(done, timeoutMs);
    });
  }
}

interface PageRow {
  first_id: string;
  head: string;
  id: string | null;
  type: string | null;
  payload: Buffer | null;
}

interface PublishRow {
  sessionId: string;
  executionId: string;
  type: EventTypeName;
  payload: Buffer;
  msgId: string;
}

/**
 * One statement, one snapshot: the retention floor, the newest id, and the next events.
 * Scalar subqueries rather than joins keep the row estimates at what they are (a join
 * with the never-analysed one-row retention table made the planner expect billions of
 * rows and spend 100+ ms compiling the query with JIT).
 */
const READ_PAGE = `
  SELECT (SELECT first_id FROM events.retention) AS first_id,
         (SELECT coalesce(max(id), 0) FROM events.events) AS head,
         e.id, e.type, e.payload
  FROM (VALUES (1)) AS one (x)
  LEFT JOIN LATERAL (
    SELECT id, type, payload FROM events.events WHERE session_id = $1 AND id > $2 ORDER BY id LIMIT $3
  ) e ON true
  ORDER BY e.id`;

const CONSUME_PAGE = `
  SELECT (SELECT coalesce(max(id), 0) FROM events.events) AS head, e.id, e.payload
  FROM (VALUES (1)) AS one (x)
  LEFT JOIN LATERAL (
    SELECT id, payload FROM events.events WHERE id > $1 AND type = ANY($2::text[]) ORDER BY id LIMIT $3
  ) e ON true
  ORDER BY e.id`;

/** No type filter: like a JetStream consumer without filter subjects. */
const CONSUME_PAGE_ALL = `
  SELECT (SELECT coalesce(max(id), 0) FROM events.events) AS head, e.id, e.payload
  FROM (VALUES (1)) AS one (x)
  LEFT JOIN LATERAL (SELECT id, payload FROM events.events WHERE id > $1 ORDER BY id LIMIT $2) e ON true
  ORDER BY e.id`;

/** Which sessions and types got events after $1, and the newest id. */
const POLL = `
  WITH h AS (SELECT coalesce(max(id), 0) AS head FROM events.events)
  SELECT h.head, n.session_id, n.type
  FROM h LEFT JOIN LATERAL (
    SELECT DISTINCT session_id, type FROM events.events WHERE id > $1 AND id <= h.head
  ) n ON true`;

const max = (a: bigint, b: bigint) => (a > b ? a : b);

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** Errors worth retrying a publish for: the connection's, not the statement's. */
function transient(err: unknown): boolean {
  const { code, message } = err as { code?: unknown; message?: unknown };
  if (typeof code === "string") {
    // SQLSTATE connection exception, transaction rollback, shutdown, too many connections;
    // or a socket error (ECONNRESET, ECONNREFUSED, …).
    return /^(08|40|57P|53300)/.test(code) || /^E[A-Z]+$/.test(code);
  }
  return typeof message === "string" && /connection terminated|timeout|ECONNRE/i.test(message);
}

function outOfRange(pos: bigint, firstId: bigint, initial: boolean): ConnectError {
  return new ConnectError(
    initial
      ? `fromId ${pos} is older than the retained events (the oldest retained id is ${firstId}); replay from a later id or from the start`
      : `the events after id ${pos} were pruned before this reader got them (the oldest retained id is ${firstId}); replay from a later id or from the start`,
    Code.OutOfRange,
  );
}

/**
 * The event log on Postgres: table `events.events` (the row id is the event id), live
 * delivery by LISTEN/NOTIFY or polling, retention by age and size, durable consumers in
 * `events.consumers`.
 *
 * No gap, no duplicate: publishers are serialised (see events.publish in the migration),
 * so ids commit in increasing order; a reader keeps one cursor, asks for `id > cursor`,
 * and never has to wonder whether a smaller id is still on its way.
 */
export class PostgresEventLog implements EventLog {
  private readonly hub = new WakeHub();
  private readonly closing = new AbortController();
  private readonly consumers = new Set<Promise<void>>();
  private listener: pg.PoolClient | undefined;
  private listenRetry: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private pruneTimer: NodeJS.Timeout | undefined;
  private polling = false;
  private lastSeen: bigint | undefined;
  private closed = false;
  private readonly publisher: BatchPublisher<PublishRow, PublishResult>;

  private constructor(
    readonly pool: pg.Pool,
    private readonly ownsPool: boolean,
    private readonly opts: PostgresEventLogOptions,
  ) {
    this.publisher = new BatchPublisher({
      store: (rows) => this.storeBatch(rows),
      transient,
      maxBatch: opts.publishBatchSize ?? 256,
      sleep: (ms) => sleep(ms, this.closing.signal),
      closed: () => this.closed,
    });
  }

  static async connect(opts: PostgresEventLogOptions): Promise<PostgresEventLog> {
    const pool = opts.pool ?? (opts.connectionString ? createPool(opts.connectionString) : undefined);
    if (!pool) throw new Error("PostgresEventLog needs a pool or a connection string");
    const log = new PostgresEventLog(pool, !opts.pool, opts);
    try {
      if (opts.migrate ?? true) await migrateEventsSchema(pool, opts.logger);
      if (log.mode === "listen") await log.listen();
      log.startTimers();
      return log;
    } catch (err) {
      await log.close();
      throw err;
    }
  }

  private get mode(): "listen" | "poll" {
    return this.opts.notifications ?? "listen";
  }

  private get batchSize(): number {
    return this.opts.batchSize ?? 256;
  }

  /**
   * Queued and stored in call order, in batches: everything published while the previous
   * batch was being stored goes in the next statement (see BatchPublisher).
   */
  publish({ event, msgId }: PublishInput): Promise<PublishResult> {
    const data = toBinary(EventSchema, { ...event, id: 0n });
    return this.publisher.publish({
      sessionId: event.cloudAgentSessionId,
      executionId: event.executionId,
      type: eventTypeOf(event),
      payload: Buffer.from(data.buffer, data.byteOffset, data.byteLength),
      msgId,
    });
  }

  private async storeBatch(rows: PublishRow[]): Promise<PublishResult[]> {
    const { rows: out } = await this.pool.query<{ ord: number; event_id: string; duplicate: boolean }>(
      "SELECT ord, event_id, duplicate FROM events.publish_batch($1, $2, $3, $4, $5)",
      [
        rows.map((r) => r.sessionId),
        rows.map((r) => r.executionId),
        rows.map((r) => r.type),
        rows.map((r) => r.payload),
        rows.map((r) => r.msgId),
      ],
    );
    if (out.length !== rows.length) throw new Error("events.publish_batch answered the wrong number of rows");
    const results = out.map((r) => ({ id: BigInt(r.event_id), duplicate: r.duplicate }));
    // The NOTIFY reaches other processes; readers in this one need not wait for it.
    if (this.mode === "poll") {
      rows.forEach((r, i) => {
        if (!results[i]?.duplicate) this.hub.wake(r.type, r.sessionId);
      });
    }
    return results;
  }

  async *read(sessionId: string, opts: ReadOptions = {}): AsyncIterable<Event> {
    for await (const page of this.readStored(sessionId, opts)) {
      for (const stored of page) yield decodeStored(stored);
    }
  }

  async *readStored(sessionId: string, opts: ReadOptions = {}): AsyncIterable<StoredEvent[]> {
    const signal = opts.signal ? AbortSignal.any([opts.signal, this.closing.signal]) : this.closing.signal;
    const pageSize = this.opts.readPageSize ?? 2048;
    let pos = opts.fromId ?? 0n;
    // Without a fromId, the first page starts at the oldest retained event, whatever it is.
    let checkRange = opts.fromId !== undefined;
    let first = true;
    const watch = this.hub.add(sessionId, undefined, pos);
    try {
      while (!signal.aborted) {
        const seen = watch.version;
        pos = max(pos, watch.pos);
        const { rows } = await this.pool.query<PageRow>(READ_PAGE, [sessionId, pos.toString(), pageSize]);
        const firstId = BigInt(rows[0]?.first_id ?? "1");
        if (checkRange && pos + 1n < firstId) throw outOfRange(pos, firstId, first);
        checkRange = true;
        first = false;
        const page: StoredEvent[] = [];
        for (const row of rows) {
          if (row.id === null || row.payload === null) continue;
          page.push({ id: BigInt(row.id), type: row.type as EventTypeName, data: row.payload });
        }
        const last = page.at(-1);
        if (last) {
          pos = last.id;
          watch.pos = max(watch.pos, pos);
          yield page;
        }
        if (page.length < pageSize) {
          // Everything up to the head is final (ids commit in order): nothing of this
          // session is hiding below it, so the cursor may move there.
          pos = max(pos, max(BigInt(rows[0]?.head ?? "0"), firstId - 1n));
          watch.pos = max(watch.pos, pos);
          if (opts.storedOnly) return;
          await this.hub.wait(watch, seen, signal);
        }
      }
    } finally {
      this.hub.remove(watch);
    }
  }

  consume(
    name: string,
    types: readonly EventTypeName[],
    handler: (event: Event) => Promise<void>,
    signal: AbortSignal,
  ): Promise<void> {
    const run = this.runConsumer(name, types, handler, signal);
    this.consumers.add(run);
    return run.finally(() => this.consumers.delete(run));
  }

  private async runConsumer(
    name: string,
    types: readonly EventTypeName[],
    handler: (event: Event) => Promise<void>,
    outer: AbortSignal,
  ): Promise<void> {
    const signal = AbortSignal.any([outer, this.closing.signal]);
    const me = randomUUID();
    const leaseMs = this.opts.consumerLeaseMs ?? 30_000;
    const retryMs = this.opts.consumerRetryMs ?? 1_000;
    const typeList = [...types];
    const watch = this.hub.add(undefined, typeList.length > 0 ? typeList : undefined, 0n);
    let owned = false;
    let pos = 0n;

    const decode = (id: string, payload: Buffer) => {
      const event = fromBinary(EventSchema, payload);
      event.id = BigInt(id);
      return event;
    };
    const errorText = (err: unknown) => (err instanceof Error ? err.message : String(err)).slice(0, 2_000);

    try {
      while (!signal.aborted) {
        const seen = watch.version;
        let waitMs = Math.max(100, Math.floor(leaseMs / 3));
        try {
          // Create or claim the name (or renew the claim), and persist how far the scan got.
          const claim = await this.pool.query<{ last_id: string }>(
            `INSERT INTO events.consumers AS c (name, owner, lease_until)
             VALUES ($1, $2, now() + $3 * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE
             SET owner = $2, lease_until = now() + $3 * interval '1 millisecond', updated_at = now(),
                 last_id = CASE WHEN c.owner = $2 THEN greatest(c.last_id, $4::bigint) ELSE c.last_id END
             WHERE c.owner IS NULL OR c.owner = $2 OR c.lease_until < now()
             RETURNING c.last_id`,
            [name, me, leaseMs, pos.toString()],
          );
          const claimed = claim.rows[0];
          if (!claimed) {
            // Another instance delivers; take over when its lease lapses.
            owned = false;
            await this.hub.wait(watch, seen, signal, waitMs);
            continue;
          }
          owned = true;
          pos = BigInt(claimed.last_id);

          // Events a handler failed on earlier whose time has come.
          const retries = await this.pool.query<{
            event_id: string;
            attempts: number;
            payload: Buffer | null;
          }>(
            `SELECT r.event_id, r.attempts, e.payload
             FROM events.consumer_retries r LEFT JOIN events.events e ON e.id = r.event_id
             WHERE r.consumer = $1 AND r.next_at <= now()
             ORDER BY r.event_id LIMIT $2`,
            [name, this.batchSize],
          );
          for (const r of retries.rows) {
            if (signal.aborted) break;
            if (r.payload === null) {
              // Pruned meanwhile: nothing left to deliver.
              await this.pool.query(
                "DELETE FROM events.consumer_retries WHERE consumer = $1 AND event_id = $2",
                [name, r.event_id],
              );
              continue;
            }
            try {
              await handler(decode(r.event_id, r.payload));
              await this.pool.query(
                "DELETE FROM events.consumer_retries WHERE consumer = $1 AND event_id = $2",
                [name, r.event_id],
              );
            } catch (err) {
              await this.pool.query(
                `UPDATE events.consumer_retries
                 SET attempts = attempts + 1, last_error = $4,
                     next_at = now() + least($3 * power(2, attempts), 30000) * interval '1 millisecond'
                 WHERE consumer = $1 AND event_id = $2`,
                [name, r.event_id, retryMs, errorText(err)],
              );
            }
          }

          const page = await this.pool.query<{ head: string; id: string | null; payload: Buffer | null }>(
            typeList.length > 0 ? CONSUME_PAGE : CONSUME_PAGE_ALL,
            typeList.length > 0
              ? [pos.toString(), typeList, this.batchSize]
              : [pos.toString(), this.batchSize],
          );
          let n = 0;
          let lost = false;
          for (const row of page.rows) {
            if (row.id === null || row.payload === null) continue;
            if (signal.aborted) break;
            n++;
            let failure: unknown;
            let failed = false;
            try {
              await handler(decode(row.id, row.payload));
            } catch (err) {
              failed = true;
              failure = err;
            }
            // Ack (and, for a failure, schedule the retry) in one statement, only while
            // this instance still owns the name.
            const ack = await this.pool.query<{ n: string }>(
              failed
                ? `WITH c AS (
                     UPDATE events.consumers
                     SET last_id = greatest(last_id, $2::bigint), updated_at = now(),
                         lease_until = now() + $4 * interval '1 millisecond'
                     WHERE name = $1 AND owner = $3 RETURNING name),
                   i AS (
                     INSERT INTO events.consumer_retries (consumer, event_id, attempts, next_at, last_error)
                     SELECT name, $2::bigint, 1, now() + $5 * interval '1 millisecond', $6 FROM c
                     ON CONFLICT (consumer, event_id) DO NOTHING)
                   SELECT count(*) AS n FROM c`
                : `WITH c AS (
                     UPDATE events.consumers
                     SET last_id = greatest(last_id, $2::bigint), updated_at = now(),
                         lease_until = now() + $4 * interval '1 millisecond'
                     WHERE name = $1 AND owner = $3 RETURNING name)
                   SELECT count(*) AS n FROM c`,
              failed ? [name, row.id, me, leaseMs, retryMs, errorText(failure)] : [name, row.id, me, leaseMs],
            );
            if (Number(ack.rows[0]?.n ?? 0) === 0) {
              lost = true;
              owned = false;
              break;
            }
            pos = BigInt(row.id);
          }
          if (lost || signal.aborted) continue;
          if (n < this.batchSize) {
            pos = max(pos, BigInt(page.rows[0]?.head ?? "0"));
            const due = await this.pool.query<{ ms: number | null }>(
              `SELECT greatest(0, extract(epoch FROM min(next_at) - now()) * 1000)::float8 AS ms
               FROM events.consumer_retries WHERE consumer = $1`,
              [name],
            );
            const ms = due.rows[0]?.ms;
            if (ms !== null && ms !== undefined) waitMs = Math.min(waitMs, Math.ceil(ms) + 10);
            await this.hub.wait(watch, seen, signal, waitMs);
          }
        } catch (err) {
          if (signal.aborted) break;
          this.opts.logger?.warn({ consumer: name, err: errorText(err) }, "event consumer failed; retrying");
          await sleep(1_000, signal);
        }
      }
    } finally {
      this.hub.remove(watch);
      if (owned) {
        // Let another instance (or the next start) take over at once.
        await this.pool
          .query(
            `UPDATE events.consumers SET owner = NULL, lease_until = NULL, last_id = greatest(last_id, $3::bigint)
             WHERE name = $1 AND owner = $2`,
            [name, me, pos.toString()],
          )
          .catch(() => {});
      }
    }
  }

  /**
   * Applies the retention limits: drops the oldest events beyond the age and size limits
   * (always a prefix of the log, so the floor below which reads fail is exact).
   */
  async prune(): Promise<PruneResult> {
    const maxAgeMs = this.opts.maxAgeMs ?? 7 * 24 * 3600 * 1000;
    const maxBytes = this.opts.maxBytes ?? 10 * 1024 ** 3;
    const { rows } = await this.pool.query<{ floor: string }>(
      `WITH h AS (SELECT id, total_bytes FROM events.events ORDER BY id DESC LIMIT 1),
            by_age AS (SELECT coalesce(
              (SELECT id FROM events.events
               WHERE created_at >= now() - $1 * interval '1 millisecond' ORDER BY id LIMIT 1),
              (SELECT id + 1 FROM h), 1) AS floor),
            by_size AS (SELECT coalesce(
              (SELECT id FROM events.events
               WHERE total_bytes - octet_length(payload) >= (SELECT total_bytes FROM h) - $2::bigint
               ORDER BY id LIMIT 1),
              (SELECT id + 1 FROM h), 1) AS floor)
       SELECT greatest(by_age.floor, by_size.floor) AS floor FROM by_age, by_size`,
      [maxAgeMs, maxBytes],
    );
    return this.truncateBefore(BigInt(rows[0]?.floor ?? "1"));
  }

  /**
   * Drops every event with an id below `id`. Reads asking for anything older answer
   * OUT_OF_RANGE from then on (the floor moves before the rows go).
   */
  async truncateBefore(id: bigint): Promise<PruneResult> {
    const { rows } = await this.pool.query<{ first_id: string }>(
      // Never past the next id: events published later must stay readable.
      `UPDATE events.retention
       SET first_id = greatest(first_id, least($1::bigint, (SELECT coalesce(max(id), 0) + 1 FROM events.events)))
       RETURNING first_id`,
      [id.toString()],
    );
    const firstId = BigInt(rows[0]?.first_id ?? id.toString());
    let deleted = 0;
    // In batches: one huge DELETE would hold a long transaction (and, embedded, stall
    // every other connection for its duration).
    for (;;) {
      const res = await this.pool.query(
        `DELETE FROM events.events WHERE id IN (
           SELECT id FROM events.events WHERE id < $1::bigint ORDER BY id LIMIT 5000)`,
        [firstId.toString()],
      );
      deleted += res.rowCount ?? 0;
      if ((res.rowCount ?? 0) < 5000) break;
    }
    return { firstId, deleted };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.closing.abort();
    if (this.pollTimer) clearInterval(this.pollTimer);
    if (this.pruneTimer) clearInterval(this.pruneTimer);
    if (this.listenRetry) clearTimeout(this.listenRetry);
    await Promise.allSettled([...this.consumers]);
    const listener = this.listener;
    this.listener = undefined;
    if (listener) {
      await listener.query(`UNLISTEN ${EVENTS_NOTIFY_CHANNEL}`).catch(() => {});
      listener.release();
    }
    if (this.ownsPool) await this.pool.end();
  }

  private startTimers(): void {
    const pollMs = this.opts.pollIntervalMs ?? (this.mode === "poll" ? 250 : 5_000);
    this.pollTimer = setInterval(() => void this.poll(), pollMs);
    this.pollTimer.unref();
    const pruneMs = this.opts.pruneIntervalMs ?? 60_000;
    if (pruneMs > 0) {
      this.pruneTimer = setInterval(() => {
        this.prune().catch((err: unknown) =>
          this.opts.logger?.warn({ err: (err as Error).message }, "event log pruning failed"),
        );
      }, pruneMs);
      this.pruneTimer.unref();
    }
  }

  /**
   * Finds events published since the last look and wakes their readers: the primary way
   * to learn of other processes' events in "poll" mode, a safety net for lost
   * notifications in "listen" mode. Idle readers' cursors move to the head, so pruning
   * other sessions' events does not look like a gap to them.
   */
  private async poll(): Promise<void> {
    if (this.polling || this.closed || this.hub.all.size === 0) return;
    this.polling = true;
    try {
      const since = this.lastSeen;
      const { rows } = await this.pool.query<{
        head: string;
        session_id: string | null;
        type: string | null;
      }>(POLL, [(since ?? 0n).toString()]);
      const head = BigInt(rows[0]?.head ?? "0");
      this.lastSeen = head;
      if (since === undefined) {
        this.hub.wakeAll();
        return;
      }
      const sessions = new Set<string>();
      const types = new Set<string>();
      for (const r of rows) {
        if (r.session_id !== null) sessions.add(r.session_id);
        if (r.type !== null) types.add(r.type);
      }
      for (const w of [...this.hub.all]) {
        const touched =
          w.sessionId === undefined
            ? types.size > 0 && (!w.types || [...types].some((t) => w.types?.has(t)))
            : sessions.has(w.sessionId);
        if (touched) this.hub.bump(w);
        else if (w.pos >= since) w.pos = max(w.pos, head);
      }
    } catch (err) {
      this.opts.logger?.warn({ err: (err as Error).message }, "event log poll failed");
    } finally {
      this.polling = false;
    }
  }

  /** LISTEN on a connection of its own; on loss, reconnects and wakes every reader. */
  private async listen(): Promise<void> {
    const client = await this.pool.connect();
    client.on("notification", (msg) => {
      if (msg.channel !== EVENTS_NOTIFY_CHANNEL || !msg.payload) return;
      const at = msg.payload.indexOf(":");
      if (at > 0) this.hub.wake(msg.payload.slice(0, at), msg.payload.slice(at + 1));
    });
    const lost = (err: Error) => {
      if (this.listener !== client) return;
      this.listener = undefined;
      client.release(err);
      this.opts.logger?.warn({ err: err.message }, "event log listener lost; reconnecting");
      this.scheduleListen();
    };
    client.on("error", lost);
    client.on("end", () => lost(new Error("the listening connection ended")));
    try {
      await client.query(`LISTEN ${EVENTS_NOTIFY_CHANNEL}`);
    } catch (err) {
      client.release(err as Error);
      throw err;
    }
    if (this.closed) {
      client.release();
      return;
    }
    this.listener = client;
    // Whatever was published while not listening: let every reader look again.
    this.hub.wakeAll();
  }

  private scheduleListen(): void {
    if (this.closed) return;
    this.listenRetry = setTimeout(() => {
      this.listen().catch(() => this.scheduleListen());
    }, 1_000);
    this.listenRetry.unref();
  }
}
