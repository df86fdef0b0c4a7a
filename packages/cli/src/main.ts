import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { type Client, Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ExecutionHealth, SessionService, SessionState, StreamService } from "@kilo-cloud/proto";
import { eventJson, exitCodeOf, Renderer } from "./render.js";

/**
 * kilo-cloud: a command line for people (and scripts, with --json) to run and follow
 * sessions of a Kilo Cloud Agent deployment.
 */

const USAGE = `usage: kilo-cloud <command> [options]

commands:
  run --repo OWNER/NAME | --git-url URL --prompt TEXT [--mode M] [--model M] [--branch B] [--auto-commit]
                         prepare and start a session, and follow it to its end
  send SESSION --prompt TEXT [--mode M] [--model M]
                         queue a follow-up message and follow it
  watch SESSION [--from ID]
                         follow a session's events (Ctrl-C to stop)
  interrupt SESSION      stop the running execution
  get SESSION            show a session
  delete SESSION         delete a session and its workspace
  ls                     list your sessions

options:
  --url URL              the service (env KILO_CLOUD_URL; default http://127.0.0.1:8080)
  --token TOKEN          your bearer token (env KILO_TOKEN)
  --internal-key KEY     backend key for prepare (env KILO_INTERNAL_KEY)
  --config FILE          a JSON file with {url, token, internalKey}
                         (default: $KILO_CLOUD_DATA_DIR/cli.json, ./.kilo-cloud/cli.json, ~/.config/kilo-cloud/config.json)
  --json                 print raw events as JSON lines
  --verbose              also show kilo's own log lines
`;

class UsageError extends Error {}

interface CliConfig {
  url: string;
  token?: string | undefined;
  internalKey?: string | undefined;
}

interface Io {
  out: (line: string) => void;
  err: (line: string) => void;
  isTTY: boolean;
  env: NodeJS.ProcessEnv;
}

function loadConfig(
  flags: { url?: string; token?: string; "internal-key"?: string; config?: string },
  env: NodeJS.ProcessEnv,
): CliConfig {
  const candidates = flags.config
    ? [flags.config]
    : [
        ...(env.KILO_CLOUD_DATA_DIR ? [join(env.KILO_CLOUD_DATA_DIR, "cli.json")] : []),
        join(process.cwd(), ".kilo-cloud", "cli.json"),
        join(env.XDG_CONFIG_HOME ?? join(homedir(), ".config"), "kilo-cloud", "config.json"),
      ];
  let file: Partial<CliConfig> = {};
  for (const path of candidates) {
    if (!existsSync(path)) {
      if (flags.config) throw new UsageError(`config file ${path} does not exist`);
      continue;
    }
    try {
      file = JSON.parse(readFileSync(path, "utf8")) as Partial<CliConfig>;
    } catch {
      throw new UsageError(`config file ${path} is not valid JSON`);
    }
    break;
  }
  return {
    url: flags.url ?? env.KILO_CLOUD_URL ?? file.url ?? "http://127.0.0.1:8080",
    token: flags.token ?? env.KILO_TOKEN ?? file.token,
    internalKey: flags["internal-key"] ?? env.KILO_INTERNAL_KEY ?? file.internalKey,
  };
}

function clients(config: CliConfig) {
  if (!config.token)
    throw new UsageError(
      "no bearer token: give --token, set KILO_TOKEN, or run `npm start` (it writes .kilo-cloud/cli.json)",
    );
  const auth: Interceptor = (next) => async (req) => {
    req.header.set("authorization", `Bearer ${config.token}`);
    if (config.internalKey) req.header.set("x-internal-api-key", config.internalKey);
    return next(req);
  };
  const transport = createConnectTransport({ baseUrl: config.url, httpVersion: "1.1", interceptors: [auth] });
  return {
    sessions: createClient(SessionService, transport),
    stream: createClient(StreamService, transport),
  };
}

/** A transient progress line on a terminal; nothing elsewhere. */
class Spinner {
  private frame = 0;
  private timer: NodeJS.Timeout | undefined;
  private shown = false;
  private readonly started = Date.now();
  private label = "working";

  constructor(private readonly enabled: boolean) {}

  start(): void {
    if (!this.enabled) return;
    this.timer = setInterval(() => this.draw(), 100);
    this.timer.unref();
  }

  set(label: string): void {
    this.label = label;
  }

  private draw(): void {
    const frames = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏";
    const secs = Math.round((Date.now() - this.started) / 1000);
    process.stderr.write(`\r\x1b[2K${frames[this.frame++ % frames.length]} ${this.label} (${secs}s)`);
    this.shown = true;
  }

  /** Clears the line before something else is printed. */
  clear(): void {
    if (this.shown) process.stderr.write("\r\x1b[2K");
    this.shown = false;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.clear();
  }
}

const TERMINAL = new Set(["complete", "error", "interrupted"]);

