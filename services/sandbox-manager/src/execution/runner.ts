import type { KeyObject } from "node:crypto";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { EventLog, Logger } from "@kilo-cloud/common";
import { OutputSource } from "@kilo-cloud/proto";
import type { StartExecutionRequest } from "@kilo-cloud/proto/sandbox";
import type { Driver, ExecHandle, Sandbox, SandboxKey } from "../drivers/driver.js";
import { sessionHome, workspacePath } from "../drivers/driver.js";
import { execCollect, readSandboxFile, writeSandboxFile } from "../drivers/exec-utils.js";
import { ExecutionEvents } from "../events/emitter.js";
import { type BranchResult, type GitCredentials, GitError, GitWorkspace } from "../git/workspace.js";
import { type KiloProvider, kiloInvocation, type McpServerJson } from "../kilo/command.js";
import {
  kiloSessionId,
  LineSplitter,
  parseStderrLine,
  parseStdoutLine,
  SecretMasker,
  UsageAccumulator,
} from "../kilo/output.js";
import { decryptSecrets, SecretDecryptionError } from "../secrets/envelope.js";

/** Mints a token for a GitHub repository on behalf of the caller (the token service). */
export interface RepositoryTokens {
  get(repo: string, key: SandboxKey, signal: AbortSignal): Promise<string>;
}

export interface RunnerSettings {
  provider: KiloProvider;
  /** RSA private key of encrypted secrets (only sandbox-manager has it). */
  secretsPrivateKey?: KeyObject | string | undefined;
  /** Where `owner/name` repositories are cloned from (default https://github.com). */
  githubBaseUrl: string;
  /** Allow http:// and loopback git remotes (tests and local demos only). */
  allowInsecureGit: boolean;
  cloneTimeoutMs: number;
  setupTimeoutMs: number;
  executionTimeoutMs: number;
  /** A run that prints nothing for this long is ended. */
  idleTimeoutMs: number;
  heartbeatIntervalMs: number;
  /** Executions run at once; StartExecution answers RESOURCE_EXHAUSTED beyond (default: no cap). */
  maxRunningExecutions?: number | undefined;
}

export const DEFAULT_RUNNER_SETTINGS = {
  githubBaseUrl: "https://github.com",
  allowInsecureGit: false,
  cloneTimeoutMs: 5 * 60_000,
  setupTimeoutMs: 2 * 60_000,
  executionTimeoutMs: 60 * 60_000,
  idleTimeoutMs: 10 * 60_000,
  heartbeatIntervalMs: 30_000,
} satisfies Partial<RunnerSettings>;

export interface RunnerDeps {
  driver: Driver;
  events: EventLog;
  logger: Logger;
  settings: RunnerSettings;
  tokens?: RepositoryTokens | undefined;
}

export interface InterruptReport {
  success: boolean;
  killedProcessIds: string[];
  failedProcessIds: string[];
  message: string;
}

/** Where the kilo-internal session id of a session is kept, in the session's HOME. */
const KILO_SESSION_FILE = ".kilo-cloud/kilo-session-id";
const PATH = "/usr/local/bin:/usr/bin:/bin";
const SETUP_OUTPUT_TAIL = 4_000;

interface Running {
  sessionId: string;
  userId: string;
  abort: AbortController;
  handle?: ExecHandle;
  interrupted: boolean;
  killReport?: Promise<{ killed: string[]; failed: string[] }>;
}

class ExecutionEnded extends Error {}

/**
 * Runs executions: prepares the sandbox and workspace (clone, branch, setup on a cold
 * start), runs kilo, turns every line into an event, and ends with exactly one terminal
 * event: `complete` (kilo ran to its end, whatever its exit code), `error` (the execution
 * could not run or was cut by a timeout) or `interrupted`.
 */
export class ExecutionRunner {
  private readonly running = new Map<string, Running>();

  constructor(private readonly deps: RunnerDeps) {}

  get activeCount(): number {
    return this.running.size;
  }

  isRunning(executionId: string): boolean {
    return this.running.has(executionId);
  }

  /** Accepts an execution and runs it in the background; false when it already runs here. */
  start(req: StartExecutionRequest): boolean {
    if (this.running.has(req.executionId)) return false;
    const entry: Running = {
      sessionId: req.cloudAgentSessionId,
      userId: req.sandbox?.userId ?? "",
      abort: new AbortController(),
      interrupted: false,
    };
    this.running.set(req.executionId, entry);
    void this.run(req, entry)
      .catch((err: unknown) => {
        this.deps.logger.error({ executionId: req.executionId, err: errorText(err) }, "execution crashed");
      })
      .finally(() => this.running.delete(req.executionId));
    return true;
  }

