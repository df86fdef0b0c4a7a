import { PassThrough, Writable } from "node:stream";
import type { Logger } from "@kilo-cloud/common";
import {
  ApiException,
  CoreV1Api,
  Exec,
  type KubeConfig,
  type V1Pod,
  type V1Status,
} from "@kubernetes/client-node";
import {
  type Driver,
  type ExecHandle,
  type ExecRequest,
  type ExecResult,
  isManagedPath,
  type KillReport,
  type Sandbox,
  type SandboxKey,
  sandboxId,
} from "../driver.js";
import {
  encodeExecInput,
  existsArgv,
  exitCodeOf,
  killArgv,
  parseKillOutput,
  parseStartLine,
  WRAPPER_FAILED,
  wrapperArgv,
} from "./exec-protocol.js";
import { idHash, installationLabels, labelSelector, SANDBOX_LABEL, sandboxPodName } from "./names.js";
import { SANDBOX_CONTAINER, type SandboxPodOptions, sandboxPod } from "./pod-spec.js";

export interface KubernetesDriverOptions {
  kubeConfig: KubeConfig;
  pod: SandboxPodOptions;
  /** A pod with no execution for this long is deleted; the next use recreates it (default 15 min). */
  idleTimeoutMs?: number | undefined;
  /** How often idle pods are looked for (default a quarter of idleTimeoutMs, at most 60 s). */
  reapIntervalMs?: number | undefined;
  /** How long a new pod may take to run (image pull included) before ensureSandbox fails. */
  podStartTimeoutMs?: number | undefined;
  /** How long an exec may take to start its command (the wrapper's first line). */
  execStartTimeoutMs?: number | undefined;
  logger?: Logger | undefined;
}

export const DEFAULT_IDLE_TIMEOUT_MS = 15 * 60_000;
const DEFAULT_POD_START_TIMEOUT_MS = 3 * 60_000;
const DEFAULT_EXEC_START_TIMEOUT_MS = 30_000;
const KILL_WAIT_MS = 10_000;
/** Waiting reasons of a container that will not start by itself waiting longer. */
const HOPELESS_WAITING = new Set([
  "ErrImagePull",
  "ImagePullBackOff",
  "InvalidImageName",
  "CreateContainerConfigError",
  "CreateContainerError",
  "RunContainerError",
]);

const EMPTY_REPORT: KillReport = Object.freeze({ killed: [], failed: [] }) as KillReport;

/** The sandbox's pod went away (deleted, evicted, its node lost) while a command ran in it. */
export class SandboxLostError extends Error {
  override name = "SandboxLostError";
}

interface PodEntry {
  name: string;
  uid: string;
  /** ms since epoch of the last use (ensure, exec start or end). */
  lastUsed: number;
  /** Execs (of any kind) running in it now. */
  running: number;
}