/**
 * Follows a session's stream, resuming from the last id after a dropped connection, until
 * `untilExecution` ends (or forever when it is undefined).
 */
async function follow(
  stream: Client<typeof StreamService>,
  sessionId: string,
  opts: { fromId?: bigint; untilExecution?: string; json: boolean; verbose: boolean; io: Io },
): Promise<number> {
  const renderer = new Renderer({ verbose: opts.verbose });
  const spinner = new Spinner(opts.io.isTTY && !opts.json);
  spinner.start();
  let last = opts.fromId;
  let failures = 0;
  const print = (line: string) => {
    spinner.clear();
    opts.io.out(line);
  };
  const abort = new AbortController();
  const onSigint = () => abort.abort();
  process.once("SIGINT", onSigint);
  try {
    for (;;) {
      try {
        for await (const res of stream.subscribe(
          { cloudAgentSessionId: sessionId, ...(last !== undefined ? { fromId: last } : {}) },
          { signal: abort.signal },
        )) {
          failures = 0;
          const event = res.event;
          if (!event) continue;
          last = event.id;
          if (opts.untilExecution && event.executionId !== opts.untilExecution) continue;
          // The renderer also keeps the run's outcome, so it sees every event even with --json.
          const lines = renderer.render(event);
          if (opts.json) print(eventJson(event));
          else for (const line of lines) print(line);
          if (event.payload.case === "status") spinner.set(event.payload.value.message);
          if (event.payload.case === "kilocode") spinner.set("kilo is working");
          if (opts.untilExecution && TERMINAL.has(event.payload.case ?? ""))
            return exitCodeOf(renderer.summary);
        }
        if (!opts.untilExecution) return 0;
      } catch (err) {
        const ce = ConnectError.from(err);
        if (abort.signal.aborted || ce.code === Code.Canceled) return 130;
        const retryable =
          ce.code === Code.Unavailable ||
          ce.code === Code.Unknown ||
          ce.code === Code.Internal ||
          ce.code === Code.DeadlineExceeded;
        if (!retryable || ++failures > 30) throw err;
        spinner.set(`connection lost; resuming from ${last ?? "the start"}`);
        await new Promise((r) => setTimeout(r, Math.min(250 * 2 ** failures, 5_000)));
      }
    }
  } finally {
    // Leaving the loop does not end an HTTP/1.1 stream by itself: cancel it.
    abort.abort();
    process.off("SIGINT", onSigint);
    spinner.stop();
  }
}

function describeSession(
  s: NonNullable<Awaited<ReturnType<Client<typeof SessionService>["getSession"]>>["session"]>,
): string[] {
  const when = (t?: { seconds: bigint; nanos: number }) =>
    t ? timestampDate(t as never).toISOString() : "-";
  return [
    `session    ${s.cloudAgentSessionId}`,
    `state      ${SessionState[s.state]?.toLowerCase() ?? "?"}${s.initiatedAt ? ` (initiated ${when(s.initiatedAt)})` : ""}`,
    `repository ${s.githubRepo ?? s.gitUrl ?? "-"}${s.upstreamBranch ? ` @ ${s.upstreamBranch}` : ""}`,
    `mode/model ${s.mode ?? "-"} / ${s.model ?? "-"}`,
    `queue      ${s.queueLength} waiting${
      s.runningExecution
        ? `; running ${s.runningExecution.executionId} (${ExecutionHealth[s.runningExecution.health]?.toLowerCase()})`
        : ""
    }`,
    `config     ${s.envVarCount} env vars, ${s.encryptedSecretCount} secrets, ${s.setupCommandCount} setup commands, ${s.mcpServerCount} MCP servers`,
    `version    ${s.version}`,
  ];
}

