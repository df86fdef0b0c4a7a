import { create, fromJson, type JsonValue } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { ConnectError } from "@connectrpc/connect";
import {
  type EventLog,
  inTransaction,
  type Logger,
  type Pool,
  type PoolClient,
  type Sealer,
  terminalMsgId,
} from "@kilo-cloud/common";
import { EventSchema, McpServerSchema } from "@kilo-cloud/proto";
import { type StartExecutionRequest, StartExecutionRequestSchema } from "@kilo-cloud/proto/sandbox";
import type { ExecutionRow, SessionRow } from "../db/sessions.js";
import { sealContext } from "../handlers/seal-context.js";
import type { SessionMetrics } from "../metrics.js";
import type { SandboxClient } from "../sandbox/client.js";

export interface DispatcherSettings {
  /** A queued message older than this becomes `expired`. */
  queueExpiryMs: number;
  /** A started execution without a heartbeat for this long is failed by the reaper. */
  staleAfterMs: number;
  /** How often the sweeper looks for work a crash or a lost event left behind. */
  sweepIntervalMs: number;
  /** Deadline of calls to sandbox-manager. */
  sandboxTimeoutMs: number;
}

/** GetSession calls a running execution STALE after this long without a heartbeat (1.5 intervals). */
export const DEFAULT_HEARTBEAT_STALE_MS = 45_000;

export const DEFAULT_DISPATCHER_SETTINGS: DispatcherSettings = {
  queueExpiryMs: 60 * 60_000,
  // Three heartbeat intervals (sandbox-manager's HEARTBEAT_INTERVAL_MS, 30 s): a run whose
  // sandbox or manager is gone ends with an error event and the queue moves on in ~90 s.
  staleAfterMs: 90_000,
  sweepIntervalMs: 5_000,
  sandboxTimeoutMs: 15_000,
};

export type TerminalStatus = "completed" | "failed" | "interrupted" | "expired";

export interface DispatcherDeps {
  pool: Pool;
  sealer: Sealer;
  sandbox: SandboxClient;
  events: EventLog;
  logger: Logger;
  settings: DispatcherSettings;
  /** Called after an execution reached a terminal status (e.g. to wake the callback worker). */
  onFinished?: () => void;
  metrics?: SessionMetrics;
}

/**
 * Runs each session's queue: one execution at a time (the database's partial unique index
 * on `status = 'started'` is the lock, so any number of session replicas can dispatch),
 * oldest first. The next one starts when the previous ends (the lifecycle consumer calls
 * `finish`). A periodic sweep expires old messages, fails executions whose heartbeats
 * stopped, and starts whatever is startable, so nothing waits on an event that was lost.
 */
export class Dispatcher {
  private timer: NodeJS.Timeout | undefined;
  private sweeping = false;

  constructor(private readonly deps: DispatcherDeps) {}

