import { chmod, chown, unlink } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { connectEgress, type EgressPolicy, type Logger, SsrfError } from "@kilo-cloud/common";

/**
 * The only way out of a fenced local sandbox: an HTTP proxy (absolute-form requests and
 * CONNECT tunnels) listening on one Unix socket per sandbox, which the sandbox sees at
 * /run/kilo-cloud/proxy.sock and reaches through a bridge on 127.0.0.1:3128 inside its own
 * network namespace. Every destination is checked by the deployment's egress policy on the
 * address it resolves to, at connect time (`connectEgress` of @kilo-cloud/common).
 *
 * It is also the model provider relay: requests for http://RELAY_HOST/... go to the
 * operator's configured provider with the operator's key added here, so the key never
 * enters the sandbox. The relay forwards only there (the provider is the operator's choice,
 * so the public-only rule does not apply to it).
 */

/** The provider relay's name inside the sandbox (resolved by nobody: the proxy answers it). */
export const RELAY_HOST = "model-provider.kilo-cloud.internal";

export interface ProviderRelay {
  /** The provider's OpenAI-compatible base URL, e.g. https://llm.example.com/v1. */
  baseUrl: string;
  apiKey: string;
}

export interface EgressProxyOptions {
  policy: EgressPolicy;
  relay?: ProviderRelay | undefined;
  logger?: Logger | undefined;
}

const MAX_CONNECTIONS_PER_SANDBOX = 256;

/** Headers that belong to one hop and are never forwarded. */
const HOP_HEADERS = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authorization",
  "proxy-authenticate",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

export class EgressProxy {
  readonly #opts: EgressProxyOptions;
  readonly #servers = new Map<string, http.Server>();

  constructor(opts: EgressProxyOptions) {
    this.#opts = opts;
  }

  /** Starts listening for one sandbox on `socketPath` (replacing a stale socket file). */
  async listen(sandboxId: string, socketPath: string, owner?: { uid: number; gid: number }): Promise<void> {
    if (this.#servers.has(socketPath)) return;
    const server = http.createServer((req, res) => void this.#forward(sandboxId, req, res));
    server.on("connect", (req, socket, head) => void this.#tunnel(sandboxId, req, socket, head));
    server.on("clientError", (_err, socket) => socket.destroy());
    // A sandbox holds at most this many connections to the proxy (tunnels included).
    server.maxConnections = MAX_CONNECTIONS_PER_SANDBOX;
    this.#servers.set(socketPath, server);
    await unlink(socketPath).catch(() => {});
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(socketPath, () => resolve());
    });
    await chmod(socketPath, 0o600);
    if (owner) await chown(socketPath, owner.uid, owner.gid);
  }

  async close(): Promise<void> {
    const servers = [...this.#servers.values()];
    this.#servers.clear();
    await Promise.all(
      servers.map(
        (s) =>
          new Promise<void>((resolve) => {
            s.close(() => resolve());
            s.closeAllConnections();
          }),
      ),
    );
  }

  #refused(sandboxId: string, target: string, err: unknown): { status: number; text: string } {
    if (err instanceof SsrfError) {
      this.#opts.logger?.info({ sandboxId, target, reason: err.reason }, "egress refused");
      return { status: 403, text: `kilo-cloud egress: ${target} refused: ${err.reason}` };
    }
    const code = (err as NodeJS.ErrnoException).code ?? "error";
    this.#opts.logger?.debug({ sandboxId, target, code }, "egress connect failed");
    return { status: 502, text: `kilo-cloud egress: ${target} unreachable (${code})` };
  }

  async #tunnel(sandboxId: string, req: http.IncomingMessage, client: Duplex, head: Buffer): Promise<void> {
    client.on("error", () => {});
    const target = req.url ?? "";
    const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(target);
    if (!m) {
      client.end("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
      return;
    }
    let upstream: Socket;
    try {
      if (m[1] === RELAY_HOST) throw new SsrfError(target, "the model provider relay speaks plain HTTP only");
      upstream = await connectEgress(m[1]!, Number(m[2]), this.#opts.policy);
    } catch (err) {
      const r = this.#refused(sandboxId, target, err);
      client.end(
        `HTTP/1.1 ${r.status} Refused\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n${r.text}\n`,
      );
      return;
    }
    upstream.on("error", () => client.destroy());
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
    client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
    if (head.length > 0) upstream.write(head);
    upstream.pipe(client);
    client.pipe(upstream);
  }

  async #forward(sandboxId: string, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let url: URL;
    try {
      url = new URL(req.url ?? "");
      if (url.protocol !== "http:") throw new Error("not http");
    } catch {
      res
        .writeHead(400, { "content-type": "text/plain" })
        .end("kilo-cloud egress: absolute http:// URLs only\n");
      return;
    }
    const headers = forwardHeaders(req);
    let request: http.ClientRequest;
    if (url.hostname === RELAY_HOST) {
      const relay = this.#opts.relay;
      if (!relay) {
        res
          .writeHead(404, { "content-type": "text/plain" })
          .end("kilo-cloud egress: no model provider relay\n");
        return;
      }
      request = relayRequest(relay, url, req.method ?? "GET", headers);
    } else {
      const port = url.port === "" ? 80 : Number(url.port);
      let socket: Socket;
      try {
        socket = await connectEgress(url.hostname, port, this.#opts.policy);
      } catch (err) {
        const r = this.#refused(sandboxId, `${url.hostname}:${port}`, err);
        res.writeHead(r.status, { "content-type": "text/plain" }).end(`${r.text}\n`);
        return;
      }
      headers.host = url.host;
      request = http.request({
        createConnection: () => socket,
        method: req.method,
        path: `${url.pathname}${url.search}`,
        headers,
      });
    }
    request.on("response", (up) => {
      res.writeHead(up.statusCode ?? 502, filterHeaders(up.headers));
      up.pipe(res);
    });
    request.on("error", (err) => {
      if (!res.headersSent) {
        res
          .writeHead(502, { "content-type": "text/plain" })
          .end(`kilo-cloud egress: upstream failed (${err.message})\n`);
      } else res.destroy();
    });
    res.on("close", () => request.destroy());
    req.pipe(request);
  }
}

function filterHeaders(h: http.IncomingHttpHeaders): http.OutgoingHttpHeaders {
  const out: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(h)) if (!HOP_HEADERS.has(k) && v !== undefined) out[k] = v;
  return out;
}

function forwardHeaders(req: http.IncomingMessage): http.OutgoingHttpHeaders {
  return filterHeaders(req.headers);
}

/** A request to the provider: its base URL's path joined with the sandbox's path, the operator's key. */
function relayRequest(
  relay: ProviderRelay,
  url: URL,
  method: string,
  headers: http.OutgoingHttpHeaders,
): http.ClientRequest {
  const base = new URL(relay.baseUrl);
  const path = `${base.pathname.replace(/\/$/, "")}${url.pathname}${url.search}`;
  const { authorization: _drop, ...rest } = headers;
  return (base.protocol === "https:" ? https : http).request({
    protocol: base.protocol,
    hostname: base.hostname.replace(/^\[|\]$/g, ""),
    port: base.port === "" ? undefined : Number(base.port),
    method,
    path,
    headers: { ...rest, host: base.host, authorization: `Bearer ${relay.apiKey}` },
  });
}
