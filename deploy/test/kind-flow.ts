/**
 * The V2 flow against a cluster installed by deploy/kind/e2e.sh (not a vitest file: it
 * needs the kind cluster, hence Docker). Starts a scripted model server and a git server on
 * this machine, reachable from the sandbox pods at HOST_IP, then as a client would:
 * PrepareSession (backend, internal key) → InitiateSession → CreateStreamTicket →
 * Subscribe until the execution's terminal event, and checks the sandbox pod and the
 * pushed commit.
 */
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { createServer, connect as netConnect } from "node:net";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { SessionService, StreamService } from "@kilo-cloud/proto";
import { startGitServer, startModelServer } from "@kilo-cloud/testing";
import { SignJWT } from "jose";

const env = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is required`);
  return v;
};

/** Exposes a loopback server on all addresses (the test servers bind 127.0.0.1 only). */
function expose(targetPort: number, port: number): Promise<() => void> {
  const server = createServer((socket) => {
    const upstream = netConnect(targetPort, "127.0.0.1");
    socket.pipe(upstream).pipe(socket);
    socket.on("error", () => upstream.destroy());
    upstream.on("error", () => socket.destroy());
  });
  return new Promise((resolve) => server.listen(port, "0.0.0.0", () => resolve(() => server.close())));
}

const gatewayUrl = env("GATEWAY_URL");
const hostIp = env("HOST_IP");
const gitPassword = `e2e-${randomUUID()}`;
const model = await startModelServer();
const git = await startGitServer({ auth: { username: "git", password: gitPassword } });
const closeModel = await expose(Number(new URL(model.url).port), Number(env("MODEL_PORT")));
const closeGit = await expose(Number(new URL(git.url).port), Number(env("GIT_PORT")));
await git.createBareRepo("acme/widgets", { files: { "README.md": "# widgets\n" } });

const userId = `e2e-user-${randomUUID().slice(0, 8)}`;
const token = await new SignJWT({})
  .setProtectedHeader({ alg: "HS256" })
  .setSubject(userId)
  .setIssuedAt()
  .setExpirationTime("30m")
  .sign(new TextEncoder().encode(env("AUTH_HS256_SECRET")));
const transport = createConnectTransport({
  baseUrl: gatewayUrl,
  httpVersion: "1.1",
  interceptors: [
    (next) => (req) => {
      req.header.set("authorization", `Bearer ${token}`);
      req.header.set("x-internal-api-key", env("INTERNAL_API_SECRET"));
      return next(req);
    },
  ],
});
const sessions = createClient(SessionService, transport);
const stream = createClient(StreamService, transport);

try {
  const prepared = await sessions.prepareSession({
    prompt: "Write the greeting file",
    mode: "code",
    model: "mock-model",
    repository: { case: "gitUrl", value: `http://${hostIp}:${env("GIT_PORT")}/acme/widgets.git` },
    gitToken: gitPassword,
    autoCommit: true,
  });
  const ack = await sessions.initiateSession({ cloudAgentSessionId: prepared.cloudAgentSessionId });
  console.log(`initiated ${ack.cloudAgentSessionId}, execution ${ack.executionId}`);
  const { ticket } = await sessions.createStreamTicket({ cloudAgentSessionId: ack.cloudAgentSessionId });

  const abort = AbortSignal.timeout(10 * 60_000);
  const kinds: string[] = [];
  let terminal: string | undefined;
  for await (const res of stream.subscribe(
    { cloudAgentSessionId: ack.cloudAgentSessionId, ticket },
    { signal: abort },
  )) {
    const e = res.event;
    if (!e || e.executionId !== ack.executionId) continue;
    kinds.push(e.payload.case ?? "");
    console.log(`event ${e.id}: ${e.payload.case}`);
    if (e.payload.case === "complete" || e.payload.case === "error" || e.payload.case === "interrupted") {
      terminal = e.payload.case === "error" ? `error: ${e.payload.value.error}` : e.payload.case;
      break;
    }
  }
  if (terminal !== "complete") throw new Error(`the execution ended with ${terminal ?? "nothing"}`);
  if (!kinds.includes("kilocode")) throw new Error("no kilo event was streamed");
  if (model.requests.length === 0) throw new Error("kilo never reached the model server");

  const pods = execFileSync(
    "kubectl",
    [
      "-n",
      env("SANDBOX_NAMESPACE"),
      "get",
      "pods",
      "-l",
      "app.kubernetes.io/name=kilo-sandbox",
      "-o",
      "name",
    ],
    { encoding: "utf8" },
  ).trim();
  if (!/^pod\/kc-sandbox-[0-9a-f]{32}$/m.test(pods)) throw new Error(`no sandbox pod found: ${pods}`);
  console.log(`sandbox pod: ${pods}`);
  const branch = `session/${ack.cloudAgentSessionId}`;
  if (!(await git.branches("acme/widgets")).includes(branch)) {
    throw new Error(`the session branch ${branch} was not pushed (auto-commit)`);
  }
  if ((await git.readFile("acme/widgets", branch, "hello1.txt")) === undefined) {
    throw new Error("the file kilo wrote is not in the pushed commit");
  }
  console.log("V2 flow passed");
} finally {
  closeModel();
  closeGit();
  await model.close();
  await git.close();
}
