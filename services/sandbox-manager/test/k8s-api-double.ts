import { type ChildProcessByStdio, spawn } from "node:child_process";
import { randomBytes, randomUUID, timingSafeEqual } from "node:crypto";
import { existsSync, lstatSync, readlinkSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable, Writable } from "node:stream";
import { KubeConfig, type V1Container, type V1Pod } from "@kubernetes/client-node";
import { type WebSocket, WebSocketServer } from "ws";
import { freezeTree, sendKill, waitGone } from "../src/drivers/local/proc-tree.js";

/**
 * A Kubernetes API server double on loopback, in the spirit of how
 * kubernetes-client/javascript tests itself against a local server: the real REST paths
 * and JSON of the pods API (create, get, list by labelSelector, delete with a uid
 * precondition), bearer-token authentication, the `restricted` Pod Security admission,
 * and the exec endpoint speaking the WebSocket channel protocol (`v5.channel.k8s.io`, or
 * `v4.channel.k8s.io` when the test says the server is older).
 *
 * A pod is a directory holding its volumes; an exec really runs the command on this
 * machine in a bubblewrap sandbox laid out like the pod's container: the system read-only,
 * the pod's /workspace, /home and /tmp writable, the pod's uid, a new session per exec (as
 * runc gives), and the container runtime's environment. There is no pid namespace, so the
 * pod's processes are this machine's processes (which lets tests look for survivors).
 * Deleting a pod kills what runs in it and removes its volumes, like the kubelet.
 */

export interface K8sApiDoubleOptions {
  /** Exec subprotocols the server accepts, in its order of preference. */
  protocols?: string[];
  /** How long a new pod stays Pending. */
  podStartDelayMs?: number;
  /** How long a deleted pod stays Terminating. */
  podDeleteDelayMs?: number;
  /**
   * What an exec sees when its pod is deleted: `status` (the command dies with 137 and the
   * status says so, then the socket closes) or `drop` (the socket just closes).
   */
  onPodDelete?: "status" | "drop";
  /** Extra read-only binds, as if baked into the image (e.g. a kilo binary at /usr/local/bin/kilo). */
  imageBinds?: { host: string; sandbox: string }[];
  /** Image directories replaced by an empty tmpfs first (so binds can add files there). */
  imageTmpfs?: string[];
  /** A container waiting reason to give every new pod instead of running it (e.g. ImagePullBackOff). */
  failPodsWith?: string;
}

export interface RecordedRequest {
  method: string;
  path: string;
  /** The whole URL (path and query), as an audit log would record it. */
  url: string;
  headers: IncomingMessage["headers"];
}

interface PodState {
  pod: V1Pod;
  dir: string;
  execs: Set<RunningExec>;
  deleting: boolean;
}

interface RunningExec {
  child: ChildProcessByStdio<Writable, Readable, Readable>;
  ws: WebSocket;
  dropped: boolean;
}

export const RUNTIME_ENV = {
  PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  HOME: "/",
  KUBERNETES_SERVICE_HOST: "10.96.0.1",
  KUBERNETES_SERVICE_PORT: "443",
} as const;

const SYSTEM_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

function status(code: number, reason: string, message: string) {
  return { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message, reason, code };
}

/** Equality-based selectors (`a=b`, `a==b`, `a!=b`, `a`, `!a`), as the API server takes them. */
export function matchesSelector(labels: Record<string, string>, selector: string | null): boolean {
  if (!selector) return true;
  return selector.split(",").every((term) => {
    const t = term.trim();
    if (t === "") return true;
    let m = /^([^!=]+)!=(.*)$/.exec(t);
    if (m) return labels[m[1]!.trim()] !== m[2]!.trim();
    m = /^([^!=]+)==?(.*)$/.exec(t);
    if (m) return labels[m[1]!.trim()] === m[2]!.trim();
    if (t.startsWith("!")) return !(t.slice(1) in labels);
    return t in labels;
  });
}

