import { type ChildProcessByStdio, execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { lstat, mkdir, realpath, rename, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Readable, Writable } from "node:stream";
import type { Logger } from "@kilo-cloud/common";
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
  bwrapArgs,
  type HostLayout,
  KILO_SANDBOX_PATH,
  readHostLayout,
  SANDBOX_GID,
  SANDBOX_UID,
} from "./bwrap-args.js";
import { freezeTree, type ProcInfo, readProc, sendKill, waitGone } from "./proc-tree.js";
import { existsIn, mkdirIn, removeIn, sandboxDirName, toHostPath } from "./sandbox-paths.js";

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
  #closed = false;

  private constructor(opts: LocalDriverOptions, root: string, bwrap: string, layout: HostLayout | undefined) {
    this.#opts = opts;
    this.#root = root;
    this.#bwrap = bwrap;
    this.#layout = layout;
    this.#log = opts.logger;
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
      kiloBinary: opts.kiloBinary,
      extraReadOnlyBinds: opts.extraReadOnlyBinds,
    });

    const probeDir = join(root, "probe");
    await mkdir(join(probeDir, "workspace"), { recursive: true, mode: 0o700 });
    await mkdir(join(probeDir, "home"), { recursive: true, mode: 0o700 });
    const args = bwrapArgs(layout, { sandboxDir: probeDir, cwd: "/workspace", argv: ["true"] });
    const failure = await new Promise<string | undefined>((resolve) => {
      execFile(bwrap, args, { env: { PATH: "/usr/bin:/bin" }, timeout: 15_000 }, (err, _stdout, stderr) => {
        resolve(err ? stderr.trim() || err.message : undefined);
      });
    });
    if (failure !== undefined) {
      throw new Error(
        `LocalDriver isolation is "bwrap" but bubblewrap cannot run a sandbox with ${bwrap}: ${failure}. ` +
          'Install bubblewrap (e.g. "apt-get install bubblewrap"), allow unprivileged user namespaces, ' +
          'or set isolation to "none" (no isolation at all: development only).',
      );
    }
    opts.logger?.info({ bwrap, rootDir: root }, "local driver ready (bubblewrap isolation)");
    return new LocalDriver(opts, root, bwrap, layout);
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

    let file: string;
    let args: string[];
    let cwd: string | undefined;
    let env = req.env;
    if (this.#layout) {
      file = this.#bwrap;
      args = bwrapArgs(this.#layout, { sandboxDir: dir, cwd: req.cwd, argv: req.argv });
    } else {
      // No namespaces: sandbox paths are rewritten to the host wherever they are a whole
      // argument or env value. Paths inside a script (`sh -c '... /workspace/x'`) are not.
      const map = (v: string) => toHostPath(dir, v)?.host ?? v;
      const [program, ...rest] = req.argv as [string, ...string[]];
      file =
        program === "kilo" || program === KILO_SANDBOX_PATH
          ? (this.#opts.kiloBinary ?? program)
          : map(program);
      args = rest.map(map);
      cwd = hostCwd?.host ?? req.cwd;
      env = Object.fromEntries(Object.entries(req.env).map(([k, v]) => [k, map(v)]));
    }

    // The environment goes to the child as its environment, never on argv (visible in ps).
    // spawn's env replaces the manager's environment entirely. detached: its own process
    // group, so the manager's terminal signals do not reach it and the group can be killed.
    const child = spawn(file, args, { env, cwd, detached: true, stdio: ["pipe", "pipe", "pipe"] });
    await new Promise<void>((resolve, reject) => {
      child.once("spawn", resolve);
      child.once("error", reject);
    });
    const handle = new LocalExec(child, req, this.#layout !== undefined, this.#log);
    this.#running.add(handle);
    void handle.result.finally(() => this.#running.delete(handle));
    this.#log?.debug({ sandboxId: sandbox.id, execId: handle.id, program: req.argv[0] }, "exec started");
    return handle;
  }

  async exists(sandbox: Sandbox, path: string): Promise<boolean> {
    return existsIn(this.sandboxDir(sandbox), path);
  }

  async mkdir(sandbox: Sandbox, path: string): Promise<void> {
    return mkdirIn(this.sandboxDir(sandbox), path);
  }

  async remove(sandbox: Sandbox, path: string): Promise<void> {
    return removeIn(this.sandboxDir(sandbox), path);
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.#running].map((h) => h.kill()));
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
