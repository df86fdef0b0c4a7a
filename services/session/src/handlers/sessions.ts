import { create, toJson } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  checkOutboundUrl,
  inTransaction,
  internalError,
  type Logger,
  newExecutionId,
  newKiloSessionId,
  newSessionId,
  type OutboundPolicy,
  type Pool,
  requireIdentity,
  type Sealer,
  SsrfError,
  userTokenKey,
} from "@kilo-cloud/common";
import {
  CallbackTargetSchema,
  type EncryptedSecret,
  ExecutionHealth,
  ExecutionStatus,
  McpServerSchema,
  type PrepareSessionRequest,
  SessionField,
  type SessionInfo,
  SessionInfoSchema,
  type SessionService,
  SessionState,
  type UpdateSessionRequest,
} from "@kilo-cloud/proto";
import {
  deleteSession,
  type ExecutionRow,
  findSession,
  firstExecution,
  insertExecution,
  insertSession,
  markInitiated,
  type NewSession,
  type SessionChanges,
  type SessionRow,
  updateSession,
} from "../db/sessions.js";
import { admitExecution, DEFAULT_EXECUTION_CAPS, type ExecutionCaps } from "../dispatch/admission.js";
import { DEFAULT_HEARTBEAT_STALE_MS, type Dispatcher } from "../dispatch/dispatcher.js";
import type { SandboxClient } from "../sandbox/client.js";

export interface QueueSettings {
  /** Messages that may wait in one session's queue (RESOURCE_EXHAUSTED beyond). */
  maxWaiting: number;
  /** A running execution without a heartbeat for this long shows as STALE. */
  heartbeatStaleMs: number;
  /** Concurrent runs per user and per organization (RESOURCE_EXHAUSTED beyond). */
  caps: ExecutionCaps;
}

export interface SessionHandlerDeps {
  pool: Pool;
  sealer: Sealer;
  dispatcher?: Dispatcher | undefined;
  sandbox?: SandboxClient | undefined;
  queue?: QueueSettings;
  logger?: Logger;
  /** Callback URLs must pass this policy (no DNS yet: literal addresses and schemes). */
  callbackPolicy?: OutboundPolicy;
  /** Accept http:// git URLs (tests and the offline demo); https only otherwise. */
  allowInsecureGit?: boolean;
  /** Hosts of git/MCP URLs exempt from the address policy (tests, the demo's local git). */
  outboundAllowHosts?: readonly string[];
}

import { checkSessionUrls, type SessionUrlPolicy } from "./outbound-urls.js";
import { notFound, owned } from "./ownership.js";
import { SEAL_VERSION, type SealScope, sealContext } from "./seal-context.js";

export { sealContext };

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function sandboxOf(row: SessionRow) {
  return {
    userId: row.user_id,
    ...(row.org_id ? { orgId: row.org_id } : {}),
    ...(row.bot_id ? { botId: row.bot_id } : {}),
  };
}

/** Waiting messages and the running execution of a session. */
async function queueState(
  pool: Pool,
  sessionId: string,
): Promise<{ queueLength: number; running?: ExecutionRow }> {
  const { rows } = await pool.query<ExecutionRow>(
    "SELECT * FROM session.executions WHERE session_id = $1 AND status IN ('queued', 'started') ORDER BY seq",
    [sessionId],
  );
  const running = rows.find((r) => r.status === "started");
  return { queueLength: rows.filter((r) => r.status === "queued").length, ...(running ? { running } : {}) };
}

/** The page token's parts, exactly as ListSessions writes them. */
const CURSOR_AT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/;
const SESSION_ID = /^agent_[0-9a-f-]{36}$/;

/** A UTC time with microseconds that is a real date (no 30 February). */
function isCursorTime(at: unknown): at is string {
  if (typeof at !== "string" || !CURSOR_AT.test(at)) return false;
  const t = new Date(at);
  return !Number.isNaN(t.getTime()) && t.toISOString().slice(0, 23) === at.slice(0, 23);
}

function secretsToJson(values: Record<string, EncryptedSecret>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(values)) {
    out[k] = {
      encryptedData: v.encryptedData,
      encryptedDEK: v.encryptedDek,
      algorithm: v.algorithm,
      version: v.version,
    };
  }
  return out;
}