/** What Pod Security admission at level `restricted` refuses, for the fields a driver sets. */
export function restrictedViolations(pod: V1Pod): string[] {
  const spec = pod.spec;
  if (!spec) return ["spec is missing"];
  const problems: string[] = [];
  const podSc = spec.securityContext ?? {};
  if (spec.hostNetwork || spec.hostPID || spec.hostIPC) problems.push("host namespaces");
  for (const v of spec.volumes ?? []) {
    const allowed = [
      "emptyDir",
      "ephemeral",
      "persistentVolumeClaim",
      "configMap",
      "secret",
      "projected",
      "downwardAPI",
      "csi",
    ];
    const kinds = Object.keys(v).filter((k) => k !== "name");
    if (!kinds.every((k) => allowed.includes(k))) problems.push(`restricted volume types (${v.name})`);
  }
  const all: V1Container[] = [...(spec.initContainers ?? []), ...spec.containers];
  for (const c of all) {
    const sc = c.securityContext ?? {};
    if (sc.privileged) problems.push(`privileged (${c.name})`);
    if (sc.allowPrivilegeEscalation !== false) problems.push(`allowPrivilegeEscalation != false (${c.name})`);
    if (!sc.capabilities?.drop?.includes("ALL")) problems.push(`unrestricted capabilities (${c.name})`);
    if ((sc.capabilities?.add ?? []).some((cap) => cap !== "NET_BIND_SERVICE")) {
      problems.push(`added capabilities (${c.name})`);
    }
    if ((sc.runAsNonRoot ?? podSc.runAsNonRoot) !== true) problems.push(`runAsNonRoot != true (${c.name})`);
    if ((sc.runAsUser ?? podSc.runAsUser) === 0) problems.push(`runAsUser=0 (${c.name})`);
    const seccomp = sc.seccompProfile?.type ?? podSc.seccompProfile?.type;
    if (seccomp !== "RuntimeDefault" && seccomp !== "Localhost") problems.push(`seccompProfile (${c.name})`);
    if ((c.ports ?? []).some((p) => p.hostPort)) problems.push(`hostPort (${c.name})`);
  }
  return problems;
}

export class K8sApiDouble {
  readonly token = `double-${randomBytes(12).toString("hex")}`;
  readonly requests: RecordedRequest[] = [];
  readonly #pods = new Map<string, PodState>();
  readonly #opts: Required<Omit<K8sApiDoubleOptions, "failPodsWith">> & { failPodsWith?: string | undefined };
  #server!: Server;
  #wss!: WebSocketServer;
  #root!: string;
  #rv = 1;
  url = "";

