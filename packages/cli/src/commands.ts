/** The CLI's commands and options: the one source for --help and shell completion. */

export interface CommandSpec {
  name: string;
  args: string;
  summary: string;
  options: string[];
}

export const COMMON_OPTIONS = [
  "--url",
  "--token",
  "--internal-key",
  "--config",
  "--json",
  "--verbose",
  "--help",
];

export const COMMANDS: CommandSpec[] = [
  {
    name: "run",
    args: "--repo OWNER/NAME | --git-url URL --prompt TEXT [--mode M] [--model M] [--branch B] [--auto-commit]",
    summary: "prepare and start a session, and follow it to its end",
    options: ["--repo", "--git-url", "--prompt", "--mode", "--model", "--branch", "--auto-commit"],
  },
  {
    name: "send",
    args: "SESSION --prompt TEXT [--mode M] [--model M]",
    summary: "queue a follow-up message and follow it",
    options: ["--prompt", "--mode", "--model"],
  },
  {
    name: "watch",
    args: "SESSION [--from ID]",
    summary: "follow a session's events (Ctrl-C to stop)",
    options: ["--from"],
  },
  { name: "interrupt", args: "SESSION", summary: "stop the running execution", options: [] },
  { name: "get", args: "SESSION", summary: "show a session", options: [] },
  { name: "delete", args: "SESSION", summary: "delete a session and its workspace", options: [] },
  { name: "ls", args: "", summary: "list your sessions", options: [] },
  { name: "completion", args: "bash|zsh", summary: "print a shell completion script", options: [] },
];

const OPTIONS_HELP = `options:
  --url URL              the service (env KILO_CLOUD_URL; default http://127.0.0.1:8080)
  --token TOKEN          your bearer token (env KILO_TOKEN)
  --internal-key KEY     backend key for prepare (env KILO_INTERNAL_KEY)
                         (env KILO_GITHUB_TOKEN: a GitHub token for run --repo, without a GitHub App)
  --config FILE          a JSON file with {url, token, internalKey}
                         (default: $KILO_CLOUD_DATA_DIR/cli.json, ./.kilo-cloud/cli.json, ~/.config/kilo-cloud/config.json)
  --json                 print raw events as JSON lines
  --verbose              also show kilo's own log lines
  --version              print the version
`;

/** The whole usage, or one command's when `command` names one. */
export function usage(command?: string): string {
  const spec = COMMANDS.find((c) => c.name === command);
  if (spec) return `usage: kilo-cloud ${spec.name} ${spec.args}\n\n${spec.summary}\n\n${OPTIONS_HELP}`;
  const lines = COMMANDS.map(
    (c) => `  ${`${c.name} ${c.args}`.trimEnd()}\n                         ${c.summary}`,
  );
  return `usage: kilo-cloud <command> [options]\n\ncommands:\n${lines.join("\n")}\n\n${OPTIONS_HELP}\nrun \`kilo-cloud <command> --help\` for one command.\n`;
}
