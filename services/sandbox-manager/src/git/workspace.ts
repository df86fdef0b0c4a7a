import { posix } from "node:path";
import type { Driver, Sandbox } from "../drivers/driver.js";
import { execCollect } from "../drivers/exec-utils.js";
import { assertBranchName, PROTECTED_BRANCHES } from "./branch-name.js";
import { GitError, type GitStep } from "./git-error.js";
import { parseRemoteUrl, type RemoteUrl } from "./remote-url.js";

export { GitError, type GitStep } from "./git-error.js";

/**
 * Git for one session workspace, run inside the sandbox through the Driver with argv
 * arrays only.
 *
 * Credentials are given per call and exist only in the environment of the git process
 * that talks to the remote (clone, fetch, ls-remote, push), as an `Authorization` header
 * scoped to the repository's origin through git's `GIT_CONFIG_COUNT` variables. They
 * never reach `.git/config`, the remote URL, argv, or an error message.
 *
 * Everything in the workspace, `.git/config` included, is writable by the agent between
 * our commands, so commands that carry credentials also ignore the session's global git
 * config, run no hooks, and refuse to run when the repository config holds settings
 * that would route or weaken the authenticated connection (see {@link unsafeRemoteConfig}).
 * Fetches and pushes name the URL we were given, never `origin`, whose URL the agent
 * could have changed.
 */

export interface GitCredentials {
  username: string;
  password: string;
}

/** GitHub App installation tokens authenticate as the fixed user `x-access-token`. */
export function githubInstallationCredentials(token: string): GitCredentials {
  return { username: "x-access-token", password: token };
}

export const GIT_IDENTITY = { name: "Kilo Code Cloud", email: "cloud@kilocode.com" } as const;

export interface GitWorkspaceOptions {
  driver: Driver;
  sandbox: Sandbox;
  /** The workspace path inside the sandbox; the repository's work tree. */
  path: string;
  /** The session's HOME inside the sandbox. */
  home: string;
  /** The session's repository. Fixed per workspace: it is also what credentials are scoped to. */
  url: string;
  /** PATH and the like. `GIT_*` variables other than the TLS CA ones are dropped. */
  baseEnv: Record<string, string>;
  allowHttp?: boolean | undefined;
  allowLoopback?: boolean | undefined;
  /** Per git command. Default 120 s. */
  timeoutMs?: number | undefined;
}

export interface CloneOptions {
  credentials?: GitCredentials | undefined;
  /** Commits of history to fetch; 0 for all. Default 1. */
  depth?: number | undefined;
  signal?: AbortSignal | undefined;
}

export interface PrepareBranchOptions {
  sessionId: string;
  /** Work on this existing remote branch instead of `session/<sessionId>`. */
  upstreamBranch?: string | undefined;
  credentials?: GitCredentials | undefined;
  /** The workspace was just cloned (`cloneIfMissing` returned `cloned: true`). */
  coldStart: boolean;
  signal?: AbortSignal | undefined;
}

export type PullStatus =
  /** The remote branch has nothing the workspace lacks. */
  | "up-to-date"
  | "fast-forward"
  /** Local and remote commits were joined with a merge commit. */
  | "merged"
  /** The session branch has not been pushed yet. */
  | "no-remote-branch"
  /** The merge conflicted and was aborted; the workspace is as it was. */
  | "conflict"
  /** Fetch or merge failed for another reason (see message); the workspace is as it was. */
  | "failed";

export interface PullResult {
  status: PullStatus;
  message?: string;
}

export interface BranchResult {
  branch: string;
  /** True when the branch did not exist on the remote and was created locally. */
  created: boolean;
  /** The commit checked out; undefined in an empty repository. */
  head: string | undefined;
  /** Only for session branches on later executions. */
  pulled?: PullResult;
}

export interface CommitAndPushOptions {
  message: string;
  branch: string;
  credentials?: GitCredentials | undefined;
  /** Allow `main`/`master`; set only when the session's explicit upstreamBranch is that branch. */
  allowProtectedBranch?: boolean | undefined;
  signal?: AbortSignal | undefined;
}

export type CommitAndPushResult = { committed: false } | { committed: true; sha: string; branch: string };

/**
 * On every command. Hooks: the repository (and the agent) control `.git/hooks` and
 * `core.hooksPath` (husky et al.); our clone/commit/merge/push must neither hand them the
 * credential environment nor fail or stall on a project's lint hook. The agent's own git
 * commands still run them. The rest keeps git from starting other programs or background
 * work on our behalf.
 */
