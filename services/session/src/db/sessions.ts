import type { Pool, PoolClient } from "@kilo-cloud/common";

/** A row of session.sessions, as stored (sealed columns stay sealed here). */
export interface SessionRow {
  id: string;
  kilo_session_id: string;
  user_id: string;
  org_id: string | null;
  bot_id: string | null;
  github_repo: string | null;
  git_url: string | null;
  prompt: string;
  mode: string | null;
  model: string | null;
  auto_commit: boolean | null;
  upstream_branch: string | null;
  github_token_sealed: string | null;
  git_token_sealed: string | null;
  kilo_token_sealed: string | null;
  env_vars_sealed: string | null;
  env_var_count: number;
  /** Legacy (seal_version 1): the envelopes as received; re-sealed at start-up. */
  encrypted_secrets: Record<string, unknown>;
  encrypted_secrets_sealed: string | null;
  encrypted_secret_count: number;
  /** 2: every sealed value is bound to session, owner and column. */
  seal_version: number;
  setup_commands_sealed: string | null;
  setup_command_count: number;
  mcp_servers_sealed: string | null;
  mcp_server_count: number;
  callback_target_sealed: string | null;
  state: "prepared" | "initiated";
  prepared_at: Date;
  initiated_at: Date | null;
  created_at: Date;
  updated_at: Date;
  version: string; // bigint
}

export type NewSession = Omit<
  SessionRow,
  "state" | "prepared_at" | "initiated_at" | "created_at" | "updated_at" | "version"
>;

type Queryable = Pool | PoolClient;

const COLUMNS_OF_NEW: (keyof NewSession)[] = [
  "id",
  "kilo_session_id",
  "user_id",
  "org_id",
  "bot_id",
  "github_repo",
  "git_url",
  "prompt",
  "mode",
  "model",
  "auto_commit",
  "upstream_branch",
  "github_token_sealed",
  "git_token_sealed",
  "kilo_token_sealed",
  "env_vars_sealed",
  "env_var_count",
  "encrypted_secrets",
  "encrypted_secrets_sealed",
  "encrypted_secret_count",
  "seal_version",
  "setup_commands_sealed",
  "setup_command_count",
  "mcp_servers_sealed",
  "mcp_server_count",
  "callback_target_sealed",
];

/** Inserts a prepared session; returns undefined when the id is taken. */
export async function insertSession(db: Queryable, s: NewSession): Promise<SessionRow | undefined> {
  const values = COLUMNS_OF_NEW.map((c) => (c === "encrypted_secrets" ? JSON.stringify(s[c]) : s[c]));
  const placeholders = COLUMNS_OF_NEW.map((_, i) => `$${i + 1}`).join(", ");
  const { rows } = await db.query<SessionRow>(
    `INSERT INTO session.sessions (${COLUMNS_OF_NEW.join(", ")}, state)
     VALUES (${placeholders}, 'prepared')
     ON CONFLICT (id) DO NOTHING
     RETURNING *`,
    values,
  );
  return rows[0];
}

/** The session if it exists (whoever owns it: callers check ownership). */
export async function findSession(
  db: Queryable,
  id: string,
  opts: { forUpdate?: boolean } = {},
): Promise<SessionRow | undefined> {
  const { rows } = await db.query<SessionRow>(
    `SELECT * FROM session.sessions WHERE id = $1${opts.forUpdate ? " FOR UPDATE" : ""}`,
    [id],
  );
  return rows[0];
}

/** Column changes of an update; `version` and `updated_at` move with any change. */
export type SessionChanges = Partial<
  Pick<
    SessionRow,
    | "mode"
    | "model"
    | "auto_commit"
    | "github_token_sealed"
    | "git_token_sealed"
    | "kilo_token_sealed"
    | "env_vars_sealed"
    | "env_var_count"
    | "encrypted_secrets_sealed"
    | "encrypted_secret_count"
    | "setup_commands_sealed"
    | "setup_command_count"
    | "mcp_servers_sealed"
    | "mcp_server_count"
  >
>;

export async function updateSession(db: Queryable, id: string, changes: SessionChanges): Promise<SessionRow> {
  const entries = Object.entries(changes).filter(([, v]) => v !== undefined);
  for (const [col] of entries) if (!/^[a-z_]+$/.test(col)) throw new Error(`bad column ${col}`);
  const sets = entries.map(([col], i) => `${col} = $${i + 2}`);
  const values = entries.map(([col, v]) => (col === "encrypted_secrets" ? JSON.stringify(v) : v));
  const { rows } = await db.query<SessionRow>(
    `UPDATE session.sessions SET ${[...sets, "version = version + 1", "updated_at = now()"].join(", ")}
     WHERE id = $1 RETURNING *`,
    [id, ...values],
  );
  const row = rows[0];
  if (!row) throw new Error(`session ${id} vanished during update`);
  return row;
}

/** Deletes the user's session; false when there is none (or it is someone else's). */
export async function deleteSession(db: Queryable, id: string, userId: string): Promise<boolean> {
  const { rowCount } = await db.query("DELETE FROM session.sessions WHERE id = $1 AND user_id = $2", [
    id,
    userId,
  ]);
  return (rowCount ?? 0) > 0;
}

export interface ExecutionRow {
  id: string;
  session_id: string;
  seq: string;
  prompt: string;
  mode: string;
  model: string;
  status: "queued" | "started" | "completed" | "failed" | "interrupted" | "expired";
  error_message: string | null;
  created_at: Date;
  started_at: Date | null;
  finished_at: Date | null;
  last_heartbeat_at: Date | null;
  exit_code: number | null;
}

export async function insertExecution(
  db: Queryable,
  e: Pick<ExecutionRow, "id" | "session_id" | "prompt" | "mode" | "model">,
): Promise<ExecutionRow> {
  const { rows } = await db.query<ExecutionRow>(
    `INSERT INTO session.executions (id, session_id, prompt, mode, model, status)
     VALUES ($1, $2, $3, $4, $5, 'queued') RETURNING *`,
    [e.id, e.session_id, e.prompt, e.mode, e.model],
  );
  return rows[0]!;
}

/** The session's first execution (the one InitiateSession made). */
export async function firstExecution(db: Queryable, sessionId: string): Promise<ExecutionRow | undefined> {
  const { rows } = await db.query<ExecutionRow>(
    "SELECT * FROM session.executions WHERE session_id = $1 ORDER BY seq LIMIT 1",
    [sessionId],
  );
  return rows[0];
}

/** prepared → initiated, in the same version step as the caller's fresh token (if any). */
export async function markInitiated(
  db: Queryable,
  id: string,
  kiloTokenSealed?: string,
): Promise<SessionRow> {
  const { rows } = await db.query<SessionRow>(
    `UPDATE session.sessions
     SET state = 'initiated', initiated_at = now(), updated_at = now(), version = version + 1,
         kilo_token_sealed = COALESCE($2, kilo_token_sealed)
     WHERE id = $1 RETURNING *`,
    [id, kiloTokenSealed ?? null],
  );
  return rows[0]!;
}
