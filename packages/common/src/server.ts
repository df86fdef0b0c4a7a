import { createServer as createHttp1Server, type IncomingMessage, type ServerResponse } from "node:http";
import {
  createServer as createHttp2Server,
  type Http2ServerRequest,
  type Http2ServerResponse,
  type Http2Session,
  constants as http2Constants,
} from "node:http2";
import { createServer as createNetServer, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { ConnectRouter, ContextValues, HandlerContext, Interceptor } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Registry } from "prom-client";
import type { Logger } from "./logger.js";
import {
  type ConnectionTimeouts,
  DEFAULT_CONNECTION_TIMEOUTS,
  DEFAULT_MAX_REQUEST_BYTES,
} from "./server-limits.js";

export type NodeRequest = IncomingMessage | Http2ServerRequest;
export type NodeResponse = ServerResponse | Http2ServerResponse;

/** Takes an HTTP/1.1 upgrade request (e.g. a WebSocket) and its socket. */
export type UpgradeHandler = (req: IncomingMessage, socket: Duplex, head: Buffer) => void;

/**
 * A request handler; one that carries `upgrade` also takes HTTP/1.1 upgrade requests
 * (WebSocket), which `listen` hands to it (others are refused by closing the socket).
 */
export type NodeHandler = ((req: NodeRequest, res: NodeResponse) => void) & { upgrade?: UpgradeHandler };

/** A plain HTTP route beside the RPCs; returns false when it does not handle the request. */
export type HttpRoute = (req: NodeRequest, res: NodeResponse) => boolean | Promise<boolean>;

export interface ServiceHandlerOptions {
  routes: (router: ConnectRouter) => void;
  interceptors: Interceptor[];
  metrics: Registry;
  logger: Logger;
  /** Throws (with a reason) when the service cannot serve yet. */
  readiness: () => Promise<void>;
  contextValues?: (req: NodeRequest) => ContextValues;
  httpRoutes?: HttpRoute[];
  /** Aborted on shutdown, so long-lived streams end cleanly. */
  shutdownSignal?: AbortSignal;
  /**
   * Runs once the request headers are in and before any byte of the body is read (e.g.
   * authentication): a request it refuses is never buffered, decompressed or parsed.
   */
  requestGate?: (ctx: HandlerContext) => void | Promise<void>;
  /** Largest request message, after decompression (default {@link DEFAULT_MAX_REQUEST_BYTES}). */
  maxRequestBytes?: number;
  /** A request whose body has not fully arrived after this long is cut (default 30 s). */
  requestBodyTimeoutMs?: number;
}

const DEFAULT_REQUEST_BODY_TIMEOUT_MS = 30_000;

/**
 * The request handler of every service: `/healthz` (alive), `/readyz` (dependencies
 * reachable), `/metrics` (Prometheus), extra HTTP routes, then Connect, gRPC and gRPC-Web
 * for the service's RPCs.
 */
export function createServiceHandler(
  opts: ServiceHandlerOptions,
): (req: NodeRequest, res: NodeResponse) => void {
  const maxRequestBytes = opts.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES;
  const adapter = connectNodeAdapter({
    routes: opts.routes,
    interceptors: opts.interceptors,
    readMaxBytes: maxRequestBytes,
    ...(opts.requestGate ? { requestGate: gateLogged(opts.requestGate, opts.logger) } : {}),
    ...(opts.contextValues ? { contextValues: opts.contextValues } : {}),
    ...(opts.shutdownSignal ? { shutdownSignal: opts.shutdownSignal } : {}),
  });
  const send = (res: NodeResponse, status: number, type: string, body: string) => {
    (res as ServerResponse).writeHead(status, { "content-type": type, "cache-control": "no-store" });
    (res as ServerResponse).end(body);
  };
  const bodyTimeoutMs = opts.requestBodyTimeoutMs ?? DEFAULT_REQUEST_BODY_TIMEOUT_MS;
  return (req, res) => {
    if (refuseOversized(req, res, maxRequestBytes)) return;
    cutSlowBody(req, bodyTimeoutMs);
    dropUnreadBody(req, res);
    const path = (req.url ?? "/").split("?")[0];
    if (req.method === "GET" && path === "/healthz") return send(res, 200, "text/plain", "ok\n");
    if (req.method === "GET" && path === "/readyz") {
      opts.readiness().then(
        () => send(res, 200, "text/plain", "ready\n"),
        (err: unknown) => {
          opts.logger.warn({ err: err instanceof Error ? err.message : String(err) }, "not ready");
          send(res, 503, "text/plain", "not ready\n");
        },
      );
      return;
    }
    if (req.method === "GET" && path === "/metrics") {
      opts.metrics.metrics().then(
        (text) => send(res, 200, opts.metrics.contentType, text),
        () => send(res, 500, "text/plain", "metrics unavailable\n"),
      );
      return;
    }
    void (async () => {
      for (const route of opts.httpRoutes ?? []) {
        if (await route(req, res)) return;
      }
      (adapter as (req: NodeRequest, res: NodeResponse) => void)(req, res);
    })().catch((err: unknown) => {
      opts.logger.error({ err }, "http route failed");
      if (!res.headersSent) send(res, 500, "text/plain", "internal error\n");
    });
  };
}