const HARDENING = [
  "-c",
  "core.hooksPath=/dev/null",
  "-c",
  "core.fsmonitor=false",
  "-c",
  // An empty value empties the helper list, so no helper runs, prompts or stores.
  "credential.helper=",
  "-c",
  "protocol.file.allow=never",
  "-c",
  "submodule.recurse=false",
  "-c",
  "commit.gpgSign=false",
  "-c",
  "gc.auto=0",
  "-c",
  "maintenance.auto=false",
];

/** `http.*` settings that cannot redirect or weaken an authenticated request. */
const SAFE_HTTP_KEYS = new Set([
  "postbuffer",
  "lowspeedlimit",
  "lowspeedtime",
  "version",
  "maxrequests",
  "minsessions",
]);

/**
 * The first repository config key that could expose credentials or send our requests
 * somewhere else: proxies, TLS settings, extra headers, cookie files (all of `http.*` but
 * a few tuning knobs), URL rewriting (`url.*.insteadOf`), remote helpers and proxies, and
 * `core.alternateRefsCommand`, a shell command fetch and push run. Hooks, fsmonitor,
 * askpass and credential helpers are overridden instead, so a repository using husky or a
 * credential helper keeps working.
 */
export function unsafeRemoteConfig(keys: readonly string[]): string | undefined {
  for (const key of keys) {
    const first = key.indexOf(".");
    const last = key.lastIndexOf(".");
    if (first < 0) continue;
    const section = key.slice(0, first).toLowerCase();
    const variable = key.slice(last + 1).toLowerCase();
    const subsection = first === last ? "" : key.slice(first + 1, last);
    if (section === "http" && !SAFE_HTTP_KEYS.has(variable)) return key;
    if (section === "url") return key;
    if (section === "core" && variable === "alternaterefscommand") return key;
    if (section === "remote" && (/[:/]/.test(subsection) || /^(proxy|proxyauthmethod|vcs)$/.test(variable))) {
      return key;
    }
  }
  return undefined;
}

interface GitRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

interface RunOptions {
  cwd?: string;
  /** Talks to the remote: the session's global config is ignored, credentials are added. */
  remote?: boolean;
  credentials?: GitCredentials | undefined;
  stdin?: string;
  signal?: AbortSignal | undefined;
}

export class GitWorkspace {
  readonly path: string;
  readonly remote: RemoteUrl;
  private readonly driver: Driver;
  private readonly sandbox: Sandbox;
  private readonly home: string;
  private readonly env: Record<string, string>;
  private readonly timeoutMs: number;

  /** Throws {@link GitError} (step `clone`) when the URL is not acceptable. */
  constructor(opts: GitWorkspaceOptions) {
    this.driver = opts.driver;
    this.sandbox = opts.sandbox;
    this.path = opts.path;
    this.home = opts.home;
    this.timeoutMs = opts.timeoutMs ?? 120_000;
    this.remote = parseRemoteUrl(opts.url, { allowHttp: opts.allowHttp, allowLoopback: opts.allowLoopback });
    const base = Object.fromEntries(
      Object.entries(opts.baseEnv).filter(
        ([k]) => !k.startsWith("GIT_") || /^GIT_SSL_CA(INFO|PATH)$/.test(k),
      ),
    );
    this.env = {
      ...base,
      HOME: opts.home,
      // Messages are matched below (non-fast-forward, missing refs).
      LC_ALL: "C",
      GIT_CONFIG_NOSYSTEM: "1",
      GIT_TERMINAL_PROMPT: "0",
      // Set but empty: git skips askpass entirely (also core.askPass), then fails instead of prompting.
      GIT_ASKPASS: "",
      SSH_ASKPASS: "",
      GIT_ALLOW_PROTOCOL: opts.allowHttp ? "https:http" : "https",
      GIT_AUTHOR_NAME: GIT_IDENTITY.name,
      GIT_AUTHOR_EMAIL: GIT_IDENTITY.email,
      GIT_COMMITTER_NAME: GIT_IDENTITY.name,
      GIT_COMMITTER_EMAIL: GIT_IDENTITY.email,
    };
  }