export async function main(argv: string[], io: Io): Promise<number> {
  const { values: flags, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      repo: { type: "string" },
      "git-url": { type: "string" },
      prompt: { type: "string", short: "p" },
      mode: { type: "string" },
      model: { type: "string" },
      branch: { type: "string" },
      "auto-commit": { type: "boolean" },
      from: { type: "string" },
      url: { type: "string" },
      token: { type: "string" },
      "internal-key": { type: "string" },
      config: { type: "string" },
      json: { type: "boolean" },
      verbose: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  const [command, ...rest] = positionals;
  if (flags.help || !command) {
    io.out(USAGE);
    return command || flags.help ? 0 : 2;
  }
  const config = loadConfig(flags, io.env);
  const json = flags.json ?? false;
  const verbose = flags.verbose ?? false;
  const sessionArg = () => {
    const id = rest[0];
    if (!id) throw new UsageError(`${command} needs a session id`);
    return id;
  };
  const { sessions, stream } = clients(config);

  switch (command) {
    case "run": {
      if (!flags.prompt) throw new UsageError("run needs --prompt");
      if (!flags.repo === !flags["git-url"])
        throw new UsageError("run needs exactly one of --repo and --git-url");
      const prepared = await sessions.prepareSession({
        prompt: flags.prompt,
        mode: flags.mode ?? "code",
        model: flags.model ?? io.env.KILO_CLOUD_MODEL ?? "anthropic/claude-sonnet-4.5",
        repository: flags.repo
          ? { case: "githubRepo", value: flags.repo }
          : { case: "gitUrl", value: flags["git-url"] ?? "" },
        ...(flags.branch ? { upstreamBranch: flags.branch } : {}),
        ...(flags["auto-commit"] ? { autoCommit: true } : {}),
      });
      const ack = await sessions.initiateSession({ cloudAgentSessionId: prepared.cloudAgentSessionId });
      if (!json) io.err(`session ${prepared.cloudAgentSessionId} (execution ${ack.executionId})`);
      return follow(stream, prepared.cloudAgentSessionId, {
        untilExecution: ack.executionId,
        json,
        verbose,
        io,
      });
    }
    case "send": {
      const id = sessionArg();
      if (!flags.prompt) throw new UsageError("send needs --prompt");
      const ack = await sessions.sendMessage({
        cloudAgentSessionId: id,
        prompt: flags.prompt,
        ...(flags.mode ? { mode: flags.mode } : {}),
        ...(flags.model ? { model: flags.model } : {}),
      });
      if (!json) io.err(`execution ${ack.executionId} ${ack.status === 1 ? "queued" : "started"}`);
      return follow(stream, id, { untilExecution: ack.executionId, json, verbose, io });
    }
    case "watch": {
      const id = sessionArg();
      let fromId: bigint | undefined;
      if (flags.from !== undefined) {
        if (!/^\d+$/.test(flags.from)) throw new UsageError("--from must be an event id (a number)");
        fromId = BigInt(flags.from);
      }
      return follow(stream, id, { ...(fromId !== undefined ? { fromId } : {}), json, verbose, io });
    }
    case "interrupt": {
      const res = await sessions.interruptSession({ cloudAgentSessionId: sessionArg() });
      io.out(json ? JSON.stringify(res) : res.message);
      return res.success ? 0 : 1;
    }
    case "get": {
      const { session } = await sessions.getSession({ cloudAgentSessionId: sessionArg() });
      if (!session) return 1;
      if (json) io.out(JSON.stringify(session, (_, v) => (typeof v === "bigint" ? v.toString() : v)));
      else for (const line of describeSession(session)) io.out(line);
      return 0;
    }
    case "delete": {
      await sessions.deleteSession({ cloudAgentSessionId: sessionArg() });
      io.out(json ? "{}" : "deleted");
      return 0;
    }
    case "ls": {
      let pageToken = "";
      do {
        const page = await sessions.listSessions({ pageSize: 100, pageToken });
        for (const s of page.sessions) {
          io.out(
            json
              ? JSON.stringify(s, (_, v) => (typeof v === "bigint" ? v.toString() : v))
              : `${s.cloudAgentSessionId}  ${(SessionState[s.state] ?? "?").toLowerCase().padEnd(9)}  ${s.githubRepo ?? s.gitUrl ?? ""}  ${oneLinePrompt(s.prompt)}`,
          );
        }
        pageToken = page.nextPageToken;
      } while (pageToken);
      return 0;
    }
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

function oneLinePrompt(prompt: string): string {
  const line = prompt.replace(/\s+/g, " ").trim();
  return line.length > 50 ? `${line.slice(0, 49)}…` : line;
}

/** Runs the CLI as a program: errors are one line, never a stack trace. */
export async function run(): Promise<void> {
  const io: Io = {
    out: (l) => process.stdout.write(`${l}\n`),
    err: (l) => process.stderr.write(`${l}\n`),
    isTTY: process.stderr.isTTY === true,
    env: process.env,
  };
  try {
    process.exitCode = await main(process.argv.slice(2), io);
  } catch (err) {
    if (
      err instanceof UsageError ||
      (err instanceof TypeError && (err as { code?: string }).code?.startsWith("ERR_PARSE_ARGS"))
    ) {
      io.err(`kilo-cloud: ${err.message}`);
      io.err("run `kilo-cloud --help` for usage");
      process.exitCode = 2;
      return;
    }
    const ce = ConnectError.from(err);
    const reason =
      ce.code === Code.Unavailable || ce.code === Code.Unknown
        ? `${ce.rawMessage} (is the service running?)`
        : ce.rawMessage;
    io.err(
      `kilo-cloud: ${Code[ce.code]?.replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase() ?? "error"}: ${reason}`,
    );
    process.exitCode = 1;
  } finally {
    // Pooled keep-alive connections must not keep a finished command waiting.
    setTimeout(() => process.exit(), 1_000).unref();
  }
}