function apiCode(err: unknown): number | undefined {
  if (err instanceof ApiException) return err.code;
  return undefined;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function waitingReason(pod: V1Pod): { reason: string; message?: string | undefined } | undefined {
  const st = pod.status?.containerStatuses?.find((c) => c.name === SANDBOX_CONTAINER);
  const waiting = st?.state?.waiting;
  return waiting?.reason ? { reason: waiting.reason, message: waiting.message } : undefined;
}

function isReady(pod: V1Pod): boolean {
  if (pod.status?.phase !== "Running") return false;
  const st = pod.status.containerStatuses?.find((c) => c.name === SANDBOX_CONTAINER);
  return !!st?.ready || !!st?.state?.running;
}

/**
 * Runs each sandbox as one pod (see pod-spec.ts) and every command through the exec API
 * (see exec-protocol.ts for what runs in the pod and why). Pods are found by the labels
 * of their sandbox, so a restarted manager finds the pods its predecessor made; a pod that
 * has not run anything for `idleTimeoutMs` is deleted, and the next use makes a new one,
 * whose empty workspace makes the next execution a cold start (clone and setup again).
 *
 * Idle time is tracked in this process: a pod found at start-up counts as used at that
 * moment. That is right for one manager per namespace (the chart runs one: interrupts
 * must reach the manager running the execution anyway).
 */
export class KubernetesDriver implements Driver {
  readonly name = "kubernetes";
  readonly #core: CoreV1Api;
  readonly #exec: Exec;
  readonly #pod: SandboxPodOptions;
  readonly #ns: string;
  readonly #log: Logger | undefined;
  readonly #idleMs: number;
  readonly #startTimeoutMs: number;
  readonly #execStartTimeoutMs: number;
  readonly #pods = new Map<string, PodEntry>();
  readonly #ensuring = new Map<string, Promise<PodEntry>>();
  readonly #running = new Set<KubernetesExec>();
  #reaper: NodeJS.Timeout | undefined;
  #reaping: Promise<string[]> | undefined;
  #closed = false;

  private constructor(opts: KubernetesDriverOptions) {
    this.#core = opts.kubeConfig.makeApiClient(CoreV1Api);
    this.#exec = new Exec(opts.kubeConfig);
    this.#pod = opts.pod;
    this.#ns = opts.pod.namespace;
    this.#log = opts.logger;
    this.#idleMs = opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    this.#startTimeoutMs = opts.podStartTimeoutMs ?? DEFAULT_POD_START_TIMEOUT_MS;
    this.#execStartTimeoutMs = opts.execStartTimeoutMs ?? DEFAULT_EXEC_START_TIMEOUT_MS;
  }

  /** Connects, adopts the sandbox pods that already exist, and starts the idle reaper. */
  static async create(opts: KubernetesDriverOptions): Promise<KubernetesDriver> {
    const d = new KubernetesDriver(opts);
    try {
      await d.#adopt();
    } catch (err) {
      throw new Error(
        `kubernetes driver: cannot list pods in namespace ${d.#ns} (${errorText(err)}); ` +
          "check the cluster address and that the service account may list pods there",
      );
    }
    const interval = opts.reapIntervalMs ?? Math.min(60_000, Math.max(1_000, d.#idleMs / 4));
    d.#reaper = setInterval(() => void d.reapIdle().catch(() => {}), interval);
    d.#reaper.unref();
    opts.logger?.info(
      { namespace: d.#ns, adopted: d.#pods.size, idleTimeoutMs: d.#idleMs },
      "kubernetes driver ready",
    );
    return d;
  }

  /** The pod name of a sandbox (for operators and tests). */
  podName(key: SandboxKey): string {
    return sandboxPodName(key, this.#pod.hashKey);
  }

  async ensureSandbox(key: SandboxKey): Promise<Sandbox> {
    if (this.#closed) throw new Error("driver is closed");
    if (!key.userId) throw new Error("a sandbox needs a userId");
    await this.#ensurePod(key, true);
    return { id: sandboxId(key), key };
  }

  async exec(sandbox: Sandbox, req: ExecRequest): Promise<ExecHandle> {
    if (this.#closed) throw new Error("driver is closed");
    if (req.argv.length === 0 || !req.argv[0]) throw new Error("exec needs a program");
    if (!req.cwd.startsWith("/")) {
      throw new Error(`cwd must be an absolute sandbox path: ${JSON.stringify(req.cwd)}`);
    }
    const input = encodeExecInput(req.env, req.stdin);
    const entry = await this.#ensurePod(sandbox.key, false);
    const handle = new KubernetesExec(this, entry, req, input);
    this.#running.add(handle);
    void handle.result.then(
      () => this.#running.delete(handle),
      () => this.#running.delete(handle),
    );
    await handle.started;
    return handle;
  }

  async exists(sandbox: Sandbox, path: string): Promise<boolean> {
    managedOrThrow(path);
    const r = await this.run(await this.#ensurePod(sandbox.key, false), existsArgv(path));
    if (r.exitCode === 0) return true;
    if (r.exitCode === 1) return false;
    throw new Error(`could not check ${path}: ${r.stderr.trim() || `exit code ${r.exitCode}`}`);
  }

  async mkdir(sandbox: Sandbox, path: string): Promise<void> {
    managedOrThrow(path);
    const r = await this.run(await this.#ensurePod(sandbox.key, false), ["mkdir", "-p", "--", path]);
    if (r.exitCode !== 0) throw new Error(`could not create ${path}: ${r.stderr.trim()}`);
  }

  async remove(sandbox: Sandbox, path: string): Promise<void> {
    managedOrThrow(path);
    const r = await this.run(await this.#ensurePod(sandbox.key, false), ["rm", "-rf", "--", path]);
    if (r.exitCode !== 0) throw new Error(`could not remove ${path}: ${r.stderr.trim()}`);
  }

  /** Stops the reaper and kills every running exec; pods stay (a new manager adopts them). */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#reaper) clearInterval(this.#reaper);
    await Promise.all([...this.#running].map((h) => h.kill().catch(() => EMPTY_REPORT)));
    await this.#reaping?.catch(() => {});
  }

  /**
   * Deletes the pods idle for longer than the idle timeout; returns their names. Runs on a
   * timer; public so an operator's tool or a test can run it now.
   */
  reapIdle(): Promise<string[]> {
    this.#reaping ??= this.#reapIdle().finally(() => {
      this.#reaping = undefined;
    });
    return this.#reaping;
  }

  async #reapIdle(): Promise<string[]> {
    // Pods this process has not seen (made by a predecessor, or by a manager that lost
    // track of them) start their idle time now.
    await this.#adopt().catch((err: unknown) =>
      this.#log?.warn({ err: errorText(err) }, "could not list sandbox pods"),
    );
    const now = Date.now();
    const reaped: string[] = [];
    for (const entry of [...this.#pods.values()]) {
      if (entry.running > 0 || this.#ensuring.has(entry.name) || now - entry.lastUsed < this.#idleMs)
        continue;
      // Forgotten first: a use that starts now makes (after this deletion) a new pod.
      this.#pods.delete(entry.name);
      try {
        await this.#core.deleteNamespacedPod({
          name: entry.name,
          namespace: this.#ns,
          body: { preconditions: { uid: entry.uid } },
        });
        reaped.push(entry.name);
        this.#log?.info(
          { pod: entry.name, idleMs: now - entry.lastUsed },
          "deleted an idle sandbox pod; its next use is a cold start",
        );
      } catch (err) {
        // 404: already gone; 409: a different pod of that name now (not ours to judge).
        if (apiCode(err) !== 404 && apiCode(err) !== 409) {
          this.#log?.warn({ pod: entry.name, err: errorText(err) }, "could not delete an idle sandbox pod");
        }
      }
    }
    return reaped;
  }

  /** Lists this installation's sandbox pods and remembers those not known yet. */
  async #adopt(): Promise<void> {
    const list = await this.#core.listNamespacedPod({
      namespace: this.#ns,
      labelSelector: labelSelector(installationLabels(this.#pod.instance)),
    });
    const now = Date.now();
    const live = new Set<string>();
    for (const pod of list.items) {
      const name = pod.metadata?.name;
      const uid = pod.metadata?.uid;
      if (!name || !uid || pod.metadata?.deletionTimestamp) continue;
      live.add(name);
      const known = this.#pods.get(name);
      if (!known || known.uid !== uid) this.#pods.set(name, { name, uid, lastUsed: now, running: 0 });
    }
    for (const [name, entry] of this.#pods) {
      if (!live.has(name) && entry.running === 0 && !this.#ensuring.has(name)) this.#pods.delete(name);
    }
  }

  /**
   * The running pod of a sandbox, made if missing. `verify` asks the API even when the pod
   * is known (ensureSandbox does, once per execution); execs trust what is known and find
   * out about a vanished pod when their connection fails.
   */
  async #ensurePod(key: SandboxKey, verify: boolean): Promise<PodEntry> {
    const name = this.podName(key);
    const known = this.#pods.get(name);
    if (known && !verify) {
      known.lastUsed = Date.now();
      return known;
    }
    let pending = this.#ensuring.get(name);
    if (!pending) {
      pending = this.#findOrCreate(key, name).finally(() => this.#ensuring.delete(name));
      this.#ensuring.set(name, pending);
    }
    const entry = await pending;
    entry.lastUsed = Date.now();
    return entry;
  }

  async #findOrCreate(key: SandboxKey, name: string): Promise<PodEntry> {
    const deadline = Date.now() + this.#startTimeoutMs;
    const selector = labelSelector({
      ...installationLabels(this.#pod.instance),
      [SANDBOX_LABEL]: idHash("sandbox", sandboxId(key), this.#pod.hashKey),
    });
    let delay = 50;
    const pause = async (what: string) => {
      if (Date.now() > deadline) {
        throw new Error(
          `sandbox pod ${name} ${what} after ${Math.round(this.#startTimeoutMs / 1000)} s in namespace ${this.#ns}`,
        );
      }
      await sleep(delay);
      delay = Math.min(1_000, Math.round(delay * 1.5));
    };
    let created = false;
    for (;;) {
      if (this.#closed) throw new Error("driver is closed");
      const found = (await this.#core.listNamespacedPod({ namespace: this.#ns, labelSelector: selector }))
        .items;
      let pod = found.find((p) => p.metadata?.name === name) ?? found[0];
      if (!pod) {
        try {
          pod = await this.#core.createNamespacedPod({
            namespace: this.#ns,
            body: sandboxPod(key, this.#pod),
          });
          created = true;
          this.#log?.info({ pod: name }, "created a sandbox pod");
        } catch (err) {
          if (apiCode(err) === 409) continue; // made meanwhile, by us or another manager
          throw new Error(`could not create sandbox pod ${name}: ${errorText(err)}`);
        }
      }
      const podName = pod.metadata?.name ?? name;
      const uid = pod.metadata?.uid ?? "";
      if (pod.metadata?.deletionTimestamp) {
        await pause("was still being deleted");
        continue;
      }
      const phase = pod.status?.phase;
      const hopeless = waitingReason(pod);
      if (
        phase === "Failed" ||
        phase === "Succeeded" ||
        (hopeless && HOPELESS_WAITING.has(hopeless.reason))
      ) {
        // A dead sandbox (evicted, its PID 1 gone) or one that cannot start: replace it.
        await this.#deletePod(podName, uid);
        if (hopeless && HOPELESS_WAITING.has(hopeless.reason) && created) {
          throw new Error(
            `sandbox pod ${podName} cannot start: ${hopeless.reason}${hopeless.message ? ` (${hopeless.message})` : ""}`,
          );
        }
        continue;
      }
      if (isReady(pod)) return this.#remember(podName, uid);
      await pause("did not start");
      try {
        const again = await this.#core.readNamespacedPod({ name: podName, namespace: this.#ns });
        if (isReady(again) && !again.metadata?.deletionTimestamp && again.metadata?.uid === uid) {
          return this.#remember(podName, uid);
        }
      } catch (err) {
        if (apiCode(err) !== 404) throw err;
      }
    }
  }

  #remember(name: string, uid: string): PodEntry {
    const known = this.#pods.get(name);
    if (known && known.uid === uid) return known;
    const entry: PodEntry = { name, uid, lastUsed: Date.now(), running: known?.running ?? 0 };
    this.#pods.set(name, entry);
    return entry;
  }

  async #deletePod(name: string, uid: string): Promise<void> {
    this.#pods.delete(name);
    try {
      await this.#core.deleteNamespacedPod({
        name,
        namespace: this.#ns,
        body: uid ? { preconditions: { uid } } : {},
      });
    } catch (err) {
      if (apiCode(err) !== 404 && apiCode(err) !== 409) throw err;
    }
  }

  /** Whether the pod an exec ran in is still there, unchanged and not being deleted. */
  async podIntact(entry: PodEntry): Promise<boolean> {
    try {
      const pod = await this.#core.readNamespacedPod({ name: entry.name, namespace: this.#ns });
      const intact =
        pod.metadata?.uid === entry.uid &&
        !pod.metadata?.deletionTimestamp &&
        pod.status?.phase === "Running";
      if (!intact) this.#forget(entry);
      return intact;
    } catch (err) {
      if (apiCode(err) === 404) {
        this.#forget(entry);
        return false;
      }
      throw err;
    }
  }

  #forget(entry: PodEntry): void {
    if (this.#pods.get(entry.name) === entry) this.#pods.delete(entry.name);
  }

  /**
   * Opens an exec of `argv` (no wrapper) in the pod. Output goes to the callbacks; the
   * promise gives the socket once open; `onEnd` is called once with the exit status, or
   * with an error when the exec failed or the connection ended without a status.
   */
  async openExec(
    entry: PodEntry,
    argv: string[],
    io: {
      stdin?: PassThrough | undefined;
      onStdout: (chunk: Buffer) => void | Promise<void>;
      onStderr: (chunk: Buffer) => void | Promise<void>;
      onEnd: (outcome: { exitCode: number } | { error: string; lost: boolean }) => void;
    },
  ): Promise<{ protocol: string; close(): void }> {
    let ended = false;
    const end = (outcome: { exitCode: number } | { error: string; lost: boolean }) => {
      if (ended) return;
      ended = true;
      entry.running--;
      entry.lastUsed = Date.now();
      io.onEnd(outcome);
    };
    // A callback's promise holds the next write back (back-pressure up the websocket).
    const sink = (cb: (chunk: Buffer) => void | Promise<void>) =>
      new Writable({
        write(chunk: Buffer, _enc, done) {
          const wait = cb(chunk);
          if (wait)
            wait.then(
              () => done(),
              () => done(),
            );
          else done();
        },
      });
    entry.running++;
    entry.lastUsed = Date.now();
    let ws: Awaited<ReturnType<Exec["exec"]>>;
    try {
      ws = await this.#exec.exec(
        this.#ns,
        entry.name,
        SANDBOX_CONTAINER,
        argv,
        sink(io.onStdout),
        sink(io.onStderr),
        io.stdin ?? null,
        false,
        (status: V1Status) => {
          const r = exitCodeOf(status);
          end("exitCode" in r ? r : { error: r.error, lost: false });
        },
      );
    } catch (err) {
      entry.running--;
      const text = errorText(err);
      // The handshake is refused with 404 when the pod is gone, 400 when it is not running.
      if (/\b(404|400)\b/.test(text)) this.#forget(entry);
      throw new SandboxLostError(`could not exec in sandbox pod ${entry.name}: ${text}`);
    }
    if (ws.protocol !== "v5.channel.k8s.io" && ws.protocol !== "v4.channel.k8s.io") {
      ws.close();
      end({ error: `the API server offered exec subprotocol ${JSON.stringify(ws.protocol)}`, lost: false });
      return { protocol: ws.protocol, close: () => {} };
    }
    ws.on("close", (code: number) => {
      end({ error: `the exec connection closed without an exit status (code ${code})`, lost: true });
    });
    ws.on("error", () => {});
    return { protocol: ws.protocol, close: () => ws.close() };
  }

  /** Runs `argv` (no wrapper, no stdin) to its end and collects its output. */
  async run(entry: PodEntry, argv: string[]): Promise<{ exitCode: number; stdout: string; stderr: string }> {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    return new Promise((resolve, reject) => {
      this.openExec(entry, argv, {
        onStdout: (c) => void out.push(c),
        onStderr: (c) => void err.push(c),
        onEnd: (o) => {
          if ("exitCode" in o) {
            resolve({
              exitCode: o.exitCode,
              stdout: Buffer.concat(out).toString("utf8"),
              stderr: Buffer.concat(err).toString("utf8"),
            });
          } else {
            if (o.lost) this.#forget(entry);
            reject(new SandboxLostError(`exec in sandbox pod ${entry.name} failed: ${o.error}`));
          }
        },
      }).catch(reject);
    });
  }

  get execStartTimeoutMs(): number {
    return this.#execStartTimeoutMs;
  }

  get logger(): Logger | undefined {
    return this.#log;
  }
}

function managedOrThrow(path: string): void {
  if (!isManagedPath(path)) {
    throw new Error(
      `not a path the driver manages (only below /workspace or /home): ${JSON.stringify(path)}`,
    );
  }
}

function errorText(err: unknown): string {
  if (err instanceof ApiException) {
    // A real API server's Status arrives as JSON text in client-node 1.4, not as an object.
    let body = err.body as { message?: string } | string | undefined;
    if (typeof body === "string") {
      try {
        body = JSON.parse(body) as { message?: string };
      } catch {
        // not a Status
      }
    }
    return typeof body === "object" && body?.message ? body.message : `HTTP ${err.code}`;
  }
  if (err instanceof Error) return err.message;
  if (err && typeof err === "object" && "message" in err)
    return String((err as { message: unknown }).message);
  return String(err);
}

/** One command run through the wrapper, from the moment its exec is opened. */
class KubernetesExec implements ExecHandle {
  id = "proc_0";
  readonly result: Promise<ExecResult>;
  /** Resolves once the command runs (its pid is known); rejects if it never did. */
  readonly started: Promise<void>;
  readonly #driver: KubernetesDriver;
  readonly #entry: PodEntry;
  #pid = 0;
  #start = "";
  #ended = false;
  #killRequested = false;
  #killing: Promise<KillReport> | undefined;

  constructor(driver: KubernetesDriver, entry: PodEntry, req: ExecRequest, input: Buffer) {
    this.#driver = driver;
    this.#entry = entry;
    const log = driver.logger;
    const deliver = (cb: ExecRequest["onStdout"], chunk: Buffer): void | Promise<void> => {
      if (chunk.length === 0) return;
      try {
        return cb?.(chunk);
      } catch (err) {
        log?.error({ err, execId: this.id }, "output callback threw");
      }
    };

    let resolveStarted!: () => void;
    let rejectStarted!: (err: Error) => void;
    this.started = new Promise<void>((res, rej) => {
      resolveStarted = res;
      rejectStarted = rej;
    });
    // Settled by the first of: the start line, the end, the start timeout.
    let isStarted = false;
    let head = Buffer.alloc(0);
    let stderrHead = "";
    let conn: { close(): void } | undefined;
    const timer = setTimeout(() => {
      if (isStarted) return;
      rejectStarted(new Error(`the command did not start within ${driver.execStartTimeoutMs} ms`));
      conn?.close();
    }, driver.execStartTimeoutMs);
    timer.unref();

    this.result = new Promise<ExecResult>((resolve, reject) => {
      const onStdout = (chunk: Buffer) => {
        if (isStarted) return deliver(req.onStdout, chunk);
        head = Buffer.concat([head, chunk]);
        const nl = head.indexOf(10);
        if (nl < 0) return;
        const start = parseStartLine(head.subarray(0, nl).toString("utf8"));
        if (!start) {
          rejectStarted(new Error("the exec wrapper did not start as expected"));
          conn?.close();
          return;
        }
        isStarted = true;
        clearTimeout(timer);
        this.#pid = start.pid;
        this.#start = start.start;
        this.id = `proc_${start.pid}`;
        resolveStarted();
        return deliver(req.onStdout, head.subarray(nl + 1));
      };
      const onStderr = (chunk: Buffer) => {
        if (!isStarted && stderrHead.length < 4096) stderrHead += chunk.toString("utf8");
        else return deliver(req.onStderr, chunk);
      };
      const onEnd = (outcome: { exitCode: number } | { error: string; lost: boolean }) => {
        this.#ended = true;
        clearTimeout(timer);
        if (!isStarted) {
          const why =
            "exitCode" in outcome
              ? outcome.exitCode === WRAPPER_FAILED && stderrHead.startsWith("kc-exec: ")
                ? stderrHead.slice("kc-exec: ".length).trim()
                : `the command could not start (exit code ${outcome.exitCode}): ${stderrHead.trim()}`
              : outcome.error;
          const err = new Error(why);
          rejectStarted(err);
          reject(err);
          return;
        }
        void this.#finish(outcome).then(resolve, reject);
      };
      const stdin = new PassThrough();
      driver
        .openExec(entry, wrapperArgv(req.cwd, req.argv), { stdin, onStdout, onStderr, onEnd })
        .then((c) => {
          conn = c;
          stdin.write(input);
          // v5 can close stdin alone; with v4 that would close the exec, and the wrapper
          // knows where the input ends anyway.
          if (c.protocol === "v5.channel.k8s.io") stdin.end();
        })
        .catch((err: Error) => {
          this.#ended = true;
          clearTimeout(timer);
          rejectStarted(err);
          reject(err);
        });
    });
    // Callers that never get the handle (exec() rejected) must not see an unhandled rejection.
    this.result.catch(() => {});
  }

  async #finish(outcome: { exitCode: number } | { error: string; lost: boolean }): Promise<ExecResult> {
    const killed = this.#killRequested;
    if ("exitCode" in outcome) {
      // A command ended by a signal exits 128+n as far as the runtime is concerned; when
      // that may be the pod's end rather than ours, find out which.
      if (
        !killed &&
        outcome.exitCode > 128 &&
        !(await this.#driver.podIntact(this.#entry).catch(() => true))
      ) {
        throw new SandboxLostError(
          `the sandbox pod ${this.#entry.name} went away while the command ran (exit code ${outcome.exitCode})`,
        );
      }
      if (killed && outcome.exitCode === 128 + 9) return { exitCode: null, signal: "SIGKILL", killed };
      return { exitCode: outcome.exitCode, signal: null, killed };
    }
    if (outcome.lost && !(await this.#driver.podIntact(this.#entry).catch(() => true))) {
      throw new SandboxLostError(`the sandbox pod ${this.#entry.name} went away while the command ran`);
    }
    if (killed && outcome.lost) return { exitCode: null, signal: "SIGKILL", killed };
    throw new SandboxLostError(
      `the command in sandbox pod ${this.#entry.name} was cut off: ${outcome.error}`,
    );
  }

  kill(): Promise<KillReport> {
    if (this.#killing) return this.#killing.then(() => EMPTY_REPORT);
    if (this.#ended) return Promise.resolve(EMPTY_REPORT);
    this.#killRequested = true;
    this.#killing = this.#kill();
    return this.#killing;
  }

  async #kill(): Promise<KillReport> {
    await this.started.catch(() => {});
    if (this.#pid === 0) return EMPTY_REPORT;
    const ended = () =>
      Promise.race([
        this.result.then(
          () => true,
          () => true,
        ),
        sleep(KILL_WAIT_MS).then(() => false),
      ]);
    try {
      const r = await this.#driver.run(this.#entry, killArgv(this.#pid, this.#start));
      return parseKillOutput(r.stdout);
    } catch (err) {
      // The pod may be gone, and the command with it.
      this.#driver.logger?.warn({ execId: this.id, err: errorText(err) }, "kill exec failed");
      return (await ended()) ? { killed: [this.id], failed: [] } : { killed: [], failed: [this.id] };
    }
  }
}