  /**
   * Cold start: clones when `<path>/.git` does not exist, replacing whatever an
   * interrupted clone left at the path. On failure nothing is left behind.
   */
  async cloneIfMissing(opts: CloneOptions = {}): Promise<{ cloned: boolean }> {
    if (await this.driver.exists(this.sandbox, `${this.path}/.git`)) return { cloned: false };
    const depth = opts.depth ?? 1;
    if (!Number.isInteger(depth) || depth < 0)
      throw new GitError("clone", "depth must be a whole number >= 0");
    const parent = posix.dirname(this.path);
    if (await this.driver.exists(this.sandbox, this.path)) await this.driver.remove(this.sandbox, this.path);
    await this.driver.mkdir(this.sandbox, parent);
    await this.driver.mkdir(this.sandbox, this.home);
    try {
      // Tags are left out: a shallow clone has little use for them and they cost a lot
      // on big repositories. The target is relative so argv holds no sandbox paths.
      const r = await this.git(
        "clone",
        [
          "clone",
          "--no-tags",
          ...(depth > 0 ? [`--depth=${depth}`] : []),
          "--",
          this.remote.url,
          posix.basename(this.path),
        ],
        { cwd: parent, remote: true, credentials: opts.credentials, signal: opts.signal },
      );
      if (r.code !== 0) throw new GitError("clone", `could not clone ${this.remote.url}: ${reason(r)}`);
      await this.ok("clone", ["config", "user.name", GIT_IDENTITY.name]);
      await this.ok("clone", ["config", "user.email", GIT_IDENTITY.email]);
    } catch (err) {
      await this.driver.remove(this.sandbox, this.path).catch(() => {});
      throw err;
    }
    return { cloned: true };
  }

  /**
   * Puts the workspace on its branch, following the reference:
   * - `session/<sessionId>`: the remote branch when it exists, else a new branch from the
   *   cloned HEAD; on later executions a lenient pull that reports instead of failing.
   * - `upstreamBranch`: must exist on the remote; fetched and checked out on cold start,
   *   only checked out (no fetch, no pull) later, so its state stays predictable.
   */
  async prepareBranch(opts: PrepareBranchOptions): Promise<BranchResult> {
    const upstream = opts.upstreamBranch;
    const branch = upstream ?? `session/${opts.sessionId}`;
    assertBranchName(branch, "branch");
    if (!opts.coldStart && (await this.localBranchExists(branch))) {
      await this.switchTo(branch);
      if (upstream !== undefined) return { branch, created: false, head: await this.head("branch") };
      const pulled = await this.lenientPull(branch, opts);
      return { branch, created: false, head: await this.head("pull"), pulled };
    }

    await this.assertSafeForCredentials("branch", opts.credentials);
    const remoteSha = await this.remoteBranchSha("branch", branch, opts);
    if (remoteSha === undefined) {
      if (upstream !== undefined)
        throw new GitError("branch", `branch ${upstream} does not exist on the remote`);
      if ((await this.head("branch")) === undefined) {
        // An empty repository: the first commit will create the branch.
        await this.ok("branch", ["symbolic-ref", "HEAD", `refs/heads/${branch}`]);
      } else {
        await this.ok("branch", ["switch", "--quiet", "--no-track", "-c", branch]);
      }
      return { branch, created: true, head: await this.head("branch") };
    }

    // In a shallow clone, fetching another branch without a depth would pull in its
    // whole history.
    const shallow = await this.driver.exists(this.sandbox, `${this.path}/.git/shallow`);
    await this.fetchBranch("branch", branch, opts, shallow ? 1 : undefined);
    const tracking = `refs/remotes/origin/${branch}`;
    if (await this.localBranchExists(branch)) {
      // e.g. the upstream branch is the default branch the clone already checked out.
      await this.switchTo(branch);
      const r = await this.git("branch", ["merge", "--ff-only", "--quiet", tracking], {
        signal: opts.signal,
      });
      if (r.code !== 0) {
        throw new GitError("branch", `could not bring ${branch} up to date with the remote: ${reason(r)}`);
      }
    } else {
      await this.ok("branch", ["switch", "--quiet", "--no-track", "-c", branch, tracking]);
    }
    await this.setTracking("branch", branch);
    return { branch, created: false, head: await this.head("branch") };
  }