/** A refusal by the gate is logged like the RPC failures the interceptors log. */
function gateLogged(
  gate: (ctx: HandlerContext) => void | Promise<void>,
  logger: Logger,
): (ctx: HandlerContext) => Promise<void> {
  return async (ctx) => {
    try {
      await gate(ctx);
    } catch (err) {
      const ce = ConnectError.from(err);
      logger.info(
        { rpc: `${ctx.service.typeName}/${ctx.method.name}`, code: Code[ce.code], error: ce.rawMessage },
        "rpc refused",
      );
      throw ce;
    }
  };
}

/**
 * A declared body larger than the limit is answered 413 at once and the connection closed:
 * nothing of it is read. (Bodies without a length are bounded by Connect's readMaxBytes.)
 */
function refuseOversized(req: NodeRequest, res: NodeResponse, maxBytes: number): boolean {
  const declared = Number(req.headers["content-length"] ?? 0);
  // gRPC frames add 5 bytes per message; leave room for the envelope.
  if (!(declared > maxBytes + 5)) return false;
  const r = res as ServerResponse;
  if (req.httpVersionMajor === 1) r.setHeader("connection", "close");
  r.writeHead(413, { "content-type": "text/plain", "cache-control": "no-store" });
  r.end("request too large\n");
  return true;
}

/** Cuts a request whose body trickles in (a slow client holds no buffer or stream forever). */
function cutSlowBody(req: NodeRequest, timeoutMs: number): void {
  if (req.complete) return;
  const timer = setTimeout(() => {
    if (!req.complete) req.destroy();
  }, timeoutMs);
  timer.unref();
  const clear = () => clearTimeout(timer);
  req.once("end", clear);
  req.once("close", clear);
}

/**
 * A response sent before its request arrived whole (refused by the gate or a limit) ends
 * the rest of the upload: an HTTP/1.1 response says `connection: close` (the remaining
 * bytes cannot be told from a next request, so the connection is not reused), an HTTP/2
 * stream is reset once the response is out.
 */
function dropUnreadBody(req: NodeRequest, res: NodeResponse): void {
  if ("stream" in req) {
    res.once("finish", () => {
      if (!req.complete) req.stream.close(http2Constants.NGHTTP2_NO_ERROR);
    });
    return;
  }
  const r = res as ServerResponse;
  const writeHead = r.writeHead;
  r.writeHead = function (this: ServerResponse, ...args: unknown[]) {
    if (!req.complete && !this.headersSent) this.setHeader("connection", "close");
    return (writeHead as (...a: unknown[]) => ServerResponse).apply(this, args);
  } as typeof r.writeHead;
}

export interface RunningServer {
  url: string;
  port: number;
  /** Stops accepting, lets in-flight requests finish for up to `graceMs`, then cuts. */
  close(graceMs?: number): Promise<void>;
}

const H2_PREFACE = Buffer.from("PRI * HTTP/2.0");

/**
 * Listens on one port for HTTP/1.1 and cleartext HTTP/2 (h2c with prior knowledge, which
 * is what gRPC and Connect clients use): the first bytes of a connection tell which. A
 * connection that sends nothing is closed after `headersMs`.
 */
export async function listen(
  handler: NodeHandler,
  opts: { port: number; host?: string; timeouts?: Partial<ConnectionTimeouts> },
): Promise<RunningServer> {
  const t = { ...DEFAULT_CONNECTION_TIMEOUTS, ...opts.timeouts };
  const h1 = createHttp1Server(
    {
      keepAliveTimeout: t.keepAliveMs,
      headersTimeout: t.headersMs,
      requestTimeout: t.requestMs,
      connectionsCheckingInterval: Math.min(1_000, t.headersMs),
    },
    handler as (req: IncomingMessage, res: ServerResponse) => void,
  );
  if (handler.upgrade) h1.on("upgrade", handler.upgrade);
  // The http server never listens itself (it gets sockets from the sniffer below); its
  // headers/request timeouts are checked by a timer it starts on "listening".
  h1.emit("listening");
  const h2 = createHttp2Server({}, handler as (req: Http2ServerRequest, res: Http2ServerResponse) => void);
  // An idle HTTP/2 connection gets a GOAWAY (in-flight streams finish), then is cut.
  h2.setTimeout(t.h2IdleMs);
  h2.on("timeout", (session: Http2Session) => {
    session.close();
    setTimeout(() => session.destroy(), t.headersMs).unref();
  });
  const sockets = new Set<Socket>();
  const sessions = new Set<Http2Session>();
  h2.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  const server = createNetServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    const silent = setTimeout(() => socket.destroy(), t.headersMs);
    silent.unref();
    socket.once("close", () => clearTimeout(silent));
    socket.once("readable", () => {
      clearTimeout(silent);
      const head: Buffer | null =
        socket.read(Math.min(socket.readableLength, H2_PREFACE.length)) ?? socket.read();
      if (!head) {
        socket.destroy();
        return;
      }
      socket.unshift(head);
      const isH2 =
        head.length >= 3 &&
        H2_PREFACE.subarray(0, Math.min(head.length, H2_PREFACE.length)).equals(
          head.subarray(0, Math.min(head.length, H2_PREFACE.length)),
        );
      (isH2 ? h2 : h1).emit("connection", socket);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host ?? "0.0.0.0", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : opts.port;
  const host = opts.host && opts.host !== "0.0.0.0" ? opts.host : "127.0.0.1";
  return {
    url: `http://${host}:${port}`,
    port,
    async close(graceMs = 5_000) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      h1.close();
      for (const s of sessions) s.close();
      const timer = setTimeout(() => {
        for (const s of sessions) s.destroy();
        for (const socket of sockets) socket.destroy();
      }, graceMs);
      timer.unref();
      await closed;
      clearTimeout(timer);
    },
  };
}