  /**
   * Kills the execution's whole process tree; idempotent. An execution of another session
   * or user is treated like one that does not run here.
   */
  async interrupt(executionId: string, sessionId: string, userId?: string): Promise<InterruptReport> {
    const entry = this.running.get(executionId);
    if (!entry || entry.sessionId !== sessionId || (userId !== undefined && entry.userId !== userId)) {
      return {
        success: true,
        killedProcessIds: [],
        failedProcessIds: [],
        message: "No running execution to interrupt",
      };
    }
    entry.interrupted = true;
    entry.abort.abort();
    entry.killReport ??= entry.handle ? entry.handle.kill() : Promise.resolve({ killed: [], failed: [] });
    const report = await entry.killReport;
    return {
      success: report.failed.length === 0,
      killedProcessIds: report.killed,
      failedProcessIds: report.failed,
      message:
        report.failed.length === 0
          ? `Interrupted execution: killed ${report.killed.length} process(es)`
          : `Interrupted execution: ${report.failed.length} process(es) could not be killed`,
    };
  }

  /** Stops every running execution (shutdown). */
  async stopAll(): Promise<void> {
    await Promise.all([...this.running.entries()].map(([id, e]) => this.interrupt(id, e.sessionId)));
  }

  private async run(req: StartExecutionRequest, entry: Running): Promise<void> {
    const { driver, logger, settings } = this.deps;
    const log = logger.child({ executionId: req.executionId, sessionId: req.cloudAgentSessionId });
    const ev = new ExecutionEvents(this.deps.events, req.cloudAgentSessionId, req.executionId, log);
    const startedAt = new Date();
    const key: SandboxKey = {
      userId: req.sandbox?.userId ?? "",
      ...(req.sandbox?.orgId ? { orgId: req.sandbox.orgId } : {}),
      ...(req.sandbox?.botId ? { botId: req.sandbox.botId } : {}),
    };
    const workspace = workspacePath(key, req.cloudAgentSessionId);
    const home = sessionHome(req.cloudAgentSessionId);
    const signal = entry.abort.signal;
    let branch = req.upstreamBranch ?? `session/${req.cloudAgentSessionId}`;

    const fail = (message: string, details?: Record<string, unknown>): never => {
      ev.error(message, details);
      throw new ExecutionEnded(message);
    };
    const interruptedEnd = (): never => {
      ev.emit({ case: "interrupted", value: { reason: "interrupted by the user", killedProcessIds: [] } });
      throw new ExecutionEnded("interrupted");
    };

    // Heartbeats from the start to the end of the run (clone and setup included): the
    // session service fails an execution whose heartbeats stop for EXECUTION_STALE_MS.
    const heartbeat = setInterval(
      () => ev.emit({ case: "heartbeat", value: {} }),
      settings.heartbeatIntervalMs,
    );
    try {
      ev.status("Preparing sandbox", "sandbox");
      const sandbox = await driver.ensureSandbox(key);

      // Secrets are opened here, at the moment of use, and live only in this closure.
      let secrets: Record<string, string> = {};
      if (Object.keys(req.encryptedSecrets).length > 0) {
        if (!settings.secretsPrivateKey)
          fail("encrypted secrets were given but no decryption key is configured");
        try {
          secrets = decryptSecrets(
            Object.fromEntries(
              Object.entries(req.encryptedSecrets).map(([k, v]) => [
                k,
                {
                  encryptedData: v.encryptedData,
                  encryptedDEK: v.encryptedDek,
                  algorithm: v.algorithm,
                  version: v.version,
                },
              ]),
            ),
            settings.secretsPrivateKey!,
          );
        } catch (err) {
          fail(
            err instanceof SecretDecryptionError ? err.message : "encrypted secrets could not be decrypted",
          );
        }
      }
      const masked = [...Object.values(secrets), req.gitToken, req.kiloToken].filter((v): v is string => !!v);
      const credentials = await this.credentials(req, key, signal, fail);
      if (credentials) masked.push(credentials.password);
      ev.setMasker(new SecretMasker(masked));

      const env = sessionEnvironment(req, home, workspace, secrets);
      await driver.mkdir(sandbox, home);
      for (const dir of [".config", ".local/share", ".cache", ".local/state", "tmp", ".kilo-cloud"]) {
        await driver.mkdir(sandbox, `${home}/${dir}`);
      }

      const coldStart = !(await driver.exists(sandbox, `${workspace}/.git`));
      if (signal.aborted) interruptedEnd();
      let git: GitWorkspace;
      try {
        git = new GitWorkspace({
          driver,
          sandbox,
          path: workspace,
          home,
          url: this.remoteUrl(req),
          baseEnv: { PATH, HOME: home },
          allowHttp: settings.allowInsecureGit,
          allowLoopback: settings.allowInsecureGit,
          timeoutMs: settings.cloneTimeoutMs,
        });
        if (coldStart) {
          ev.status(
            `Cloning repository ${req.repository.case === "githubRepo" ? req.repository.value : redactUrl(this.remoteUrl(req))}`,
            "clone",
          );
          await driver.mkdir(sandbox, parentOf(workspace));
          await git.cloneIfMissing({ credentials, signal });
        }
        const b = await git.prepareBranch({
          sessionId: req.cloudAgentSessionId,
          upstreamBranch: req.upstreamBranch,
          credentials,
          coldStart,
          signal,
        });
        branch = b.branch;
        ev.status(branchMessage(b), "branch");
      } catch (err) {
        if (err instanceof GitError) fail(err.message, { step: err.step });
        throw err;
      }

      if (coldStart && req.setupCommands.length > 0) {
        await this.runSetup(req, sandbox, workspace, env, ev, signal, fail, interruptedEnd);
      }
      if (Object.keys(req.mcpServers).length > 0) {
        ev.status(`Configuring ${Object.keys(req.mcpServers).length} MCP server(s)`, "mcp");
      }
      if (signal.aborted) interruptedEnd();

      const previous = (await readSandboxFile(driver, sandbox, `${home}/${KILO_SESSION_FILE}`))?.trim();
      const kilo = kiloInvocation({
        provider: providerInSandbox(settings.provider, driver.providerRelayUrl),
        model: req.model,
        mode: req.mode,
        kiloSessionId: previous || undefined,
        mcpServers: mcpJson(req),
        sessionEnv: env,
        kiloToken: req.kiloToken,
      });
      ev.status(previous ? "Continuing the kilo session" : "Starting kilo", "kilo");

      const usage = new UsageAccumulator();
      let seenSessionId: string | undefined;
      let lastOutput = Date.now();
      const out = new LineSplitter();
      const errLines = new LineSplitter();
      const onStdout = (text: string) => {
        const e = parseStdoutLine(text);
        if (e.type === "kilocode") {
          usage.add(e.payload);
          seenSessionId ??= kiloSessionId(e.payload);
          ev.emit({ case: "kilocode", value: { payload: e.payload as Record<string, never> } });
        } else if (e.content.trim() !== "") {
          ev.emit({ case: "output", value: { content: e.content, source: OutputSource.STDOUT } });
        }
      };
      const onStderr = (text: string) => {
        const e = parseStderrLine(text);
        if (e.type === "output" && e.content.trim() !== "") {
          ev.emit({ case: "output", value: { content: e.content, source: OutputSource.STDERR } });
        }
      };
      const handle = await driver.exec(sandbox, {
        argv: kilo.argv,
        cwd: workspace,
        env: { ...env, ...kilo.env },
        stdin: req.prompt,
        // While the event publisher's window is full, kilo's output waits in its pipe.
        onStdout: (chunk) => {
          lastOutput = Date.now();
          for (const l of out.push(chunk)) onStdout(l.text);
          return ev.backpressure();
        },
        onStderr: (chunk) => {
          lastOutput = Date.now();
          for (const l of errLines.push(chunk)) onStderr(l.text);
          return ev.backpressure();
        },
      });
      entry.handle = handle;
      if (entry.interrupted) entry.killReport ??= handle.kill();

      let timedOut: string | undefined;
      const watchdog = setInterval(
        () => {
          const now = Date.now();
          if (now - startedAt.getTime() > settings.executionTimeoutMs) {
            timedOut ??= `execution timed out after ${Math.round(settings.executionTimeoutMs / 1000)} s`;
          } else if (now - lastOutput > settings.idleTimeoutMs) {
            timedOut ??= `kilo produced no output for ${Math.round(settings.idleTimeoutMs / 1000)} s`;
          }
          if (timedOut) void handle.kill();
        },
        Math.min(1_000, settings.idleTimeoutMs / 4),
      );
      let result: Awaited<ExecHandle["result"]>;
      try {
        result = await handle.result;
      } finally {
        clearInterval(watchdog);
      }
      for (const l of out.end()) onStdout(l.text);
      for (const l of errLines.end()) onStderr(l.text);
      if (seenSessionId && seenSessionId !== previous) {
        await writeSandboxFile(driver, sandbox, `${home}/${KILO_SESSION_FILE}`, seenSessionId).catch(
          (err: unknown) => log.warn({ err: errorText(err) }, "could not record the kilo session id"),
        );
      }
      if (entry.interrupted) {
        const report = await entry.killReport;
        ev.emit({
          case: "interrupted",
          value: { reason: "interrupted by the user", killedProcessIds: report?.killed ?? [] },
        });
        return;
      }
      if (timedOut) fail(timedOut, { exitCode: result.exitCode, signal: result.signal });

      const exitCode = result.exitCode ?? 128;
      let commitSha: string | undefined;
      if (exitCode === 0 && req.autoCommit) {
        try {
          // A fresh token for the push: the run may have outlived the one used to clone.
          const pushCredentials =
            req.repository.case === "githubRepo" && this.deps.tokens
              ? await this.credentials(req, key, signal, fail)
              : credentials;
          const c = await git.commitAndPush({
            message: commitMessage(req.prompt),
            branch,
            credentials: pushCredentials,
            allowProtectedBranch: req.upstreamBranch !== undefined,
          });
          if (c.committed) {
            commitSha = c.sha;
            ev.status(`Committed ${c.sha.slice(0, 12)} and pushed to ${c.branch}`, "commit");
          } else {
            ev.status("No changes to commit", "commit");
          }
        } catch (err) {
          if (err instanceof GitError) fail(`auto-commit failed: ${err.message}`, { step: err.step });
          throw err;
        }
      }
      const completedAt = new Date();
      const u = usage.usage;
      ev.emit({
        case: "complete",
        value: {
          exitCode,
          executionTimeMs: BigInt(completedAt.getTime() - startedAt.getTime()),
          workspace,
          userId: key.userId,
          startedAt: timestampFromDate(startedAt),
          completedAt: timestampFromDate(completedAt),
          branch,
          usage: {
            inputTokens: BigInt(u.inputTokens),
            outputTokens: BigInt(u.outputTokens),
            reasoningTokens: BigInt(u.reasoningTokens),
            cacheReadTokens: BigInt(u.cacheReadTokens),
            cacheWriteTokens: BigInt(u.cacheWriteTokens),
            cost: u.cost,
          },
          ...(commitSha ? { commitSha } : {}),
        },
      });
    } catch (err) {
      if (!(err instanceof ExecutionEnded)) {
        log.error({ err: errorText(err) }, "execution failed");
        if (entry.interrupted) {
          ev.emit({
            case: "interrupted",
            value: { reason: "interrupted by the user", killedProcessIds: [] },
          });
        } else if (err instanceof Error && err.name === "SandboxLostError") {
          // The sandbox (e.g. its pod) disappeared under the run; the next one recreates it.
          ev.error(`the sandbox was lost while the execution ran: ${err.message}`);
        } else {
          ev.error("the execution failed because of an internal error");
        }
      }
    } finally {
      clearInterval(heartbeat);
      await ev
        .flush()
        .catch((err: unknown) => log.error({ err: errorText(err) }, "events could not be stored"));
    }
  }