  /**
   * Stages everything (new files included), commits as Kilo Code Cloud and pushes to
   * `refs/heads/<branch>` without force. `main`/`master` are refused unless allowed.
   * A rejected push throws; the commit then stays in the workspace.
   */
  async commitAndPush(opts: CommitAndPushOptions): Promise<CommitAndPushResult> {
    const { branch } = opts;
    assertBranchName(branch, "push");
    if (PROTECTED_BRANCHES.includes(branch) && !opts.allowProtectedBranch) {
      throw new GitError("push", `refusing to push to protected branch ${branch}`);
    }
    if (opts.message.trim() === "") throw new GitError("commit", "the commit message is empty");
    const current = await this.currentBranch("commit");
    if (current !== branch) {
      throw new GitError(
        "commit",
        `the workspace is on ${current === undefined ? "a detached HEAD" : `branch ${current}`}, not ${branch}; nothing was committed`,
      );
    }

    await this.ok("commit", ["add", "--all"], opts.signal);
    const status = await this.ok("commit", ["status", "--porcelain"], opts.signal);
    // Column 1 is the index; after `add --all` anything not staged (e.g. a dirty submodule) cannot be committed.
    const staged = status.stdout.split("\n").some((line) => line.length > 2 && !" ?!".includes(line[0]!));
    if (!staged) return { committed: false };

    await this.assertSafeForCredentials("push", opts.credentials);
    const commit = await this.git("commit", ["commit", "--quiet", "--no-verify", "--file=-"], {
      stdin: opts.message,
      signal: opts.signal,
    });
    if (commit.code !== 0) throw new GitError("commit", `could not commit: ${reason(commit)}`);
    const sha = await this.head("commit");
    if (sha === undefined) throw new GitError("commit", "the commit did not produce a HEAD");

    const push = await this.git(
      "push",
      [
        "push",
        "--porcelain",
        "--no-verify",
        "--recurse-submodules=no",
        "--",
        this.remote.url,
        // No leading "+": a non-fast-forward update is rejected by the remote, never forced.
        `refs/heads/${branch}:refs/heads/${branch}`,
      ],
      { remote: true, credentials: opts.credentials, signal: opts.signal },
    );
    if (push.code !== 0) {
      const out = `${push.stdout}\n${push.stderr}`;
      const short = sha.slice(0, 12);
      if (/\[rejected\]|non-fast-forward|fetch first/.test(out)) {
        throw new GitError(
          "push",
          `push to ${branch} was rejected: the remote branch has commits the workspace does not have (non-fast-forward); nothing was forced and commit ${short} stays in the workspace`,
        );
      }
      throw new GitError(
        "push",
        `could not push ${branch} (commit ${short} stays in the workspace): ${reason(push)}`,
      );
    }
    await this.ok("push", ["update-ref", `refs/remotes/origin/${branch}`, sha]);
    await this.setTracking("push", branch);
    return { committed: true, sha, branch };
  }

  /** Fetch + merge (fast-forward when possible); conflicts and remote failures are reported, not thrown. */
  private async lenientPull(branch: string, opts: PrepareBranchOptions): Promise<PullResult> {
    let remoteSha: string | undefined;
    try {
      await this.assertSafeForCredentials("pull", opts.credentials);
      remoteSha = await this.remoteBranchSha("pull", branch, opts);
    } catch (err) {
      if (err instanceof GitError) return { status: "failed", message: err.message };
      throw err;
    }
    if (remoteSha === undefined) {
      return { status: "no-remote-branch", message: `${branch} does not exist on the remote yet` };
    }
    const local = await this.head("pull");
    if (local === remoteSha) return { status: "up-to-date" };
    if (
      local !== undefined &&
      (await this.hasCommit(remoteSha)) &&
      (await this.isAncestor(remoteSha, local))
    ) {
      return { status: "up-to-date" };
    }
    try {
      // No depth: the new commits build on ones we have, and the merge needs that link.
      await this.fetchBranch("pull", branch, opts, undefined);
    } catch (err) {
      if (err instanceof GitError) return { status: "failed", message: err.message };
      throw err;
    }
    const tracking = `refs/remotes/origin/${branch}`;
    const fastForward = local === undefined || (await this.isAncestor(local, tracking));
    const merge = await this.git(
      "pull",
      fastForward ? ["merge", "--ff-only", "--quiet", tracking] : ["merge", "--no-edit", "--quiet", tracking],
      { signal: opts.signal },
    );
    if (merge.code === 0) return { status: fastForward ? "fast-forward" : "merged" };
    if (await this.driver.exists(this.sandbox, `${this.path}/.git/MERGE_HEAD`)) {
      await this.ok("pull", ["merge", "--abort"]);
      return {
        status: "conflict",
        message: `the remote ${branch} conflicts with the workspace; the merge was aborted and the workspace left as it was`,
      };
    }
    return { status: "failed", message: `could not merge the remote ${branch}: ${reason(merge)}` };
  }

