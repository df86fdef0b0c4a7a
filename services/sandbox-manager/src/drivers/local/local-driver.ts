import { type ChildProcessByStdio, execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chmod,
  chown,
  copyFile,
  link,
  lstat,
  mkdir,
  mkdtemp,
  realpath,
  rename,
  rm,
  stat,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import type { Readable, Writable } from "node:stream";
import { type EgressPolicy, egressPolicy, type Logger } from "@kilo-cloud/common";
import {
  type Driver,
  type ExecHandle,
  type ExecRequest,
  type ExecResult,
  type KillReport,
  type Sandbox,
  type SandboxKey,
  sandboxId,
} from "../driver.js";
import {
  BWRAP_HOST_ENV,
  bwrapCommand,
  bwrapOptions,
  encodeArgs,
  type HostLayout,
  KILO_SANDBOX_PATH,
  readHostLayout,
  SANDBOX_GID,
  SANDBOX_UID,
} from "./bwrap-args.js";
import { CgroupLimits, DEFAULT_LIMITS, type SandboxLimits } from "./cgroup-limits.js";
import { EgressProxy, type ProviderRelay, RELAY_HOST } from "./egress-proxy.js";
import { freezeTree, type ProcInfo, readProc, sendKill, waitGone } from "./proc-tree.js";
import { existsIn, mkdirIn, removeIn, sandboxDirName, toHostPath } from "./sandbox-paths.js";
import { DEFAULT_UID_RANGE, type HostUser, SandboxUsers, type UidRange } from "./sandbox-users.js";

export interface LocalDriverOptions {
  /** Where sandboxes live: `<rootDir>/sandboxes/<hash of the sandbox id>/{workspace,home}`. */
  rootDir: string;
  /**
   * `bwrap`: every exec runs in its own bubblewrap sandbox seeing only its sandbox's
   * directories. `none`: plain processes on the host, for development only.
   */
  isolation: "bwrap" | "none";
  /** Host path of the kilo binary, shown read-only at /usr/local/bin/kilo inside. */
  kiloBinary?: string | undefined;
  /** More host paths shown read-only inside (bwrap only). */
  extraReadOnlyBinds?: { host: string; sandbox: string }[] | undefined;
  logger?: Logger | undefined;
  /** The bwrap program; by default /usr/bin/bwrap or /usr/local/bin/bwrap. */
  bwrapPath?: string | undefined;
  /**
   * `fenced` (default with bwrap): each exec has its own network namespace whose only way
   * out is the egress proxy, which applies `egressPolicy`. `host`: the host's network
   * (development only: the sandbox reaches every host port).
   */
  network?: "fenced" | "host" | undefined;
  /** Default: public addresses only (see @kilo-cloud/common egress.ts). */
  egressPolicy?: EgressPolicy | undefined;
  /** The model provider the proxy relays to with the operator's key (fenced only). */
  providerRelay?: ProviderRelay | undefined;
  /** Per-sandbox limits (cgroup v1 where writable, else RLIMIT_NPROC only). */
  limits?: Partial<SandboxLimits> | undefined;
  /**
   * Host uids of sandboxes when the manager runs as root (each sandbox its own); ignored
   * otherwise. Default: 2000000000 upwards.
   */
  uidRange?: UidRange | undefined;
}

/** How long after a process exited its output may still trail in before the result is given. */
const OUTPUT_GRACE_MS = 2_000;
/** How long kill() waits for the processes to be gone before reporting them as failed. */
const KILL_WAIT_MS = 5_000;

const EMPTY_REPORT: KillReport = Object.freeze({ killed: [], failed: [] }) as KillReport;

/**
 * Runs sandboxes on this machine. With `bwrap`, each exec is a bubblewrap sandbox with its
 * own user, pid, ipc and uts namespaces, a read-only view of the system, and only its
 * sandbox's workspace and home: other sandboxes, the manager's files and its environment
 * are out of sight. With `none`, processes run on the host as the manager's user and only
 * their paths are mapped: nothing is isolated.
 */
export class LocalDriver implements Driver {
  readonly name = "local";
  readonly #opts: LocalDriverOptions;
  readonly #root: string;
  readonly #bwrap: string;
  readonly #layout: HostLayout | undefined;
  readonly #log: Logger | undefined;
  readonly #running = new Set<LocalExec>();
  readonly #confine: Confinement | undefined;
  #closed = false;

  private constructor(
    opts: LocalDriverOptions,
    root: string,
    bwrap: string,
    layout: HostLayout | undefined,
    confine?: Confinement,
  ) {
    this.#opts = opts;
    this.#root = root;
    this.#bwrap = bwrap;
    this.#layout = layout;
    this.#log = opts.logger;
    this.#confine = confine;
  }

  /**
   * The base URL kilo uses for the model provider when the proxy relays to it (the key is
   * added outside the sandbox); undefined when kilo must be given the provider itself.
   */
  get providerRelayUrl(): string | undefined {
    return this.#confine?.proxy && this.#opts.providerRelay ? `http://${RELAY_HOST}` : undefined;
  }

  /** The sandbox's memory cgroup directory (cgroup v1), when limits are held by cgroups. */
  memoryCgroupOf(sandbox: Pick<Sandbox, "id">): string | undefined {
    return this.#confine?.cgroups?.groupDir("memory", sandboxDirName(sandbox.id));
  }

  /** What holds the sandboxes' resources: `cgroup` (v1) or `rlimit` (processes only). */
  get limitsMechanism(): "cgroup" | "rlimit" | "none" {
    if (!this.#confine) return "none";
    return this.#confine.cgroups ? "cgroup" : this.#confine.users ? "rlimit" : "none";
  }

  /**
   * Prepares the root directory and checks the sandbox really works: with `bwrap`, runs
   * `true` in a sandbox built exactly like an exec's, and refuses to start if that fails.
   */
  static async create(opts: LocalDriverOptions): Promise<LocalDriver> {
    await mkdir(join(opts.rootDir, "sandboxes"), { recursive: true, mode: 0o700 });
    const root = await realpath(opts.rootDir);
    if (opts.kiloBinary !== undefined) {
      const st = await stat(opts.kiloBinary).catch(() => undefined);
      if (!st?.isFile()) throw new Error(`kiloBinary ${opts.kiloBinary} is not a file`);
    }

    if (opts.isolation === "none") {
      const msg =
        'LocalDriver isolation is "none": sandboxed commands run unconfined on this host as the manager\'s user, ' +
        "can read and change any file it can (including other sandboxes), see its processes, and outlive a kill " +
        'if they daemonize. Development only: never run untrusted code like this. Set isolation to "bwrap".';
      if (opts.logger) opts.logger.warn({ isolation: "none" }, msg);
      else process.emitWarning(msg, "InsecureSandbox");
      return new LocalDriver(opts, root, "", undefined);
    }

    const bwrap = opts.bwrapPath ?? (await defaultBwrapPath());
    const etcDir = join(root, "etc");
    await mkdir(etcDir, { recursive: true, mode: 0o755 });
    const passwdFile = join(etcDir, "passwd");
    const groupFile = join(etcDir, "group");
    await writeAtomically(
      passwdFile,
      "root:x:0:0:root:/root:/bin/sh\n" +
        `sandbox:x:${SANDBOX_UID}:${SANDBOX_GID}:sandbox:/home:/bin/sh\n` +
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    );
    await writeAtomically(groupFile, `root:x:0:\nsandbox:x:${SANDBOX_GID}:\nnogroup:x:65534:\n`);
    const layout = await readHostLayout({
      passwdFile,
      groupFile,
      kiloBinary: opts.kiloBinary === undefined ? undefined : await stageKiloBinary(root, opts.kiloBinary),
      extraReadOnlyBinds: opts.extraReadOnlyBinds,
    });

    const confine = await confinement(opts, root);
    const driver = new LocalDriver(opts, root, bwrap, layout, confine);
    const failure = await driver.#probe();
    if (failure !== undefined) {
      await confine.proxy?.close();
      throw new Error(
        `LocalDriver isolation is "bwrap" but bubblewrap cannot run a sandbox with ${bwrap}: ${failure}. ` +
          'Install bubblewrap and socat (e.g. "apt-get install bubblewrap socat"), allow unprivileged user namespaces, ' +
          'or set isolation to "none" (no isolation at all: development only).',
      );
    }
    opts.logger?.info(
      {
        bwrap,
        rootDir: root,
        network: confine.proxy ? "fenced" : "host",
        hostUsers: confine.users ? "per sandbox" : "manager's user",
        limits: driver.limitsMechanism,
      },
      "local driver ready (bubblewrap isolation)",
    );
    return driver;
  }

  /** Runs a sandbox built exactly like an exec's (with the network bridge when fenced). */
  async #probe(): Promise<string | undefined> {
    const probeDir = join(this.#root, "probe");
    await mkdir(join(probeDir, "workspace"), { recursive: true, mode: 0o700 });
    await mkdir(join(probeDir, "home"), { recursive: true, mode: 0o700 });
    if (this.#confine?.proxy) await mkdir(this.#egressDir("probe"), { recursive: true, mode: 0o755 });
    const user = this.#confine?.users?.probeUser;
    if (user) await chownAll([probeDir, join(probeDir, "workspace"), join(probeDir, "home")], user);
    const argv = this.#confine?.proxy ? ["socat", "-V"] : ["true"];
    let child: BwrapChild;
    try {
      child = await this.#spawnBwrap(probeDir, "probe", user, {
        argv,
        cwd: "/workspace",
        env: BWRAP_HOST_ENV,
      });
    } catch (err) {
      return (err as Error).message;
    }
    let stderr = "";
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.stdout.resume();
    child.stdin.end();
    const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
    const ended = new Promise<void>((resolve) => child.stderr.once("close", () => resolve()));
    const code = await new Promise<number | null>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode);
      else child.once("exit", (c) => resolve(c));
    });
    clearTimeout(timer);
    await Promise.race([ended, new Promise((r) => setTimeout(r, 1_000))]);
    return code === 0 ? undefined : stderr.trim() || `exit status ${code}`;
  }

  /**
   * Starts bwrap for one exec: a fixed host environment, the sandbox's host user (when the
   * manager is root), its cgroups joined before bwrap reads its options (and so before it
   * does anything), and the options (mounts, the session's environment) through fd 3.
   */
  async #spawnBwrap(
    dir: string,
    cgroupName: string,
    user: HostUser | undefined,
    req: Pick<ExecRequest, "argv" | "cwd" | "env">,
  ): Promise<BwrapChild> {
    const egressDir = this.#confine?.proxy ? this.#egressDir(cgroupName) : undefined;
    const options = encodeArgs(
      bwrapOptions(this.#layout!, { sandboxDir: dir, cwd: req.cwd, argv: req.argv, env: req.env, egressDir }),
    );
    let file = this.#bwrap;
    let args = bwrapCommand({ argv: req.argv, egressDir });
    // RLIMIT_NPROC is the fallback where no pids cgroup counts the sandbox's processes.
    if (user && this.#confine && !this.#confine.cgroups) {
      args = [`--nproc=${this.#confine.limits.pids}`, "--", file, ...args];
      file = PRLIMIT;
    }
    const child = spawn(file, args, {
      env: BWRAP_HOST_ENV,
      detached: true,
      stdio: ["pipe", "pipe", "pipe", "pipe"],
      ...(user ? { uid: user.uid, gid: user.gid } : {}),
    }) as unknown as BwrapChild;
    await new Promise<void>((resolve, reject) => {
      child.once("spawn", resolve);
      child.once("error", reject);
    });
    const optionsPipe = child.stdio[3] as Writable;
    optionsPipe.on("error", () => {});
    try {
      await this.#confine?.cgroups?.join(cgroupName, child.pid!);
    } catch (err) {
      // A process that is already gone (e.g. bwrap missing) needs no limits: its exit says why.
      if (!(await isGone(child.pid!))) {
        child.kill("SIGKILL");
        throw new Error(`could not put the sandbox into its cgroups: ${(err as Error).message}`);
      }
    }
    optionsPipe.end(options);
    return child;
  }

  /** The host directory of a sandbox (for operators and tests; never derived from raw ids). */
  sandboxDir(sandbox: Pick<Sandbox, "id">): string {
    return join(this.#root, "sandboxes", sandboxDirName(sandbox.id));
  }

  async ensureSandbox(key: SandboxKey): Promise<Sandbox> {
    if (!key.userId) throw new Error("a sandbox needs a userId");
    const id = sandboxId(key);
    const dir = this.sandboxDir({ id });
    // mkdir is idempotent with recursive: concurrent callers all succeed.
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await mkdir(join(dir, "workspace"), { recursive: true, mode: 0o755 });
    await mkdir(join(dir, "home"), { recursive: true, mode: 0o755 });
    const user = await this.#userOf({ id });
    if (user) await adoptSandboxDir(dir, user);
    if (this.#confine?.proxy) {
      const egressDir = this.#egressDir(sandboxDirName(id));
      await mkdir(egressDir, { recursive: true, mode: 0o755 });
      await this.#confine.proxy.listen(id, join(egressDir, "proxy.sock"), user);
    }
    // Which sandbox a hashed directory belongs to, for whoever looks at the host.
    await writeFile(join(dir, "sandbox.json"), `${JSON.stringify({ id, key })}\n`, {
      flag: "wx",
      mode: 0o600,
    }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== "EEXIST") throw err;
    });
    return { id, key };
  }

  async exec(sandbox: Sandbox, req: ExecRequest): Promise<ExecHandle> {
    if (this.#closed) throw new Error("driver is closed");
    if (req.argv.length === 0 || !req.argv[0]) throw new Error("exec needs a program");
    if (!req.cwd.startsWith("/")) {
      throw new Error(`cwd must be an absolute sandbox path: ${JSON.stringify(req.cwd)}`);
    }
    const dir = this.sandboxDir(sandbox);
    if (!(await isDir(join(dir, "workspace")))) throw new Error(`sandbox ${sandbox.id} does not exist`);
    const hostCwd = toHostPath(dir, req.cwd);
    if (hostCwd && !(await isDir(hostCwd.host))) {
      throw new Error(`cwd ${req.cwd} is not a directory in the sandbox`);
    }

    if (this.#layout) {
      const child = await this.#spawnBwrap(dir, sandboxDirName(sandbox.id), await this.#userOf(sandbox), req);
      return this.#track(sandbox, req, child, true);
    }
    // No namespaces (development only): the session's environment is the host process's,
    // and sandbox paths are rewritten to the host wherever they are a whole argument or
    // env value. Paths inside a script (`sh -c '... /workspace/x'`) are not.
    const map = (v: string) => toHostPath(dir, v)?.host ?? v;
    const [program, ...rest] = req.argv as [string, ...string[]];
    const file =
      program === "kilo" || program === KILO_SANDBOX_PATH ? (this.#opts.kiloBinary ?? program) : map(program);
    const args = rest.map(map);
    const cwd = hostCwd?.host ?? req.cwd;
    const env = Object.fromEntries(Object.entries(req.env).map(([k, v]) => [k, map(v)]));

    // detached: its own process group, so the manager's terminal signals do not reach it
    // and the group can be killed.
    const child = spawn(file, args, { env, cwd, detached: true, stdio: ["pipe", "pipe", "pipe"] });
    await new Promise<void>((resolve, reject) => {
      child.once("spawn", resolve);
      child.once("error", reject);
    });
    return this.#track(sandbox, req, child, false);
  }

  #track(
    sandbox: Sandbox,
    req: ExecRequest,
    child: ChildProcessByStdio<Writable, Readable, Readable>,
    namespaced: boolean,
  ): ExecHandle {
    const handle = new LocalExec(child, req, namespaced, this.#log);
    this.#running.add(handle);
    void handle.result.finally(() => this.#running.delete(handle));
    this.#log?.debug({ sandboxId: sandbox.id, execId: handle.id, program: req.argv[0] }, "exec started");
    return handle;
  }

  /** The host directory of a sandbox's proxy socket (shown read-only at /run/kilo-cloud). */
  #egressDir(dirName: string): string {
    return join(this.#confine!.socketRoot, dirName);
  }

  /** The sandbox's host user when the manager is root; undefined otherwise. */
  async #userOf(sandbox: Pick<Sandbox, "id">): Promise<HostUser | undefined> {
    return this.#confine?.users?.userOf(sandboxDirName(sandbox.id));
  }

  async exists(sandbox: Sandbox, path: string): Promise<boolean> {
    return existsIn(this.sandboxDir(sandbox), path);
  }

  async mkdir(sandbox: Sandbox, path: string): Promise<void> {
    return mkdirIn(this.sandboxDir(sandbox), path, await this.#userOf(sandbox));
  }

  async remove(sandbox: Sandbox, path: string): Promise<void> {
    return removeIn(this.sandboxDir(sandbox), path);
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.#running].map((h) => h.kill()));
    await this.#confine?.proxy?.close();
    await this.#confine?.cgroups?.close();
  }
}

/** One spawned process (bwrap, or the program itself with isolation "none"). */
class LocalExec implements ExecHandle {
  readonly id: string;
  readonly result: Promise<ExecResult>;
  readonly #pid: number;
  readonly #namespaced: boolean;
  #exited = false;
  #killRequested = false;
  #killing: Promise<KillReport> | undefined;

  constructor(
    child: ChildProcessByStdio<Writable, Readable, Readable>,
    req: ExecRequest,
    namespaced: boolean,
    log: Logger | undefined,
  ) {
    this.#pid = child.pid!;
    this.#namespaced = namespaced;
    this.id = `proc_${this.#pid}`;

    // A callback that returns a promise pauses its stream until the promise settles
    // (back-pressure: the output waits in the pipe, and the process blocks on a full one).
    let paused = 0;
    const deliver = (stream: Readable, cb: ExecRequest["onStdout"]) => (chunk: Buffer) => {
      try {
        const wait = cb?.(chunk);
        if (!wait) return;
        paused++;
        stream.pause();
        void wait
          .catch(() => {})
          .finally(() => {
            paused--;
            stream.resume();
          });
      } catch (err) {
        log?.error({ err, execId: this.id }, "output callback threw");
      }
    };
    child.stdout.on("data", deliver(child.stdout, req.onStdout));
    child.stderr.on("data", deliver(child.stderr, req.onStderr));
    // After a successful spawn, errors are about signalling or pipes: the exit still comes.
    child.on("error", (err) => log?.warn({ err, execId: this.id }, "exec process error"));
    // The process may exit without reading its input.
    child.stdin.on("error", () => {});
    if (req.stdin !== undefined) child.stdin.end(req.stdin);
    else child.stdin.end();

    this.result = new Promise<ExecResult>((resolve) => {
      let status: { code: number | null; signal: NodeJS.Signals | null } | undefined;
      let grace: NodeJS.Timeout | undefined;
      const finish = () => {
        if (grace) clearTimeout(grace);
        resolve({ exitCode: status!.code, signal: status!.signal, killed: this.#killRequested });
      };
      child.once("exit", (code, signal) => {
        status = { code, signal };
        this.#exited = true;
        // An exec's processes end with it. With bwrap the pid namespace already did that;
        // without, kill what is left of the process group (setsid escapees survive).
        if (!this.#namespaced) sendKill(-this.#pid);
        // Something that escaped may still hold the pipes open: do not wait for it forever.
        const giveUp = () => {
          // Output held back by the reader is not what this grace is for: wait for it.
          if (paused > 0) {
            grace = setTimeout(giveUp, OUTPUT_GRACE_MS);
            return;
          }
          child.stdout.destroy();
          child.stderr.destroy();
          finish();
        };
        grace = setTimeout(giveUp, OUTPUT_GRACE_MS);
        grace.unref();
      });
      child.once("close", (code, signal) => {
        status ??= { code, signal };
        finish();
      });
    });
  }

  kill(): Promise<KillReport> {
    if (this.#killing) return this.#killing.then(() => EMPTY_REPORT);
    if (this.#exited) return Promise.resolve(EMPTY_REPORT);
    this.#killing = this.#kill();
    return this.#killing;
  }

  async #kill(): Promise<KillReport> {
    this.#killRequested = true;
    // Frozen and collected before anything dies: a stopped process cannot fork, and once a
    // parent is gone its children are reparented and no longer found by walking parents.
    // bwrap: this includes the namespace's init. Its --die-with-parent does not cover the
    // moment it is still setting up (measured: killing bwrap alone early left the sandbox
    // running half the time), so it is killed by name; its death makes the kernel kill
    // every process in the namespace, setsid'd and reparented ones included.
    // Without bwrap: the process group and every descendant found; a process that
    // double-forked into a new session before we looked escapes (weaker, documented).
    const tree = await freezeTree(this.#pid, { group: !this.#namespaced });
    if (tree.length === 0) {
      sendKill(this.#pid);
      return EMPTY_REPORT;
    }
    const failed = new Set<ProcInfo>();
    if (!this.#namespaced) sendKill(-this.#pid);
    for (const p of tree) {
      const now = await readProc(p.pid);
      if (now && now.start === p.start && !sendKill(p.pid)) failed.add(p);
    }
    const alive = await waitGone(tree, KILL_WAIT_MS);
    for (const p of alive) failed.add(p);
    return {
      killed: tree.filter((p) => !failed.has(p)).map((p) => `proc_${p.pid}`),
      failed: [...failed].map((p) => `proc_${p.pid}`),
    };
  }
}

type BwrapChild = ChildProcessByStdio<Writable, Readable, Readable> & { stdio: unknown[] };

const PRLIMIT = "/usr/bin/prlimit";

/** What confines the sandboxes beyond bubblewrap's namespaces. */
interface Confinement {
  limits: SandboxLimits;
  /** Per-sandbox host users (the manager runs as root). */
  users?: SandboxUsers | undefined;
  cgroups?: CgroupLimits | undefined;
  /** The egress proxy (network fenced). */
  proxy?: EgressProxy | undefined;
  /** Where the proxy's sockets are: `<dir>/<sandbox dir name>/proxy.sock`. */
  socketRoot: string;
}

async function confinement(opts: LocalDriverOptions, root: string): Promise<Confinement> {
  const limits = { ...DEFAULT_LIMITS, ...opts.limits };
  const isRoot = process.getuid?.() === 0;
  const users = isRoot ? new SandboxUsers(root, opts.uidRange ?? DEFAULT_UID_RANGE) : undefined;
  if (users) {
    // The sandboxes' users must reach their own directory (and nothing else) below the root.
    await requireSearchableAncestors(root);
    await chmod(root, 0o711);
    await chmod(join(root, "sandboxes"), 0o711);
    await chmod(join(root, "etc"), 0o755);
  }
  const cgroups = await CgroupLimits.detect(limits, sandboxDirName(root).slice(0, 12));
  const socketRoot = await egressSocketRoot(root);
  const proxy =
    (opts.network ?? "fenced") === "fenced"
      ? new EgressProxy({
          policy: opts.egressPolicy ?? egressPolicy(),
          relay: opts.providerRelay,
          logger: opts.logger,
        })
      : undefined;
  if (!proxy) opts.logger?.warn('local driver network is "host": sandboxes reach every port of this host');
  return { limits, users, cgroups, proxy, socketRoot };
}

/**
 * `<root>/egress`, or a fresh directory in the system's temporary directory when the root's
 * path is too long for `<dir>/<32 hex>/proxy.sock` to fit a Unix socket address (107 bytes).
 */
async function egressSocketRoot(root: string): Promise<string> {
  const inRoot = join(root, "egress");
  const dir = inRoot.length + 44 <= 107 ? inRoot : await mkdtemp(join(tmpdir(), "kc-egress-"));
  await mkdir(dir, { recursive: true, mode: 0o711 });
  await chmod(dir, 0o711);
  return dir;
}

/** Every directory above the root must let other users through (x), or no sandbox user reaches its files. */
async function requireSearchableAncestors(root: string): Promise<void> {
  for (let dir = dirname(root); ; dir = dirname(dir)) {
    const st = await stat(dir);
    if ((st.mode & 0o001) === 0) {
      throw new Error(
        `the sandbox root ${root} is below ${dir}, which other users cannot enter: sandboxes run as ` +
          `their own unprivileged users and must reach their directories (chmod o+x ${dir}, or choose another root)`,
      );
    }
    if (dir === "/") return;
  }
}

async function chownAll(paths: string[], user: HostUser): Promise<void> {
  for (const p of paths) await chown(p, user.uid, user.gid);
}

/**
 * Gives a sandbox directory to its host user. A directory made before sandboxes had users
 * of their own (owned by the manager) is handed over whole, once.
 */
async function adoptSandboxDir(dir: string, user: HostUser): Promise<void> {
  const st = await stat(dir);
  if (st.uid === user.uid) return;
  await new Promise<void>((resolve, reject) => {
    execFile(
      "chown",
      ["-R", "-h", `${user.uid}:${user.gid}`, "--", join(dir, "workspace"), join(dir, "home")],
      { env: BWRAP_HOST_ENV },
      (err) => (err ? reject(err) : resolve()),
    );
  });
  await chown(dir, user.uid, user.gid);
}

async function isGone(pid: number): Promise<boolean> {
  const p = await readProc(pid);
  return p === undefined || p.state === "Z" || p.state === "X";
}

async function isDir(path: string): Promise<boolean> {
  const st = await lstat(path).catch(() => undefined);
  return st?.isDirectory() ?? false;
}

async function defaultBwrapPath(): Promise<string> {
  for (const candidate of ["/usr/bin/bwrap", "/usr/local/bin/bwrap", "/bin/bwrap"]) {
    const st = await stat(candidate).catch(() => undefined);
    if (st?.isFile()) return candidate;
  }
  return "bwrap";
}

async function writeAtomically(path: string, content: string): Promise<void> {
  const tmp = `${path}.${randomBytes(6).toString("hex")}.tmp`;
  await writeFile(tmp, content, { mode: 0o644 });
  await rename(tmp, path);
}

/**
 * The kilo binary where every sandbox's own host user can reach it: `<root>/bin/kilo`
 * (0755). bwrap binds it as that user, and the binary's own location (e.g. inside a checkout
 * in a 0700 directory) may not be enterable by others. A hard link when the file system
 * allows, a copy otherwise; kept while it matches the source.
 */
async function stageKiloBinary(root: string, source: string): Promise<string> {
  const dir = join(root, "bin");
  await mkdir(dir, { recursive: true, mode: 0o755 });
  await chmod(dir, 0o755);
  const dest = join(dir, "kilo");
  const [src, staged] = await Promise.all([stat(source), stat(dest).catch(() => undefined)]);
  if (staged && staged.size === src.size && staged.mtimeMs >= src.mtimeMs) return dest;
  const tmp = `${dest}.${process.pid}.tmp`;
  await rm(tmp, { force: true });
  await link(source, tmp).catch(() => copyFile(source, tmp));
  await chmod(tmp, 0o755);
  await rename(tmp, dest);
  return dest;
}