  private async runSetup(
    req: StartExecutionRequest,
    sandbox: Sandbox,
    workspace: string,
    env: Record<string, string>,
    ev: ExecutionEvents,
    signal: AbortSignal,
    fail: (message: string, details?: Record<string, unknown>) => never,
    interruptedEnd: () => never,
  ): Promise<void> {
    const { driver, settings } = this.deps;
    const total = req.setupCommands.length;
    for (const [i, command] of req.setupCommands.entries()) {
      if (signal.aborted) interruptedEnd();
      ev.status(`Running setup command ${i + 1}/${total}: ${command}`, "setup");
      // The command is the user's own shell text, run by a shell inside their sandbox; it
      // is passed as one argv element, never spliced into a script of ours.
      const r = await execCollect(
        driver,
        sandbox,
        { argv: ["sh", "-c", command], cwd: workspace, env },
        { timeoutMs: settings.setupTimeoutMs, maxOutputBytes: SETUP_OUTPUT_TAIL, signal },
      );
      if (signal.aborted) interruptedEnd();
      if (r.exitCode === 0 && !r.timedOut) continue;
      const outputTail = `${r.stdout}${r.stderr ? `\n${r.stderr}` : ""}`.trim().slice(-SETUP_OUTPUT_TAIL);
      const what = r.timedOut
        ? `setup command timed out after ${Math.round(settings.setupTimeoutMs / 1000)} s`
        : `setup command failed with exit code ${r.exitCode ?? r.signal}`;
      const details = { command, exitCode: r.exitCode ?? -1, timedOut: r.timedOut, outputTail };
      if (req.firstExecution) fail(`${what}: ${command}`, details);
      ev.status(`${what} (continuing): ${command}`, "setup");
    }
  }