  private async fetchBranch(
    step: GitStep,
    branch: string,
    opts: { credentials?: GitCredentials | undefined; signal?: AbortSignal | undefined },
    depth: number | undefined,
  ): Promise<void> {
    const r = await this.git(
      step,
      [
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-recurse-submodules",
        ...(depth === undefined ? [] : [`--depth=${depth}`]),
        "--",
        this.remote.url,
        // "+" only moves our remote-tracking ref, which mirrors the remote.
        `+refs/heads/${branch}:refs/remotes/origin/${branch}`,
      ],
      { remote: true, credentials: opts.credentials, signal: opts.signal },
    );
    if (r.code !== 0) throw new GitError(step, `could not fetch ${branch}: ${reason(r)}`);
  }

  /** The remote branch's commit, or undefined when the remote has no such branch. */
  private async remoteBranchSha(
    step: GitStep,
    branch: string,
    opts: { credentials?: GitCredentials | undefined; signal?: AbortSignal | undefined },
  ): Promise<string | undefined> {
    const ref = `refs/heads/${branch}`;
    const r = await this.git(step, ["ls-remote", "--exit-code", "--heads", "--", this.remote.url, ref], {
      remote: true,
      credentials: opts.credentials,
      signal: opts.signal,
    });
    if (r.code === 2) return undefined;
    if (r.code !== 0) throw new GitError(step, `could not reach ${this.remote.url}: ${reason(r)}`);
    // Patterns match ref-name tails, so keep the exact ref only.
    for (const line of r.stdout.split("\n")) {
      const [sha, name] = line.split("\t");
      if (name === ref && sha) return sha;
    }
    return undefined;
  }

  /** Refuses to hand credentials to git when the repository config could misuse them. */
  private async assertSafeForCredentials(
    step: GitStep,
    credentials: GitCredentials | undefined,
  ): Promise<void> {
    if (credentials === undefined) return;
    const r = await this.git(step, ["config", "--list", "--show-scope", "-z"], { remote: true });
    if (r.code !== 0) throw new GitError(step, `could not read the workspace's git config: ${reason(r)}`);
    const fields = r.stdout.split("\0");
    const keys: string[] = [];
    for (let i = 0; i + 1 < fields.length; i += 2) {
      if (fields[i] !== "command") keys.push((fields[i + 1] ?? "").split("\n")[0] ?? "");
    }
    const key = unsafeRemoteConfig(keys);
    if (key !== undefined) {
      throw new GitError(
        step,
        `the workspace's git config sets ${key}, which would apply to authenticated requests; refusing to use the credentials until it is removed`,
      );
    }
  }

  /**
   * Lets the agent's own `git status`/`git pull` see the branch's remote counterpart: the
   * single-branch clone's refspec only covers the default branch.
   */
  private async setTracking(step: GitStep, branch: string): Promise<void> {
    const refspec = `+refs/heads/${branch}:refs/remotes/origin/${branch}`;
    // Replaces the identical line or adds it: idempotent across executions.
    await this.ok(step, [
      "config",
      "--fixed-value",
      "--replace-all",
      "remote.origin.fetch",
      refspec,
      refspec,
    ]);
    await this.ok(step, ["config", `branch.${branch}.remote`, "origin"]);
    await this.ok(step, ["config", `branch.${branch}.merge`, `refs/heads/${branch}`]);
  }

  private async switchTo(branch: string): Promise<void> {
    if ((await this.currentBranch("branch")) === branch) return;
    const r = await this.git("branch", ["switch", "--quiet", "--no-guess", branch]);
    if (r.code !== 0) throw new GitError("branch", `could not switch to ${branch}: ${reason(r)}`);
  }

  private async localBranchExists(branch: string): Promise<boolean> {
    const r = await this.git("branch", ["rev-parse", "--verify", "--quiet", `refs/heads/${branch}`]);
    return r.code === 0;
  }