/** The sealed form of each collection: null when empty (a cleared collection keeps no ciphertext). */
function sealCollections(
  sealer: Sealer,
  scope: SealScope,
  req: Pick<PrepareSessionRequest, "envVars" | "setupCommands" | "mcpServers" | "encryptedSecrets">,
): SessionChanges {
  const changes: SessionChanges = {};
  if (req.envVars) {
    const n = Object.keys(req.envVars.values).length;
    changes.env_var_count = n;
    changes.env_vars_sealed =
      n > 0 ? sealer.sealJson(req.envVars.values, sealContext(scope, "env_vars")) : null;
  }
  if (req.setupCommands) {
    const n = req.setupCommands.values.length;
    changes.setup_command_count = n;
    changes.setup_commands_sealed =
      n > 0 ? sealer.sealJson(req.setupCommands.values, sealContext(scope, "setup_commands")) : null;
  }
  if (req.mcpServers) {
    const entries = Object.entries(req.mcpServers.values);
    changes.mcp_server_count = entries.length;
    changes.mcp_servers_sealed =
      entries.length > 0
        ? sealer.sealJson(
            Object.fromEntries(entries.map(([k, v]) => [k, toJson(McpServerSchema, v)])),
            sealContext(scope, "mcp_servers"),
          )
        : null;
  }
  if (req.encryptedSecrets) {
    const n = Object.keys(req.encryptedSecrets.values).length;
    changes.encrypted_secret_count = n;
    changes.encrypted_secrets_sealed =
      n > 0
        ? sealer.sealJson(secretsToJson(req.encryptedSecrets.values), sealContext(scope, "encrypted_secrets"))
        : null;
  }
  return changes;
}

function sealToken(
  sealer: Sealer,
  scope: SealScope,
  column: string,
  token: string | undefined,
): string | null {
  return token === undefined ? null : sealer.seal(token, sealContext(scope, column));
}

function newSessionRow(
  deps: SessionHandlerDeps,
  ids: { id: string; kiloSessionId: string },
  userId: string,
  kiloToken: string | undefined,
  req: PrepareSessionRequest,
): NewSession {
  const { sealer } = deps;
  const { id } = ids;
  const scope = { sessionId: id, userId };
  const collections = sealCollections(sealer, scope, req);
  return {
    id,
    kilo_session_id: ids.kiloSessionId,
    user_id: userId,
    org_id: req.kilocodeOrganizationId ?? null,
    bot_id: req.botId ?? null,
    github_repo: req.repository.case === "githubRepo" ? req.repository.value : null,
    git_url: req.repository.case === "gitUrl" ? req.repository.value : null,
    prompt: req.prompt,
    mode: req.mode,
    model: req.model,
    auto_commit: req.autoCommit ?? null,
    upstream_branch: req.upstreamBranch ?? null,
    github_token_sealed: sealToken(sealer, scope, "github_token", req.githubToken),
    git_token_sealed: sealToken(sealer, scope, "git_token", req.gitToken),
    kilo_token_sealed: sealToken(sealer, scope, "kilo_token", kiloToken),
    env_vars_sealed: collections.env_vars_sealed ?? null,
    env_var_count: collections.env_var_count ?? 0,
    encrypted_secrets: {},
    encrypted_secrets_sealed: collections.encrypted_secrets_sealed ?? null,
    encrypted_secret_count: collections.encrypted_secret_count ?? 0,
    seal_version: SEAL_VERSION,
    setup_commands_sealed: collections.setup_commands_sealed ?? null,
    setup_command_count: collections.setup_command_count ?? 0,
    mcp_servers_sealed: collections.mcp_servers_sealed ?? null,
    mcp_server_count: collections.mcp_server_count ?? 0,
    callback_target_sealed: req.callbackTarget
      ? sealer.sealJson(
          toJson(CallbackTargetSchema, req.callbackTarget),
          sealContext(scope, "callback_target"),
        )
      : null,
  };
}

/** The sanitized view: counts, flags and metadata; never a token, secret or env value. */
export interface LiveState {
  queueLength: number;
  running?: ExecutionRow | undefined;
  heartbeatStaleMs: number;
}

