/**
 * A Driver gives the sandbox-manager sandboxes to run commands in: one sandbox per
 * org+user (or org+user+bot), holding the workspaces and HOMEs of that caller's sessions at
 * the hosted product's paths. `local` runs them with bubblewrap on this machine;
 * `kubernetes` runs one pod per sandbox and execs into it. Everything above the driver
 * (git, setup, kilo, events) only speaks in sandbox paths and argv arrays.
 */

export interface SandboxKey {
  userId: string;
  orgId?: string | undefined;
  botId?: string | undefined;
}

/** A sandbox the driver has made ready; `id` is the hosted product's sandbox identifier. */
export interface Sandbox {
  id: string;
  key: SandboxKey;
}

export interface ExecRequest {
  /** The program and its arguments; never interpreted by a shell. */
  argv: string[];
  /** Working directory, a path inside the sandbox. */
  cwd: string;
  /** The whole environment of the process: nothing is inherited from the manager. */
  env: Record<string, string>;
  /** Written to stdin, which is then closed; stdin is empty when absent. */
  stdin?: string | Uint8Array;
  /**
   * Output as it comes. A callback that returns a promise applies back-pressure: the
   * driver reads no more of that stream until the promise settles.
   */
  onStdout?: (chunk: Uint8Array) => void | Promise<void>;
  onStderr?: (chunk: Uint8Array) => void | Promise<void>;
}

export interface ExecResult {
  /** Exit status, or null when the process was ended by a signal. */
  exitCode: number | null;
  signal: string | null;
  /** True when kill() ended it. */
  killed: boolean;
}

export interface KillReport {
  /** Ids (e.g. `proc_1234`) of the processes that were killed. */
  killed: string[];
  /** Ids of processes that could not be killed. */
  failed: string[];
}

/** A running process in a sandbox, with everything it starts. */
export interface ExecHandle {
  /** A stable id for reports, e.g. `proc_<pid>`. */
  id: string;
  result: Promise<ExecResult>;
  /** Kills the process and every process it started (the whole tree). Idempotent. */
  kill(): Promise<KillReport>;
}

export interface Driver {
  readonly name: string;
  /**
   * When set, kilo's model provider base URL inside the sandbox: a relay outside it adds
   * the operator's key and forwards to the configured provider, so the key never enters.
   */
  readonly providerRelayUrl?: string | undefined;
  /** Creates the sandbox on first use, finds it again afterwards. */
  ensureSandbox(key: SandboxKey): Promise<Sandbox>;
  exec(sandbox: Sandbox, req: ExecRequest): Promise<ExecHandle>;
  /** Whether a path exists inside the sandbox. */
  exists(sandbox: Sandbox, path: string): Promise<boolean>;
  /** Creates a directory (and parents) inside the sandbox. */
  mkdir(sandbox: Sandbox, path: string): Promise<void>;
  /** Removes a file or directory tree inside the sandbox (below /workspace or /home only). */
  remove(sandbox: Sandbox, path: string): Promise<void>;
  close(): Promise<void>;
}

/** The hosted product's sandbox identifier. */
export function sandboxId(key: SandboxKey): string {
  const base = key.orgId ? `${key.orgId}__${key.userId}` : `user:${key.userId}__${key.userId}`;
  return key.botId ? `${base}__bot:${key.botId}` : base;
}

/** `/workspace/<orgId>/<userId>/sessions/<sessionId>` or `/workspace/<userId>/sessions/<sessionId>`. */
export function workspacePath(key: SandboxKey, sessionId: string): string {
  return key.orgId
    ? `/workspace/${key.orgId}/${key.userId}/sessions/${sessionId}`
    : `/workspace/${key.userId}/sessions/${sessionId}`;
}

/** The session's HOME: `/home/<sessionId>`. */
export function sessionHome(sessionId: string): string {
  return `/home/${sessionId}`;
}

/** Sandbox paths a driver may create or remove. */
export function isManagedPath(path: string): boolean {
  return /^\/(workspace|home)\/[^/]/.test(path) && !path.split("/").some((p) => p === ".." || p === ".");
}
