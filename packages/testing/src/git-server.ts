import { type ChildProcess, execFile, spawn } from "node:child_process";
import { timingSafeEqual } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve, sep } from "node:path";
import { promisify } from "node:util";
import { createGunzip } from "node:zlib";

/**
 * A git smart-HTTP server for tests: real `git http-backend` behind a tiny Node CGI bridge
 * with HTTP basic auth, so clone/fetch/push go through exactly the code paths (credential
 * prompts, 401 retries, gzip request bodies, protocol v2) a real forge exercises.
 */

const execFileAsync = promisify(execFile);

export interface GitAccess {
  /** Repository name as given to {@link GitServer.createBareRepo}, when the path names one. */
  repo: string | undefined;
  /** True for pushes (receive-pack), so a callback can hand out read-only tokens. */
  write: boolean;
}

export type GitAuth =
  | { username: string; password: string }
  | { checkPassword(username: string, password: string, access: GitAccess): boolean | Promise<boolean> };

export interface GitServerOptions {
  /** Omit to serve anonymously (a public repository). */
  auth?: GitAuth;
  realm?: string;
  /** The address to listen on (default 127.0.0.1), e.g. a test cluster's bridge address for pods. */
  host?: string;
}

export interface AuthAttempt {
  username: string;
  password: string;
  ok: boolean;
  method: string;
  path: string;
  write: boolean;
}

export interface CreateRepoOptions {
  /** path → content of the initial commit. Default: a README. */
  files?: Record<string, string | Uint8Array>;
  /** Default `main`. Also becomes the repository's HEAD. */
  branch?: string;
  /** No commit at all, as a freshly created forge repository. */
  empty?: boolean;
}

export interface GitCommit {
  sha: string;
  author: { name: string; email: string };
  subject: string;
  /** Full message including the subject line. */
  message: string;
}

export interface GitServer extends AsyncDisposable {
  /** `http://<host>:<port>` (host 127.0.0.1 unless given) */
  readonly url: string;
  /** Directory holding the bare repositories. */
  readonly root: string;
  /** Every request that carried credentials, in order. */
  readonly authAttempts: readonly AuthAttempt[];
  repoUrl(name: string): string;
  /** Path of the bare repository. */
  createBareRepo(name: string, opts?: CreateRepoOptions): Promise<string>;
  branches(name: string): Promise<string[]>;
  /** Undefined when the branch or file does not exist. */
  readFile(name: string, branch: string, path: string): Promise<string | undefined>;
  /** Newest first. */
  log(name: string, branch: string): Promise<GitCommit[]>;
  close(): Promise<void>;
}

/** `-c http.extraHeader=<this>` authenticates a git command without putting secrets in the URL. */
export function basicAuthHeader(username: string, password: string): string {
  return `Authorization: Basic ${Buffer.from(`${username}:${password}`).toString("base64")}`;
}

const REPO_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]*(\/[A-Za-z0-9_][A-Za-z0-9._-]*)*$/;

/** Environment for every git the fixture runs: no user or system config leaks in. */
function isolatedGitEnv(home: string): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    HOME: home,
    GIT_CONFIG_NOSYSTEM: "1",
    GIT_CONFIG_GLOBAL: "/dev/null",
    GIT_TERMINAL_PROMPT: "0",
    GIT_AUTHOR_NAME: "Fixture",
    GIT_AUTHOR_EMAIL: "fixture@example.test",
    GIT_COMMITTER_NAME: "Fixture",
    GIT_COMMITTER_EMAIL: "fixture@example.test",
  };
}