  private remoteUrl(req: StartExecutionRequest): string {
    if (req.repository.case === "githubRepo") {
      return `${this.deps.settings.githubBaseUrl.replace(/\/+$/, "")}/${req.repository.value}.git`;
    }
    return req.repository.value ?? "";
  }

  private async credentials(
    req: StartExecutionRequest,
    key: SandboxKey,
    signal: AbortSignal,
    fail: (message: string) => never,
  ): Promise<GitCredentials | undefined> {
    if (req.repository.case === "githubRepo") {
      if (this.deps.tokens) {
        try {
          return {
            username: "x-access-token",
            password: await this.deps.tokens.get(req.repository.value, key, signal),
          };
        } catch (err) {
          fail(`could not get a GitHub token for ${req.repository.value}: ${errorText(err)}`);
        }
      }
      // Deprecated path: a token the backend gave at prepare time.
      return req.gitToken ? { username: "x-access-token", password: req.gitToken } : undefined;
    }
    return req.gitToken ? { username: "git", password: req.gitToken } : undefined;
  }
}

/** The environment of setup commands and kilo: session env + secrets + per-session HOME. */
function sessionEnvironment(
  req: StartExecutionRequest,
  home: string,
  workspace: string,
  secrets: Record<string, string>,
): Record<string, string> {
  return { ...req.envVars, ...secrets, ...baseSessionEnvironment(req.cloudAgentSessionId, home, workspace) };
}

