/**
 * `npm run demo`: the whole product offline in about a minute, with no account. It starts
 * the embedded system (app/local-system.ts), a scripted OpenAI-compatible model server (it
 * answers each request with a `write` tool call, then a short text: no real model), and a
 * local git repository served over HTTP; then it runs a session through the kilo-cloud CLI
 * and shows the commit the agent pushed.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger } from "@kilo-cloud/common";
import { defaultScript, startGitServer, startModelServer } from "@kilo-cloud/testing";
import { startLocalSystem } from "../app/local-system.js";

const say = (line: string) => process.stdout.write(`\x1b[1m▸ ${line}\x1b[0m\n`);
const dataDir = mkdtempSync(join(tmpdir(), "kilo-cloud-demo-"));
const logger = createLogger({ service: "kilo-cloud", level: process.env.LOG_LEVEL ?? "warn" });

say("starting a scripted model server and a local git repository");
const model = await startModelServer({
  apiKey: "sk-demo",
  script: defaultScript({
    filePath: () => "HELLO.md",
    content: "# Hello from Kilo Cloud Agent\n\nWritten by the demo run.\n",
  }),
});
const git = await startGitServer();
await git.createBareRepo("demo/hello", { files: { "README.md": "# hello\n" } });

say("starting Kilo Cloud Agent (embedded PostgreSQL, events in PostgreSQL, local sandboxes)");
const system = await startLocalSystem({
  port: 0,
  host: "127.0.0.1",
  dataDir,
  provider: { kind: "openai-compatible", baseUrl: model.url, apiKey: "sk-demo", id: "demo" },
  isolation: process.env.SANDBOX_ISOLATION === "none" ? "none" : "bwrap",
  allowInsecureGit: true,
  // The demo's git server is on this host's loopback: the sandboxes may reach that one port,
  // and the session service accepts its URL.
  env: {
    ...process.env,
    SANDBOX_EGRESS_ALLOW: new URL(git.url).host,
    SESSION_OUTBOUND_ALLOW_HOSTS: "127.0.0.1",
  },
  callbackPolicy: { allowHttp: false, allowLoopback: false },
  devUser: "demo-user",
  logger,
});
say(`listening on ${system.url}`);

let code = 1;
try {
  say("kilo-cloud run --git-url <local repo> --prompt 'Add a HELLO.md' --auto-commit");
  code = await new Promise<number>((resolve) => {
    const cli = spawn(
      process.execPath,
      [
        join(import.meta.dirname, "..", "bin", "kilo-cloud.js"),
        "run",
        "--config",
        system.cliConfigPath,
        "--git-url",
        git.repoUrl("demo/hello"),
        "--prompt",
        "Add a HELLO.md that greets the reader",
        "--model",
        "mock-model",
        "--auto-commit",
      ],
      { stdio: "inherit" },
    );
    cli.on("exit", (c) => resolve(c ?? 1));
  });
  const branches = (await git.branches("demo/hello")).filter((b) => b.startsWith("session/"));
  for (const branch of branches) {
    const [head] = await git.log("demo/hello", branch);
    say(
      `the agent's commit on ${branch}: ${head?.sha.slice(0, 12)} "${head?.subject}" by ${head?.author.name}`,
    );
    process.stdout.write(`${(await git.readFile("demo/hello", branch, "HELLO.md")) ?? ""}\n`);
  }
  say(code === 0 ? "done" : `the run ended with exit code ${code}`);
} finally {
  await system.close();
  await git.close();
  await model.close();
  rmSync(dataDir, { recursive: true, force: true });
}
process.exit(code);