export async function startGitServer(opts: GitServerOptions = {}): Promise<GitServer> {
  const root = await mkdtemp(join(tmpdir(), "kc-git-"));
  const reposDir = join(root, "repos");
  const home = join(root, "home");
  await mkdir(reposDir);
  await mkdir(home);
  const gitEnv = isolatedGitEnv(home);
  const realm = opts.realm ?? "kilo-cloud-test";
  const authAttempts: AuthAttempt[] = [];
  const children = new Set<ChildProcess>();

  const git = async (args: string[], cwd?: string) => {
    const { stdout } = await execFileAsync("git", args, {
      cwd,
      env: gitEnv,
      maxBuffer: 64 * 1024 * 1024,
      encoding: "buffer",
    });
    return stdout;
  };

  const repoPath = (name: string) => {
    if (!REPO_NAME.test(name) || name.split("/").some((s) => s === "." || s === "..")) {
      throw new Error(`invalid repository name "${name}"`);
    }
    return join(reposDir, `${name}.git`);
  };

  const authorize = async (
    req: IncomingMessage,
    access: GitAccess,
    path: string,
  ): Promise<string | false> => {
    const auth = opts.auth;
    const creds = parseBasic(req.headers.authorization);
    if (creds) {
      let ok = true;
      if (auth) {
        ok =
          "checkPassword" in auth
            ? await auth.checkPassword(creds.username, creds.password, access)
            : safeEqual(creds.username, auth.username) && safeEqual(creds.password, auth.password);
      }
      authAttempts.push({ ...creds, ok, method: req.method ?? "", path, write: access.write });
      return ok ? creds.username || "anonymous" : false;
    }
    return auth ? false : "anonymous";
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? "/", "http://localhost");
    let pathInfo: string;
    try {
      pathInfo = decodeURIComponent(url.pathname);
    } catch {
      req.resume();
      return sendText(res, 400, "bad path\n");
    }
    if (pathInfo.split("/").includes("..")) {
      req.resume();
      return sendText(res, 404, "not found\n");
    }
    const write =
      url.searchParams.get("service") === "git-receive-pack" || pathInfo.endsWith("/git-receive-pack");
    const repoMatch = /^\/(.+?)\.git(\/|$)/.exec(pathInfo);
    const user = await authorize(req, { repo: repoMatch?.[1], write }, pathInfo);
    if (user === false) {
      req.resume();
      res.writeHead(401, {
        "www-authenticate": `Basic realm="${realm}"`,
        "content-type": "text/plain",
      });
      res.end("authentication required\n");
      return;
    }

    const child = spawn("git", ["http-backend"], {
      env: {
        ...gitEnv,
        GIT_PROJECT_ROOT: reposDir,
        GIT_HTTP_EXPORT_ALL: "1",
        // Pushes over HTTP are off by default; the fixture exists to receive them.
        GIT_CONFIG_COUNT: "1",
        GIT_CONFIG_KEY_0: "http.receivepack",
        GIT_CONFIG_VALUE_0: "true",
        GATEWAY_INTERFACE: "CGI/1.1",
        SERVER_PROTOCOL: `HTTP/${req.httpVersion}`,
        REQUEST_METHOD: req.method ?? "GET",
        PATH_INFO: pathInfo,
        QUERY_STRING: url.search.slice(1),
        CONTENT_TYPE: req.headers["content-type"] ?? "",
        REMOTE_USER: user,
        REMOTE_ADDR: req.socket.remoteAddress ?? "127.0.0.1",
        // Protocol v2 is negotiated through this header; without it clients fall back to v0.
        ...(req.headers["git-protocol"]
          ? {
              HTTP_GIT_PROTOCOL: String(req.headers["git-protocol"]),
              GIT_PROTOCOL: String(req.headers["git-protocol"]),
            }
          : {}),
        // CONTENT_LENGTH is left out on purpose: the body may be re-encoded below, and
        // http-backend reads to EOF without it.
      },
      stdio: ["pipe", "pipe", "pipe"],
    });
    children.add(child);
    const stderr: Buffer[] = [];
    child.stderr.on("data", (b: Buffer) => stderr.push(b));
    child.on("close", () => children.delete(child));
    child.on("error", (err) => {
      if (!res.headersSent) sendText(res, 500, `cannot run git http-backend: ${err.message}\n`);
      else res.destroy();
    });
    // A client that goes away must not leave a receive-pack running.
    res.on("close", () => {
      if (child.exitCode === null && !res.writableFinished) child.kill("SIGKILL");
    });

    // git gzips large upload-pack requests; http-backend could inflate them itself, but
    // doing it here keeps the CGI contract plain and also covers `Content-Encoding: x-gzip`.
    const encoding = String(req.headers["content-encoding"] ?? "").toLowerCase();
    child.stdin.on("error", () => {}); // EPIPE when git stops reading early; the exit code tells.
    if (encoding === "gzip" || encoding === "x-gzip") {
      const gunzip = createGunzip();
      gunzip.on("error", () => {
        child.kill("SIGKILL");
        if (!res.headersSent) sendText(res, 400, "bad gzip body\n");
      });
      req.pipe(gunzip).pipe(child.stdin);
    } else if (encoding && encoding !== "identity") {
      child.kill("SIGKILL");
      req.resume();
      return sendText(res, 415, `unsupported content-encoding ${encoding}\n`);
    } else {
      req.pipe(child.stdin);
    }

    pipeCgiResponse(child, res, () => Buffer.concat(stderr).toString("utf8"));
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) sendText(res, 500, `${err instanceof Error ? err.message : String(err)}\n`);
      else res.destroy();
    });
  });
  await new Promise<void>((done, fail) => {
    server.once("error", fail);
    server.listen(0, opts.host ?? "127.0.0.1", () => {
      server.off("error", fail);
      done();
    });
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://${opts.host ?? "127.0.0.1"}:${port}`;

  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      for (const c of children) c.kill("SIGKILL");
      server.closeAllConnections();
      await new Promise<void>((done) => server.close(() => done()));
      await rm(root, { recursive: true, force: true });
    })();
    return closing;
  };

  return {
    url,
    root: reposDir,
    authAttempts,
    repoUrl: (name) => {
      repoPath(name);
      return `${url}/${name}.git`;
    },
    async createBareRepo(
      name,
      { files = { "README.md": `# ${name}\n` }, branch = "main", empty = false } = {},
    ) {
      const bare = repoPath(name);
      await mkdir(dirname(bare), { recursive: true });
      await git(["init", "--quiet", "--bare", `--initial-branch=${branch}`, bare]);
      if (empty) return bare;
      const work = await mkdtemp(join(root, "seed-"));
      try {
        await git(["init", "--quiet", `--initial-branch=${branch}`, work]);
        for (const [path, content] of Object.entries(files)) {
          const target = resolve(work, path);
          if (!target.startsWith(work + sep)) throw new Error(`file path "${path}" leaves the repository`);
          await mkdir(dirname(target), { recursive: true });
          await writeFile(target, content);
        }
        await git(["add", "--all"], work);
        await git(["commit", "--quiet", "--allow-empty", "-m", "Initial commit"], work);
        await git(["push", "--quiet", bare, `HEAD:refs/heads/${branch}`], work);
      } finally {
        await rm(work, { recursive: true, force: true });
      }
      return bare;
    },
    async branches(name) {
      const out = await git([
        "--git-dir",
        repoPath(name),
        "for-each-ref",
        "--format=%(refname:short)",
        "refs/heads/",
      ]);
      return out.toString("utf8").split("\n").filter(Boolean);
    },
    async readFile(name, branch, path) {
      const bare = repoPath(name);
      let oid: string;
      try {
        oid = (
          await git(["--git-dir", bare, "rev-parse", "--verify", "--quiet", `refs/heads/${branch}:${path}`])
        )
          .toString("utf8")
          .trim();
      } catch {
        return undefined;
      }
      return (await git(["--git-dir", bare, "cat-file", "blob", oid])).toString("utf8");
    },
    async log(name, branch) {
      // Unit/record separators cannot occur in names or messages git accepts.
      const out = await git([
        "--git-dir",
        repoPath(name),
        "log",
        "--format=%H%x1f%an%x1f%ae%x1f%s%x1f%B%x1e",
        `refs/heads/${branch}`,
        "--",
      ]);
      return out
        .toString("utf8")
        .split("\x1e")
        .map((r) => r.replace(/^\n/, ""))
        .filter(Boolean)
        .map((record) => {
          const [sha = "", authorName = "", authorEmail = "", subject = "", message = ""] =
            record.split("\x1f");
          return {
            sha,
            author: { name: authorName, email: authorEmail },
            subject,
            message: message.trimEnd(),
          };
        });
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/**
 * Relays a CGI response: headers up to the first blank line (with `Status:` becoming the
 * HTTP status), then the body streamed as it comes, since packs can be large.
 */
function pipeCgiResponse(child: ChildProcess, res: ServerResponse, stderr: () => string) {
  const stdout = child.stdout!;
  let head = Buffer.alloc(0);
  let headersDone = false;

  const onData = (b: Buffer) => {
    head = Buffer.concat([head, b]);
    const crlf = head.indexOf("\r\n\r\n");
    const lf = head.indexOf("\n\n");
    let end = -1;
    let sepLen = 0;
    if (crlf !== -1 && (lf === -1 || crlf < lf)) [end, sepLen] = [crlf, 4];
    else if (lf !== -1) [end, sepLen] = [lf, 2];
    if (end === -1) {
      if (head.length > 64 * 1024) {
        child.kill("SIGKILL");
        sendText(res, 502, "CGI headers too large\n");
      }
      return;
    }
    headersDone = true;
    stdout.off("data", onData);
    let status = 200;
    const headers: Record<string, string | string[]> = {};
    for (const line of head.subarray(0, end).toString("latin1").split(/\r?\n/)) {
      const i = line.indexOf(":");
      if (i <= 0) continue;
      const key = line.slice(0, i).trim().toLowerCase();
      const value = line.slice(i + 1).trim();
      if (key === "status") status = Number.parseInt(value, 10) || 500;
      else {
        const prev = headers[key];
        headers[key] = prev === undefined ? value : [...(Array.isArray(prev) ? prev : [prev]), value];
      }
    }
    res.writeHead(status, headers);
    const rest = head.subarray(end + sepLen);
    if (rest.length > 0) res.write(rest);
    stdout.pipe(res);
  };
  stdout.on("data", onData);
  child.on("close", (code) => {
    if (headersDone || res.headersSent) return;
    sendText(res, 500, `git http-backend exited with ${code} before answering: ${stderr()}\n`);
  });
}

function parseBasic(header: string | undefined): { username: string; password: string } | undefined {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header ?? "");
  if (!m?.[1]) return undefined;
  const decoded = Buffer.from(m[1], "base64").toString("utf8");
  const i = decoded.indexOf(":");
  if (i < 0) return undefined;
  return { username: decoded.slice(0, i), password: decoded.slice(i + 1) };
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function sendText(res: ServerResponse, status: number, text: string) {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(status, { "content-type": "text/plain" });
  res.end(text);
}