/** What every process of a session gets whatever its configuration: PATH, HOME and XDG dirs under the session's HOME, … */
export function baseSessionEnvironment(
  sessionId: string,
  home: string,
  workspace: string,
): Record<string, string> {
  return {
    PATH,
    HOME: home,
    SESSION_ID: sessionId,
    SESSION_HOME: home,
    XDG_CONFIG_HOME: `${home}/.config`,
    XDG_DATA_HOME: `${home}/.local/share`,
    XDG_CACHE_HOME: `${home}/.cache`,
    XDG_STATE_HOME: `${home}/.local/state`,
    TMPDIR: `${home}/tmp`,
    LANG: "C.UTF-8",
    TERM: "dumb",
    NO_COLOR: "1",
    CI: "true",
    KILO_CLOUD_WORKSPACE: workspace,
  };
}

/** The provider as kilo sees it: the driver's relay (which holds the key) when it has one. */
function providerInSandbox(provider: KiloProvider, relayUrl: string | undefined): KiloProvider {
  if (provider.kind !== "openai-compatible" || relayUrl === undefined) return provider;
  return { ...provider, baseUrl: relayUrl, apiKey: "added-by-the-relay" };
}

function mcpJson(req: StartExecutionRequest): Record<string, McpServerJson> {
  const out: Record<string, McpServerJson> = {};
  for (const [name, s] of Object.entries(req.mcpServers)) {
    const t = s.transport;
    out[name] = {
      ...(t.case === "stdio"
        ? { stdio: { command: t.value.command, args: t.value.args, env: t.value.env, cwd: t.value.cwd } }
        : t.case === "sse"
          ? { sse: { url: t.value.url, headers: t.value.headers } }
          : t.case === "streamableHttp"
            ? { streamableHttp: { url: t.value.url, headers: t.value.headers } }
            : {}),
      ...(s.timeoutSeconds !== undefined ? { timeoutSeconds: s.timeoutSeconds } : {}),
      disabled: s.disabled,
    };
  }
  return out;
}

function branchMessage(b: BranchResult): string {
  const base = b.created ? `Created branch ${b.branch}` : `Checked out branch ${b.branch}`;
  if (!b.pulled || b.pulled.status === "up-to-date" || b.pulled.status === "no-remote-branch") return base;
  if (b.pulled.status === "conflict" || b.pulled.status === "failed") {
    return `${base}; pulling remote changes ${b.pulled.status === "conflict" ? "conflicted" : "failed"}, continuing with the local branch${b.pulled.message ? ` (${b.pulled.message})` : ""}`;
  }
  return `${base}; pulled remote changes (${b.pulled.status})`;
}

function commitMessage(prompt: string): string {
  const first = prompt.split("\n")[0]?.trim() ?? "";
  const subject = first.length > 72 ? `${first.slice(0, 69)}...` : first;
  return `${subject || "Changes by Kilo Code Cloud"}\n\nCommitted by Kilo Code Cloud.`;
}

function parentOf(path: string): string {
  return path.slice(0, path.lastIndexOf("/")) || "/";
}

function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    u.username = "";
    u.password = "";
    u.search = "";
    return u.toString();
  } catch {
    return "the repository";
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