export function sessionInfo(row: SessionRow, live?: LiveState): SessionInfo {
  const running = live?.running;
  const lastBeat = running ? (running.last_heartbeat_at ?? running.started_at) : null;
  return create(SessionInfoSchema, {
    cloudAgentSessionId: row.id,
    kiloSessionId: row.kilo_session_id,
    userId: row.user_id,
    ...(row.org_id !== null ? { orgId: row.org_id } : {}),
    ...(row.bot_id !== null ? { botId: row.bot_id } : {}),
    ...(row.github_repo !== null ? { githubRepo: row.github_repo } : {}),
    ...(row.git_url !== null ? { gitUrl: row.git_url } : {}),
    prompt: row.prompt,
    ...(row.mode !== null ? { mode: row.mode } : {}),
    ...(row.model !== null ? { model: row.model } : {}),
    ...(row.auto_commit !== null ? { autoCommit: row.auto_commit } : {}),
    ...(row.upstream_branch !== null ? { upstreamBranch: row.upstream_branch } : {}),
    envVarCount: row.env_var_count,
    encryptedSecretCount: row.encrypted_secret_count,
    setupCommandCount: row.setup_command_count,
    mcpServerCount: row.mcp_server_count,
    hasCallbackTarget: row.callback_target_sealed !== null,
    hasGithubToken: row.github_token_sealed !== null,
    hasGitToken: row.git_token_sealed !== null,
    state: row.state === "prepared" ? SessionState.PREPARED : SessionState.INITIATED,
    preparedAt: timestampFromDate(row.prepared_at),
    ...(row.initiated_at ? { initiatedAt: timestampFromDate(row.initiated_at) } : {}),
    updatedAt: timestampFromDate(row.updated_at),
    version: BigInt(row.version),
    queueLength: live?.queueLength ?? 0,
    ...(running
      ? {
          runningExecution: {
            executionId: running.id,
            ...(running.started_at ? { startedAt: timestampFromDate(running.started_at) } : {}),
            ...(lastBeat ? { lastHeartbeatAt: timestampFromDate(lastBeat) } : {}),
            health:
              lastBeat &&
              Date.now() - lastBeat.getTime() <= (live?.heartbeatStaleMs ?? Number.POSITIVE_INFINITY)
                ? ExecutionHealth.HEALTHY
                : ExecutionHealth.STALE,
          },
        }
      : {}),
  });
}

/** The column changes of an UpdateSession request (absent = unchanged, clear = null). */
function updateChanges(sealer: Sealer, userId: string, req: UpdateSessionRequest): SessionChanges {
  const scope = { sessionId: req.cloudAgentSessionId, userId };
  const clear = new Set(req.clear);
  const changes: SessionChanges = sealCollections(sealer, scope, req);
  if (req.mode !== undefined) changes.mode = req.mode;
  if (clear.has(SessionField.MODE)) changes.mode = null;
  if (req.model !== undefined) changes.model = req.model;
  if (clear.has(SessionField.MODEL)) changes.model = null;
  if (req.autoCommit !== undefined) changes.auto_commit = req.autoCommit;
  if (clear.has(SessionField.AUTO_COMMIT)) changes.auto_commit = null;
  if (req.githubToken !== undefined)
    changes.github_token_sealed = sealToken(sealer, scope, "github_token", req.githubToken);
  if (clear.has(SessionField.GITHUB_TOKEN)) changes.github_token_sealed = null;
  if (req.gitToken !== undefined)
    changes.git_token_sealed = sealToken(sealer, scope, "git_token", req.gitToken);
  if (clear.has(SessionField.GIT_TOKEN)) changes.git_token_sealed = null;
  return changes;
}

