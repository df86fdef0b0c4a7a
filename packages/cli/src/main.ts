import { createRequire } from "node:module";
import { parseArgs } from "node:util";
import {
  Code,
  ConnectError,
  createKiloCloudClient,
  ExecutionHealth,
  type KiloCloudClient,
  type SessionInfo,
  SessionState,
  timestampDate,
} from "@kilo-cloud/sdk";
import { colourEnabled } from "./colour.js";
import { COMMANDS, usage } from "./commands.js";
import { completionScript } from "./completion.js";
import { type CliConfig, loadConfig, UsageError } from "./config.js";
import { follow, type Io } from "./follow.js";

/**
 * kilo-cloud: a command line for people (and scripts, with --json) to run and follow
 * sessions of a Kilo Cloud Agent deployment, on the @kilo-cloud/sdk client.
 */

export function version(): string {
  return (createRequire(import.meta.url)("../package.json") as { version: string }).version;
}

function connect(config: CliConfig): KiloCloudClient {
  if (!config.token)
    throw new UsageError(
      "no bearer token: give --token, set KILO_TOKEN, or run `npm start` (it writes .kilo-cloud/cli.json)",
    );
  return createKiloCloudClient({
    baseUrl: config.url,
    token: config.token,
    ...(config.internalKey ? { internalApiKey: config.internalKey } : {}),
  });
}

function describeSession(s: SessionInfo): string[] {
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
      version: { type: "boolean", short: "v" },
    },
  });
  const [command, ...rest] = positionals;
  if (flags.version) {
    io.out(version());
    return 0;
  }
  if (command === "help") {
    io.out(usage(rest[0]));
    return 0;
  }
  if (flags.help || !command) {
    io.out(usage(command));
    return command || flags.help ? 0 : 2;
  }
  if (!COMMANDS.some((c) => c.name === command)) throw new UsageError(`unknown command "${command}"`);
  if (command === "completion") {
    const script = completionScript(rest[0] ?? "");
    if (!script) throw new UsageError("completion needs a shell: bash or zsh");
    io.out(script);
    return 0;
  }
  const config = loadConfig(flags, io.env);
  const json = flags.json ?? false;
  const verbose = flags.verbose ?? false;
  const sessionArg = () => {
    const id = rest[0];
    if (!id) throw new UsageError(`${command} needs a session id`);
    return id;
  };
  const client = connect(config);
  const { sessions } = client;

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
        // A GitHub token for --repo when the deployment has no GitHub App (never a flag: argv is visible).
        ...(flags.repo && io.env.KILO_GITHUB_TOKEN ? { githubToken: io.env.KILO_GITHUB_TOKEN } : {}),
      });
      const ack = await sessions.initiateSession({ cloudAgentSessionId: prepared.cloudAgentSessionId });
      if (!json) io.err(`session ${prepared.cloudAgentSessionId} (execution ${ack.executionId})`);
      return follow(client, prepared.cloudAgentSessionId, {
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
      return follow(client, id, { untilExecution: ack.executionId, json, verbose, io });
    }
    case "watch": {
      const id = sessionArg();
      let fromId: bigint | undefined;
      if (flags.from !== undefined) {
        if (!/^\d+$/.test(flags.from)) throw new UsageError("--from must be an event id (a number)");
        fromId = BigInt(flags.from);
      }
      return follow(client, id, { ...(fromId !== undefined ? { fromId } : {}), json, verbose, io });
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
    colour: colourEnabled(process.stdout.isTTY === true, process.env),
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