  private constructor(opts: K8sApiDoubleOptions) {
    this.#opts = {
      protocols: opts.protocols ?? ["v5.channel.k8s.io", "v4.channel.k8s.io"],
      podStartDelayMs: opts.podStartDelayMs ?? 30,
      podDeleteDelayMs: opts.podDeleteDelayMs ?? 30,
      onPodDelete: opts.onPodDelete ?? "status",
      imageBinds: opts.imageBinds ?? [],
      imageTmpfs: opts.imageTmpfs ?? [],
      failPodsWith: opts.failPodsWith,
    };
  }

  static async start(opts: K8sApiDoubleOptions = {}): Promise<K8sApiDouble> {
    const d = new K8sApiDouble(opts);
    d.#root = await mkdtemp(join(tmpdir(), "k8s-double-"));
    d.#server = createServer((req, res) => void d.#handle(req, res));
    d.#wss = new WebSocketServer({
      noServer: true,
      handleProtocols: (offered) => d.#opts.protocols.find((p) => offered.has(p)) ?? false,
    });
    d.#server.on("upgrade", (req, socket, head) => {
      d.#record(req);
      const fail = (code: number, text: string) => {
        socket.end(`HTTP/1.1 ${code} ${text}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
      };
      if (!d.#authorized(req)) return fail(401, "Unauthorized");
      const url = new URL(req.url ?? "/", "http://double");
      const m = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/exec$/.exec(url.pathname);
      if (!m) return fail(404, "Not Found");
      const state = d.#pods.get(`${m[1]}/${m[2]}`);
      if (!state) return fail(404, "Not Found");
      if (state.pod.status?.phase !== "Running" || state.deleting) return fail(400, "Bad Request");
      d.#wss.handleUpgrade(req, socket, head, (ws) => d.#exec(state, url, ws));
    });
    await new Promise<void>((resolve) => d.#server.listen(0, "127.0.0.1", resolve));
    d.url = `http://127.0.0.1:${(d.#server.address() as AddressInfo).port}`;
    return d;
  }

  /** A kubeconfig for this server, as a client outside the cluster would have. */
  kubeConfig(token = this.token): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromOptions({
      // Plain HTTP on loopback: client-node only allows it with skipTLSVerify.
      clusters: [{ name: "double", server: this.url, skipTLSVerify: true }],
      users: [{ name: "tester", token }],
      contexts: [{ name: "double", cluster: "double", user: "tester" }],
      currentContext: "double",
    });
    return kc;
  }

  pods(namespace?: string): V1Pod[] {
    return [...this.#pods.values()]
      .filter((s) => namespace === undefined || s.pod.metadata?.namespace === namespace)
      .map((s) => structuredClone(s.pod));
  }

  /** The host directory of a pod's volume (`workspace`, `home` or `tmp`). */
  volumeDir(namespace: string, name: string, volume: "workspace" | "home" | "tmp"): string | undefined {
    const s = this.#pods.get(`${namespace}/${name}`);
    return s ? join(s.dir, volume) : undefined;
  }

  /** Deletes a pod as `kubectl delete pod` or an eviction would. */
  deletePod(namespace: string, name: string): void {
    const s = this.#pods.get(`${namespace}/${name}`);
    if (s) this.#terminate(s);
  }

  /** Makes a pod's PID 1 exit: the pod is Failed (restartPolicy Never) and its execs end. */
  failPod(namespace: string, name: string): void {
    const s = this.#pods.get(`${namespace}/${name}`);
    if (!s) return;
    this.#killExecs(s);
    s.pod.status = { ...s.pod.status, phase: "Failed", reason: "Error" };
  }

  async close(): Promise<void> {
    for (const s of this.#pods.values()) this.#killExecs(s);
    for (const ws of this.#wss.clients) ws.terminate();
    this.#wss.close();
    await new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
    await rm(this.#root, { recursive: true, force: true });
  }

  #record(req: IncomingMessage): void {
    const url = req.url ?? "/";
    this.requests.push({ method: req.method ?? "GET", path: url.split("?")[0]!, url, headers: req.headers });
  }

  #authorized(req: IncomingMessage): boolean {
    const got = Buffer.from(req.headers.authorization ?? "");
    const want = Buffer.from(`Bearer ${this.token}`);
    return got.length === want.length && timingSafeEqual(got, want);
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.#record(req);
    const send = (code: number, body: unknown) => {
      res.writeHead(code, { "content-type": "application/json" });
      res.end(JSON.stringify(body));
    };
    if (!this.#authorized(req)) return send(401, status(401, "Unauthorized", "Unauthorized"));
    const url = new URL(req.url ?? "/", "http://double");
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = chunks.length > 0 ? JSON.parse(Buffer.concat(chunks).toString("utf8")) : undefined;

    const list = /^\/api\/v1\/namespaces\/([^/]+)\/pods$/.exec(url.pathname);
    const one = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)$/.exec(url.pathname);
    if (list && req.method === "GET") {
      const ns = list[1]!;
      const items = this.pods(ns).filter((p) =>
        matchesSelector(p.metadata?.labels ?? {}, url.searchParams.get("labelSelector")),
      );
      return send(200, {
        kind: "PodList",
        apiVersion: "v1",
        metadata: { resourceVersion: String(this.#rv) },
        items,
      });
    }
    if (list && req.method === "POST") return send(...(await this.#create(list[1]!, body as V1Pod)));
    if (one && req.method === "GET") {
      const s = this.#pods.get(`${one[1]}/${one[2]}`);
      return s ? send(200, s.pod) : send(404, status(404, "NotFound", `pods "${one[2]}" not found`));
    }
    if (one && req.method === "DELETE") {
      const s = this.#pods.get(`${one[1]}/${one[2]}`);
      if (!s) return send(404, status(404, "NotFound", `pods "${one[2]}" not found`));
      const uid = (body as { preconditions?: { uid?: string } } | undefined)?.preconditions?.uid;
      if (uid && uid !== s.pod.metadata?.uid) {
        return send(
          409,
          status(
            409,
            "Conflict",
            `Precondition failed: UID in precondition: ${uid}, UID in object meta: ${s.pod.metadata?.uid}`,
          ),
        );
      }
      this.#terminate(s);
      return send(200, s.pod);
    }
    send(404, status(404, "NotFound", "the server could not find the requested resource"));
  }

  async #create(ns: string, pod: V1Pod): Promise<[number, unknown]> {
    const name = pod?.metadata?.name;
    if (pod?.kind !== "Pod" || !name || !pod.spec?.containers?.length) {
      return [400, status(400, "BadRequest", "a pod needs a name and containers")];
    }
    if (pod.metadata?.namespace && pod.metadata.namespace !== ns) {
      return [400, status(400, "BadRequest", "the namespace of the object does not match the request")];
    }
    if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(name) || name.length > 63) {
      return [422, status(422, "Invalid", `Pod "${name}" is invalid: metadata.name`)];
    }
    for (const [k, v] of Object.entries(pod.metadata?.labels ?? {})) {
      if (v.length > 63 || !/^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/.test(v)) {
        return [422, status(422, "Invalid", `Pod "${name}" is invalid: metadata.labels: ${k}`)];
      }
    }
    const violations = restrictedViolations(pod);
    if (violations.length > 0) {
      return [
        403,
        status(
          403,
          "Forbidden",
          `pods "${name}" is forbidden: violates PodSecurity "restricted:latest": ${violations.join(", ")}`,
        ),
      ];
    }
    if (this.#pods.has(`${ns}/${name}`)) {
      return [409, status(409, "AlreadyExists", `pods "${name}" already exists`)];
    }
    const uid = randomUUID();
    const dir = join(this.#root, uid);
    for (const v of ["workspace", "home", "tmp"]) await mkdir(join(dir, v), { recursive: true });
    const stored: V1Pod = structuredClone(pod);
    stored.metadata = {
      ...stored.metadata,
      namespace: ns,
      uid,
      resourceVersion: String(++this.#rv),
      creationTimestamp: new Date(),
    };
    stored.status = { phase: "Pending" };
    const state: PodState = { pod: stored, dir, execs: new Set(), deleting: false };
    this.#pods.set(`${ns}/${name}`, state);
    setTimeout(() => {
      if (state.deleting) return;
      const container = stored.spec!.containers[0]!.name;
      stored.status = this.#opts.failPodsWith
        ? {
            phase: "Pending",
            containerStatuses: [
              {
                name: container,
                ready: false,
                restartCount: 0,
                image: stored.spec!.containers[0]!.image ?? "",
                imageID: "",
                state: { waiting: { reason: this.#opts.failPodsWith, message: "simulated" } },
              },
            ],
          }
        : {
            phase: "Running",
            containerStatuses: [
              {
                name: container,
                ready: true,
                restartCount: 0,
                image: stored.spec!.containers[0]!.image ?? "",
                imageID: "",
                state: { running: { startedAt: new Date() } },
              },
            ],
          };
      stored.metadata!.resourceVersion = String(++this.#rv);
    }, this.#opts.podStartDelayMs).unref();
    // The API returns the object as stored; dates as RFC 3339 text.
    return [201, JSON.parse(JSON.stringify(stored))];
  }

  #terminate(s: PodState): void {
    if (s.deleting) return;
    s.deleting = true;
    s.pod.metadata = {
      ...s.pod.metadata,
      deletionTimestamp: new Date(),
      resourceVersion: String(++this.#rv),
    };
    this.#killExecs(s);
    setTimeout(() => {
      const key = `${s.pod.metadata?.namespace}/${s.pod.metadata?.name}`;
      if (this.#pods.get(key) === s) this.#pods.delete(key);
      void rm(s.dir, { recursive: true, force: true });
    }, this.#opts.podDeleteDelayMs).unref();
  }

  #killExecs(s: PodState): void {
    for (const e of s.execs) {
      if (this.#opts.onPodDelete === "drop") {
        e.dropped = true;
        e.ws.terminate();
      }
      const pid = e.child.pid;
      if (pid !== undefined) {
        void freezeTree(pid, { group: true }).then(async (tree) => {
          for (const p of tree) sendKill(p.pid);
          await waitGone(tree, 5_000);
        });
      }
    }
  }

  #bwrapArgs(s: PodState, argv: string[]): string[] {
    const sc = s.pod.spec!.securityContext ?? {};
    const csc = s.pod.spec!.containers[0]!.securityContext ?? {};
    const uid = csc.runAsUser ?? sc.runAsUser ?? 1000;
    const gid = csc.runAsGroup ?? sc.runAsGroup ?? uid;
    const system: string[] = [];
    for (const dir of SYSTEM_DIRS) {
      if (!existsSync(dir)) continue;
      const st = lstatSync(dir);
      if (st.isSymbolicLink()) system.push("--symlink", readlinkSync(dir), dir);
      else if (st.isDirectory()) system.push("--ro-bind", dir, dir);
    }
    return [
      "--unshare-user",
      "--uid",
      String(uid),
      "--gid",
      String(gid),
      "--die-with-parent",
      // runc starts every process of a container in a session of its own.
      "--new-session",
      ...system,
      "--ro-bind",
      "/etc",
      "/etc",
      "--dev",
      "/dev",
      "--ro-bind",
      "/proc",
      "/proc",
      "--bind",
      join(s.dir, "workspace"),
      "/workspace",
      "--bind",
      join(s.dir, "home"),
      "/home",
      "--bind",
      join(s.dir, "tmp"),
      "/tmp",
      ...this.#opts.imageTmpfs.flatMap((dir) => ["--tmpfs", dir]),
      ...this.#opts.imageBinds.flatMap((b) => ["--ro-bind", b.host, b.sandbox]),
      ...this.#opts.imageTmpfs.flatMap((dir) => ["--remount-ro", dir]),
      "--remount-ro",
      "/",
      "--chdir",
      s.pod.spec!.containers[0]!.workingDir ?? "/",
      "--",
      ...argv,
    ];
  }

  #exec(s: PodState, url: URL, ws: WebSocket): void {
    const argv = url.searchParams.getAll("command");
    const wantStdin = url.searchParams.get("stdin") === "true";
    const send = (channel: number, data: Buffer) => {
      if (ws.readyState === ws.OPEN) ws.send(Buffer.concat([Buffer.from([channel]), data]));
    };
    if (argv.length === 0) {
      send(3, Buffer.from(JSON.stringify(status(400, "BadRequest", "you must specify at least 1 command"))));
      ws.close(1000);
      return;
    }
    const env: Record<string, string> = { ...RUNTIME_ENV, HOSTNAME: s.pod.metadata!.name! };
    const child = spawn("bwrap", this.#bwrapArgs(s, argv), {
      env,
      stdio: ["pipe", "pipe", "pipe"],
    });
    const running: RunningExec = { child, ws, dropped: false };
    s.execs.add(running);
    child.stdin.on("error", () => {});
    if (!wantStdin) child.stdin.end();
    // The server says each stream is ready with an empty frame, as the real one does.
    for (const ch of [1, 2, 3]) send(ch, Buffer.alloc(0));
    child.stdout.on("data", (d: Buffer) => send(1, d));
    child.stderr.on("data", (d: Buffer) => send(2, d));
    ws.on("message", (raw: Buffer, isBinary: boolean) => {
      const data = isBinary ? raw : Buffer.from(raw.toString(), "utf8");
      if (data.length === 0) return;
      const channel = data[0];
      if (channel === 0 && wantStdin) child.stdin.write(data.subarray(1));
      // v5 only: a client closes its stdin with [255, 0].
      else if (channel === 255 && ws.protocol === "v5.channel.k8s.io" && data[1] === 0) child.stdin.end();
    });
    ws.on("close", () => {
      // As with the kubelet, the command goes on without its client; stdin ends.
      child.stdin.end();
    });
    ws.on("error", () => {});
    child.on("close", (code, signal) => {
      s.execs.delete(running);
      if (running.dropped) return;
      const exit = code ?? (signal ? 128 + (signalNumber(signal) ?? 9) : 1);
      const body =
        exit === 0
          ? { kind: "Status", apiVersion: "v1", metadata: {}, status: "Success" }
          : {
              ...status(
                500,
                "NonZeroExitCode",
                `command terminated with non-zero exit code: exit status ${exit}`,
              ),
              code: undefined,
              details: { causes: [{ reason: "ExitCode", message: String(exit) }] },
            };
      send(3, Buffer.from(JSON.stringify(body)));
      ws.close(1000);
    });
  }
}

function signalNumber(signal: NodeJS.Signals): number | undefined {
  return { SIGKILL: 9, SIGTERM: 15, SIGINT: 2, SIGHUP: 1 }[signal as string];
}