  start(): void {
    this.timer ??= setInterval(() => void this.sweep(), this.deps.settings.sweepIntervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /**
   * Starts the session's oldest queued execution if none is running. Returns the id of
   * the execution it started, if any.
   */
  async kick(sessionId: string): Promise<string | undefined> {
    const claimed = await inTransaction(this.deps.pool, async (tx) => {
      // The session row lock serialises dispatchers of one session (FIFO); the unique
      // index on started executions would refuse a second one anyway.
      const session = (
        await tx.query<SessionRow>("SELECT * FROM session.sessions WHERE id = $1 FOR UPDATE", [sessionId])
      ).rows[0];
      if (!session) return undefined;
      const { rows } = await tx.query<ExecutionRow & { first_seq: string }>(
        `SELECT e.*, (SELECT min(seq) FROM session.executions f WHERE f.session_id = e.session_id) AS first_seq
         FROM session.executions e
         WHERE e.session_id = $1 AND e.status = 'queued'
           AND NOT EXISTS (SELECT 1 FROM session.executions r WHERE r.session_id = $1 AND r.status = 'started')
         ORDER BY e.seq LIMIT 1`,
        [sessionId],
      );
      const next = rows[0];
      if (!next) return undefined;
      await tx.query(
        "UPDATE session.executions SET status = 'started', started_at = clock_timestamp(), last_heartbeat_at = clock_timestamp() WHERE id = $1",
        [next.id],
      );
      return { execution: next, session, first: next.seq === next.first_seq };
    });
    if (!claimed) return undefined;
    const { execution, session, first } = claimed;
    let request: StartExecutionRequest;
    try {
      request = this.startRequest(session, execution, first);
    } catch (err) {
      const message = "the session's stored configuration could not be opened";
      await this.finish(execution.id, "failed", message, {}, () =>
        this.publishError(sessionId, execution.id, message),
      );
      this.deps.logger.error(
        { executionId: execution.id, err: (err as Error).message },
        "could not build the start request",
      );
      return undefined;
    }
    try {
      await this.deps.sandbox.startExecution(request, { timeoutMs: this.deps.settings.sandboxTimeoutMs });
      this.deps.metrics?.executionStarted(execution.created_at, new Date());
      this.deps.logger.info({ sessionId, executionId: execution.id }, "execution started");
      return execution.id;
    } catch (err) {
      // Not started: put it back at the head of the queue; the sweep retries it.
      this.deps.logger.warn(
        { sessionId, executionId: execution.id, err: ConnectError.from(err).message },
        "sandbox-manager did not take the execution; will retry",
      );
      await this.deps.pool.query(
        "UPDATE session.executions SET status = 'queued', started_at = NULL, last_heartbeat_at = NULL WHERE id = $1 AND status = 'started'",
        [execution.id],
      );
      return undefined;
    }
  }

  /**
   * Records a terminal status (once: later reports of the same execution change nothing),
   * queues the completion callback, runs `beforeNext` (only when this call recorded it),
   * and starts the session's next message.
   */
  async finish(
    executionId: string,
    status: TerminalStatus,
    errorMessage?: string,
    extra: { exitCode?: number; branch?: string } = {},
    beforeNext?: (sessionId: string) => Promise<void>,
  ): Promise<boolean> {
    const finished = await inTransaction(this.deps.pool, async (tx) => {
      const { rows } = await tx.query<ExecutionRow>(
        `UPDATE session.executions
         SET status = $2, error_message = $3, exit_code = $4, finished_at = clock_timestamp()
         WHERE id = $1 AND status IN ('queued', 'started')
         RETURNING *`,
        [executionId, status, errorMessage ?? null, extra.exitCode ?? null],
      );
      const row = rows[0];
      if (!row) return undefined;
      await this.queueCallback(tx, row, status, errorMessage, extra.branch);
      return row;
    });
    if (!finished) return false;
    this.deps.metrics?.executionFinished(status, finished.started_at, finished.finished_at);
    const sessionId = finished.session_id;
    this.deps.onFinished?.();
    await beforeNext?.(sessionId);
    await this.kick(sessionId).catch((err: unknown) =>
      this.deps.logger.error(
        { sessionId, err: (err as Error).message },
        "could not start the next execution",
      ),
    );
    return true;
  }

  /** Records a heartbeat of a running execution. */
  async heartbeat(executionId: string, at: Date): Promise<void> {
    await this.deps.pool.query(
      "UPDATE session.executions SET last_heartbeat_at = greatest(last_heartbeat_at, $2) WHERE id = $1 AND status = 'started'",
      [executionId, at],
    );
  }

  /** Expires old messages, reaps silent executions, and starts what can start. */
  async sweep(): Promise<void> {
    if (this.sweeping) return;
    this.sweeping = true;
    try {
      const { pool, settings } = this.deps;
      const expired = await pool.query<{ id: string; session_id: string }>(
        `SELECT id, session_id FROM session.executions
         WHERE status = 'queued' AND created_at < now() - make_interval(secs => $1::double precision / 1000)`,
        [settings.queueExpiryMs],
      );
      for (const e of expired.rows) {
        const message = `the message waited longer than ${duration(settings.queueExpiryMs)} in the queue and expired`;
        // The error event goes out before the next message can start, so the stream never
        // shows the next execution ahead of this one's end.
        await this.finish(e.id, "expired", message, {}, () => this.publishError(e.session_id, e.id, message));
      }
      const stale = await pool.query<{
        id: string;
        session_id: string;
        user_id: string;
        org_id: string | null;
        bot_id: string | null;
      }>(
        `SELECT e.id, e.session_id, s.user_id, s.org_id, s.bot_id
         FROM session.executions e JOIN session.sessions s ON s.id = e.session_id
         WHERE e.status = 'started'
           AND coalesce(e.last_heartbeat_at, e.started_at) < now() - make_interval(secs => $1::double precision / 1000)`,
        [settings.staleAfterMs],
      );
      for (const e of stale.rows) {
        const message = `no heartbeat from the execution for ${Math.round(settings.staleAfterMs / 1000)} s; it was marked failed`;
        // Its error event, and stopping it if it still runs somewhere (best effort), come
        // before the next message starts: otherwise the next execution's events precede
        // this one's end on the stream, and two runs may share the workspace for a while.
        await this.finish(e.id, "failed", message, {}, async () => {
          await this.publishError(e.session_id, e.id, message);
          await this.deps.sandbox
            .interrupt(
              {
                executionId: e.id,
                cloudAgentSessionId: e.session_id,
                sandbox: {
                  userId: e.user_id,
                  ...(e.org_id ? { orgId: e.org_id } : {}),
                  ...(e.bot_id ? { botId: e.bot_id } : {}),
                },
              },
              { timeoutMs: settings.sandboxTimeoutMs },
            )
            .catch(() => undefined);
        });
      }
      const waiting = await pool.query<{ session_id: string }>(
        `SELECT DISTINCT q.session_id FROM session.executions q
         WHERE q.status = 'queued'
           AND NOT EXISTS (SELECT 1 FROM session.executions r WHERE r.session_id = q.session_id AND r.status = 'started')`,
      );
      for (const w of waiting.rows) await this.kick(w.session_id);
    } catch (err) {
      this.deps.logger.error({ err: (err as Error).message }, "queue sweep failed");
    } finally {
      this.sweeping = false;
    }
  }

  /** An `error` event for an execution the session service ended itself. */
  private async publishError(sessionId: string, executionId: string, message: string): Promise<void> {
    const event = create(EventSchema, {
      cloudAgentSessionId: sessionId,
      executionId,
      timestamp: timestampNow(),
      payload: { case: "error", value: { error: message } },
    });
    await this.deps.events
      .publish({ event, msgId: terminalMsgId(executionId) })
      .catch((err: unknown) =>
        this.deps.logger.error(
          { executionId, err: (err as Error).message },
          "could not publish the error event",
        ),
      );
  }

  private async queueCallback(
    tx: PoolClient,
    execution: ExecutionRow,
    status: TerminalStatus,
    errorMessage: string | undefined,
    branch: string | undefined,
  ): Promise<void> {
    const { rows } = await tx.query<
      Pick<SessionRow, "callback_target_sealed" | "kilo_session_id" | "upstream_branch">
    >("SELECT callback_target_sealed, kilo_session_id, upstream_branch FROM session.sessions WHERE id = $1", [
      execution.session_id,
    ]);
    const session = rows[0];
    if (!session?.callback_target_sealed) return;
    const payload = {
      cloudAgentSessionId: execution.session_id,
      kiloSessionId: session.kilo_session_id,
      executionId: execution.id,
      status,
      ...(errorMessage ? { errorMessage } : {}),
      branch: branch ?? session.upstream_branch ?? `session/${execution.session_id}`,
    };
    await tx.query(
      `INSERT INTO session.callback_deliveries (execution_id, session_id, payload, status)
       VALUES ($1, $2, $3, 'pending') ON CONFLICT (execution_id) DO NOTHING`,
      [execution.id, execution.session_id, JSON.stringify(payload)],
    );
  }

  /** The sealed configuration is opened here, just before it is handed to the sandbox. */
  private startRequest(session: SessionRow, execution: ExecutionRow, first: boolean): StartExecutionRequest {
    const { sealer } = this.deps;
    const scope = { sessionId: session.id, userId: session.user_id };
    const open = <T>(column: string, value: string | null, fallback: T): T =>
      value === null ? fallback : sealer.openJson<T>(value, sealContext(scope, column));
    const openToken = (column: string, value: string | null) =>
      value === null ? undefined : sealer.open(value, sealContext(scope, column));
    const mcp = open<Record<string, JsonValue>>("mcp_servers", session.mcp_servers_sealed, {});
    const gitToken =
      session.github_repo !== null
        ? openToken("github_token", session.github_token_sealed)
        : openToken("git_token", session.git_token_sealed);
    const kiloToken = openToken("kilo_token", session.kilo_token_sealed);
    const secrets = open<
      Record<string, { encryptedData: string; encryptedDEK: string; algorithm: string; version: number }>
    >("encrypted_secrets", session.encrypted_secrets_sealed, {});
    return create(StartExecutionRequestSchema, {
      executionId: execution.id,
      cloudAgentSessionId: session.id,
      kiloSessionId: session.kilo_session_id,
      sandbox: {
        userId: session.user_id,
        ...(session.org_id ? { orgId: session.org_id } : {}),
        ...(session.bot_id ? { botId: session.bot_id } : {}),
      },
      repository:
        session.github_repo !== null
          ? { case: "githubRepo", value: session.github_repo }
          : { case: "gitUrl", value: session.git_url ?? "" },
      ...(gitToken ? { gitToken } : {}),
      ...(kiloToken ? { kiloToken } : {}),
      prompt: execution.prompt,
      mode: execution.mode,
      model: execution.model,
      envVars: open<Record<string, string>>("env_vars", session.env_vars_sealed, {}),
      encryptedSecrets: Object.fromEntries(
        Object.entries(secrets).map(([k, v]) => [
          k,
          {
            encryptedData: v.encryptedData,
            encryptedDek: v.encryptedDEK,
            algorithm: v.algorithm,
            version: v.version,
          },
        ]),
      ),
      setupCommands: open<string[]>("setup_commands", session.setup_commands_sealed, []),
      mcpServers: Object.fromEntries(Object.entries(mcp).map(([k, v]) => [k, fromJson(McpServerSchema, v)])),
      ...(session.upstream_branch ? { upstreamBranch: session.upstream_branch } : {}),
      autoCommit: session.auto_commit ?? false,
      firstExecution: first,
    });
  }
}

/** "90 s", "10 min", "1 h 30 min": for messages people read. */
function duration(ms: number): string {
  if (ms < 120_000) return `${Math.round(ms / 1000)} s`;
  const minutes = Math.round(ms / 60_000);
  if (minutes < 120) return `${minutes} min`;
  return `${Math.floor(minutes / 60)} h${minutes % 60 ? ` ${minutes % 60} min` : ""}`;
}