export function sessionHandlers(
  deps: SessionHandlerDeps,
): Omit<ServiceImpl<typeof SessionService>, "listCallbackDeliveries" | "redeliverCallback"> {
  const { pool } = deps;
  const urlPolicy: SessionUrlPolicy = {
    allowHttp: deps.allowInsecureGit ?? false,
    allowHosts: deps.outboundAllowHosts ?? [],
  };
  const queue: QueueSettings = deps.queue ?? {
    maxWaiting: 10,
    heartbeatStaleMs: DEFAULT_HEARTBEAT_STALE_MS,
    caps: DEFAULT_EXECUTION_CAPS,
  };

  /** Starts the session's next execution if it can; the id of the one it started. */
  const kick = async (sessionId: string): Promise<string | undefined> => {
    if (!deps.dispatcher) return undefined;
    try {
      return await deps.dispatcher.kick(sessionId);
    } catch (err) {
      // Queued is a fine answer: the dispatcher's sweep starts it.
      deps.logger?.warn({ sessionId, err: errorText(err) }, "could not dispatch at once");
      return undefined;
    }
  };
  const ack = (sessionId: string, execution: ExecutionRow, started: string | undefined) => ({
    cloudAgentSessionId: sessionId,
    executionId: execution.id,
    status:
      started === execution.id || (execution.status !== "queued" && started === undefined)
        ? ExecutionStatus.STARTED
        : ExecutionStatus.QUEUED,
    streamUrl: `/stream?cloudAgentSessionId=${sessionId}`,
  });

  const db = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof ConnectError) throw err;
      throw internalError(`could not ${what}`, err);
    }
  };

  const prepare = async (
    ctx: HandlerContext,
    req: PrepareSessionRequest,
    ids: { id: string; kiloSessionId: string },
  ): Promise<SessionRow | undefined> => {
    const { userId } = requireIdentity(ctx.values);
    if (
      req.repository.case === "gitUrl" &&
      !req.repository.value.startsWith("https://") &&
      !deps.allowInsecureGit
    ) {
      throw new ConnectError("git_url: must be an https URL", Code.InvalidArgument);
    }
    await checkSessionUrls(
      {
        ...(req.repository.case === "gitUrl" ? { gitUrl: req.repository.value } : {}),
        mcpServers: req.mcpServers?.values,
      },
      urlPolicy,
    );
    if (req.callbackTarget && deps.callbackPolicy) {
      // Early refusal of URLs that can never be allowed. A name that does not resolve now
      // is accepted: every delivery checks the addresses again when it connects.
      try {
        await checkOutboundUrl(req.callbackTarget.url, deps.callbackPolicy);
      } catch (err) {
        if (err instanceof SsrfError) {
          throw new ConnectError(`callback_target.url: ${err.reason}`, Code.InvalidArgument);
        }
      }
    }
    const row = newSessionRow(deps, ids, userId, ctx.values.get(userTokenKey), req);
    return db("store the session", () => insertSession(pool, row));
  };

  return {
    async prepareSession(req, ctx) {
      const ids = { id: newSessionId(), kiloSessionId: newKiloSessionId() };
      const row = await prepare(ctx, req, ids);
      if (!row)
        throw internalError("could not store the session", new Error("generated session id collided"));
      return {
        cloudAgentSessionId: row.id,
        kiloSessionId: row.kilo_session_id,
        version: BigInt(row.version),
      };
    },

    async prepareLegacySession(req, ctx) {
      const { userId } = requireIdentity(ctx.values);
      if (!req.session) throw new ConnectError("session is required", Code.InvalidArgument);
      const ids = { id: req.cloudAgentSessionId, kiloSessionId: req.kiloSessionId };
      const row = await prepare(ctx, req.session, ids);
      if (!row) {
        const existing = await db("read the session", () => findSession(pool, ids.id));
        owned(existing, ids.id, userId);
        throw new ConnectError(`session ${ids.id} is already prepared`, Code.AlreadyExists);
      }
      return {
        cloudAgentSessionId: row.id,
        kiloSessionId: row.kilo_session_id,
        version: BigInt(row.version),
      };
    },

    async updateSession(req, ctx) {
      const { userId } = requireIdentity(ctx.values);
      const id = req.cloudAgentSessionId;
      await checkSessionUrls({ mcpServers: req.mcpServers?.values }, urlPolicy);
      const changes = updateChanges(deps.sealer, userId, req);
      const row = await db("update the session", () =>
        inTransaction(pool, async (tx) => {
          const current = owned(await findSession(tx, id, { forUpdate: true }), id, userId);
          if (current.state !== "prepared") {
            throw new ConnectError(
              `session ${id} has been initiated; only prepared sessions can be updated`,
              Code.FailedPrecondition,
            );
          }
          if (req.expectedVersion !== undefined && BigInt(current.version) !== req.expectedVersion) {
            throw new ConnectError(
              `session ${id} is at version ${current.version}, not ${req.expectedVersion}; read it again and retry`,
              Code.Aborted,
            );
          }
          if (Object.keys(changes).length === 0) return current;
          return updateSession(tx, id, changes);
        }),
      );
      return { session: sessionInfo(row) };
    },

    async getSession(req, ctx) {
      const { userId } = requireIdentity(ctx.values);
      const row = owned(
        await db("read the session", () => findSession(pool, req.cloudAgentSessionId)),
        req.cloudAgentSessionId,
        userId,
      );
      const live = await db("read the session's queue", () => queueState(pool, row.id));
      return { session: sessionInfo(row, { ...live, heartbeatStaleMs: queue.heartbeatStaleMs }) };
    },

    async listSessions(req, ctx) {
      const { userId } = requireIdentity(ctx.values);
      const size = req.pageSize === 0 ? 50 : req.pageSize;
      let after: { at: string; id: string } | undefined;
      if (req.pageToken) {
        try {
          const [at, id] = JSON.parse(Buffer.from(req.pageToken, "base64url").toString("utf8")) as [
            string,
            string,
          ];
          if (typeof id !== "string" || !SESSION_ID.test(id) || !isCursorTime(at)) throw new Error("shape");
          after = { at, id };
        } catch {
          throw new ConnectError(
            "page_token: not a token from a previous ListSessions response",
            Code.InvalidArgument,
          );
        }
      }
      const { rows } = await db("list sessions", () =>
        pool.query<SessionRow & { cursor_at: string }>(
          // The cursor keeps microseconds (a JavaScript Date would round them away).
          `SELECT *, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS cursor_at
           FROM session.sessions
           WHERE user_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2::timestamptz, $3::text))
           ORDER BY created_at DESC, id DESC LIMIT $4`,
          [userId, after?.at ?? null, after?.id ?? null, size + 1],
        ),
      );
      const page = rows.slice(0, size);
      const last = page.at(-1);
      return {
        sessions: page.map((row) => sessionInfo(row)),
        nextPageToken:
          rows.length > size && last
            ? Buffer.from(JSON.stringify([last.cursor_at, last.id])).toString("base64url")
            : "",
      };
    },

    async deleteSession(req, ctx) {
      const { userId } = requireIdentity(ctx.values);
      const id = req.cloudAgentSessionId;
      const row = owned(await db("read the session", () => findSession(pool, id)), id, userId);
      const { running } = await db("read the session's queue", () => queueState(pool, id));
      const sandbox = sandboxOf(row);
      // Stop what runs and remove the workspace first; the rows go last, so a failure
      // here leaves a session that can be deleted again rather than an orphaned sandbox.
      if (running && deps.sandbox) {
        await deps.sandbox
          .interrupt(
            { executionId: running.id, cloudAgentSessionId: id, sandbox },
            { signal: ctx.signal, timeoutMs: 15_000 },
          )
          .catch((err: unknown) =>
            deps.logger?.warn({ sessionId: id, err: errorText(err) }, "could not interrupt on delete"),
          );
      }
      if (deps.sandbox) {
        await deps.sandbox
          .removeSessionWorkspace(
            { cloudAgentSessionId: id, sandbox },
            { signal: ctx.signal, timeoutMs: 30_000 },
          )
          .catch((err: unknown) => {
            throw new ConnectError(
              "could not remove the session's workspace; try again",
              Code.Unavailable,
              undefined,
              undefined,
              err,
            );
          });
      }
      const deleted = await db("delete the session", () => deleteSession(pool, id, userId));
      if (!deleted) throw notFound(id);
      return {};
    },

    async initiateSession(req, ctx) {
      const { userId } = requireIdentity(ctx.values);
      const id = req.cloudAgentSessionId;
      const kiloToken = ctx.values.get(userTokenKey);
      const execution = await db("initiate the session", () =>
        inTransaction(pool, async (tx) => {
          const row = owned(await findSession(tx, id, { forUpdate: true }), id, userId);
          if (row.state === "initiated") {
            const first = await firstExecution(tx, id);
            if (first) return first;
          }
          if (!row.model) {
            throw new ConnectError(
              `session ${id} has no model; set one with UpdateSession`,
              Code.FailedPrecondition,
            );
          }
          await admitExecution(tx, row, queue.caps);
          const created = await insertExecution(tx, {
            id: newExecutionId(),
            session_id: id,
            prompt: row.prompt,
            mode: row.mode ?? "code",
            model: row.model,
          });
          // The caller's current token replaces the one kept at prepare time (tokens rotate).
          await markInitiated(
            tx,
            id,
            kiloToken
              ? (sealToken(deps.sealer, { sessionId: id, userId }, "kilo_token", kiloToken) ?? undefined)
              : undefined,
          );
          return created;
        }),
      );
      return ack(id, execution, await kick(id));
    },

    async sendMessage(req, ctx) {
      const { userId } = requireIdentity(ctx.values);
      const id = req.cloudAgentSessionId;
      const kiloToken = ctx.values.get(userTokenKey);
      const execution = await db("queue the message", () =>
        inTransaction(pool, async (tx) => {
          const row = owned(await findSession(tx, id, { forUpdate: true }), id, userId);
          if (row.state !== "initiated") {
            throw new ConnectError(
              `session ${id} has not been initiated; call InitiateSession first`,
              Code.FailedPrecondition,
            );
          }
          const { rows } = await tx.query<{ n: number }>(
            "SELECT count(*)::int AS n FROM session.executions WHERE session_id = $1 AND status = 'queued'",
            [id],
          );
          if ((rows[0]?.n ?? 0) >= queue.maxWaiting) {
            throw new ConnectError(
              `the session's queue is full (${queue.maxWaiting} messages waiting); wait for one to finish`,
              Code.ResourceExhausted,
            );
          }
          const model = req.model ?? row.model;
          if (!model)
            throw new ConnectError(
              `session ${id} has no model; give one with the message`,
              Code.FailedPrecondition,
            );
          await admitExecution(tx, row, queue.caps);
          const created = await insertExecution(tx, {
            id: newExecutionId(),
            session_id: id,
            prompt: req.prompt,
            mode: req.mode ?? row.mode ?? "code",
            model,
          });
          // The caller's current token is the one later executions act with.
          if (kiloToken) {
            await tx.query("UPDATE session.sessions SET kilo_token_sealed = $2 WHERE id = $1", [
              id,
              sealToken(deps.sealer, { sessionId: id, userId }, "kilo_token", kiloToken),
            ]);
          }
          return created;
        }),
      );
      return ack(id, execution, await kick(id));
    },

    async interruptSession(req, ctx) {
      const { userId } = requireIdentity(ctx.values);
      const id = req.cloudAgentSessionId;
      const row = owned(await db("read the session", () => findSession(pool, id)), id, userId);
      const { running } = await db("read the session's queue", () => queueState(pool, id));
      if (!running) {
        return {
          success: true,
          killedProcessIds: [],
          failedProcessIds: [],
          message: "No running execution to interrupt",
        };
      }
      if (!deps.sandbox) throw new ConnectError("executions are not available", Code.Unimplemented);
      try {
        const res = await deps.sandbox.interrupt(
          { executionId: running.id, cloudAgentSessionId: id, sandbox: sandboxOf(row) },
          { signal: ctx.signal, timeoutMs: 15_000 },
        );
        return {
          success: res.success,
          killedProcessIds: res.killedProcessIds,
          failedProcessIds: res.failedProcessIds,
          message: res.message,
        };
      } catch (err) {
        throw new ConnectError(
          "the sandbox could not be reached to interrupt; try again",
          Code.Unavailable,
          undefined,
          undefined,
          err,
        );
      }
    },

    createStreamTicket: () => {
      throw new ConnectError("stream tickets are issued by the gateway", Code.Unimplemented);
    },
  };
}