  /** Undefined on a detached HEAD. */
  private async currentBranch(step: GitStep): Promise<string | undefined> {
    const r = await this.git(step, ["symbolic-ref", "--quiet", "HEAD"]);
    if (r.code === 1) return undefined;
    if (r.code !== 0) throw new GitError(step, `could not read HEAD: ${reason(r)}`);
    return r.stdout.trim().replace(/^refs\/heads\//, "");
  }

  /** Undefined while HEAD is unborn (an empty repository). */
  private async head(step: GitStep): Promise<string | undefined> {
    const r = await this.git(step, ["rev-parse", "--verify", "--quiet", "HEAD^{commit}"]);
    if (r.code === 1) return undefined;
    if (r.code !== 0) throw new GitError(step, `could not read HEAD: ${reason(r)}`);
    return r.stdout.trim();
  }

  private async hasCommit(sha: string): Promise<boolean> {
    return (await this.git("pull", ["cat-file", "-e", `${sha}^{commit}`])).code === 0;
  }

  private async isAncestor(ancestor: string, descendant: string): Promise<boolean> {
    const r = await this.git("pull", ["merge-base", "--is-ancestor", ancestor, descendant]);
    if (r.code === 0 || r.code === 1) return r.code === 0;
    throw new GitError("pull", `could not compare ${ancestor} and ${descendant}: ${reason(r)}`);
  }

  private async ok(step: GitStep, args: string[], signal?: AbortSignal): Promise<GitRun> {
    const r = await this.git(step, args, { signal });
    if (r.code !== 0) throw new GitError(step, `git ${args[0]} failed: ${reason(r)}`);
    return r;
  }

  private async git(step: GitStep, args: string[], opts: RunOptions = {}): Promise<GitRun> {
    const env: Record<string, string> = { ...this.env };
    if (opts.remote) {
      // The session's ~/.gitconfig is the agent's to write; nothing from it applies here.
      env.GIT_CONFIG_GLOBAL = "/dev/null";
    }
    const secrets: string[] = [];
    if (opts.remote && opts.credentials) {
      const { username, password } = opts.credentials;
      const basic = Buffer.from(`${username}:${password}`).toString("base64");
      env.GIT_CONFIG_COUNT = "1";
      env.GIT_CONFIG_KEY_0 = `http.${this.remote.origin}/.extraHeader`;
      env.GIT_CONFIG_VALUE_0 = `Authorization: Basic ${basic}`;
      secrets.push(basic);
      if (password !== "") secrets.push(password);
    }
    let r: Awaited<ReturnType<typeof execCollect>>;
    try {
      r = await execCollect(
        this.driver,
        this.sandbox,
        {
          argv: ["git", ...HARDENING, ...args],
          cwd: opts.cwd ?? this.path,
          env,
          ...(opts.stdin !== undefined ? { stdin: opts.stdin } : {}),
        },
        { timeoutMs: this.timeoutMs, ...(opts.signal ? { signal: opts.signal } : {}) },
      );
    } catch (err) {
      throw new GitError(step, `could not run git ${args[0]}: ${scrub(errorText(err), secrets)}`);
    }
    if (r.timedOut)
      throw new GitError(step, `git ${args[0]} timed out after ${Math.round(this.timeoutMs / 1000)}s`);
    if (opts.signal?.aborted) throw new GitError(step, `git ${args[0]} was cancelled`);
    return { code: r.exitCode, stdout: scrub(r.stdout, secrets), stderr: scrub(r.stderr, secrets) };
  }
}

function scrub(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const s of secrets) out = out.split(s).join("***");
  return out;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** One line a user can act on, from git's (already scrubbed) output. */
function reason(r: GitRun): string {
  const text = r.stderr;
  if (/could not read (Username|Password)|Authentication failed|returned error: 401/i.test(text)) {
    return "authentication failed (credentials missing, wrong or expired)";
  }
  if (/returned error: 403/.test(text))
    return "access denied (the credentials cannot access this repository)";
  if (/returned error: 404|repository '.*' not found/i.test(text)) return "repository not found";
  const lines = text
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean);
  const line = lines.filter((l) => /^(fatal|error):/.test(l)).pop() ?? lines.pop();
  if (line === undefined) return r.code === null ? "git was killed" : `git exited with status ${r.code}`;
  return line.replace(/^(fatal|error):\s*/, "").slice(0, 500);
}
