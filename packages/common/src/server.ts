import { createServer as createHttp1Server, type IncomingMessage, type ServerResponse } from "node:http";
import {
  createServer as createHttp2Server,
  type Http2ServerRequest,
  type Http2ServerResponse,
  type Http2Session,
} from "node:http2";
import { createServer as createNetServer, type Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { ConnectRouter, ContextValues, Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Registry } from "prom-client";
import type { Logger } from "./logger.js";

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
}

/**
 * The request handler of every service: `/healthz` (alive), `/readyz` (dependencies
 * reachable), `/metrics` (Prometheus), extra HTTP routes, then Connect, gRPC and gRPC-Web
 * for the service's RPCs.
 */
export function createServiceHandler(
  opts: ServiceHandlerOptions,
): (req: NodeRequest, res: NodeResponse) => void {
  const adapter = connectNodeAdapter({
    routes: opts.routes,
    interceptors: opts.interceptors,
    ...(opts.contextValues ? { contextValues: opts.contextValues } : {}),
    ...(opts.shutdownSignal ? { shutdownSignal: opts.shutdownSignal } : {}),
  });
  const send = (res: NodeResponse, status: number, type: string, body: string) => {
    (res as ServerResponse).writeHead(status, { "content-type": type, "cache-control": "no-store" });
    (res as ServerResponse).end(body);
  };
  return (req, res) => {
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

export interface RunningServer {
  url: string;
  port: number;
  /** Stops accepting, lets in-flight requests finish for up to `graceMs`, then cuts. */
  close(graceMs?: number): Promise<void>;
}

const H2_PREFACE = Buffer.from("PRI * HTTP/2.0");

/**
 * Listens on one port for HTTP/1.1 and cleartext HTTP/2 (h2c with prior knowledge, which
 * is what gRPC and Connect clients use): the first bytes of a connection tell which.
 */
export async function listen(
  handler: NodeHandler,
  opts: { port: number; host?: string },
): Promise<RunningServer> {
  const h1 = createHttp1Server(
    { keepAliveTimeout: 65_000 },
    handler as (req: IncomingMessage, res: ServerResponse) => void,
  );
  if (handler.upgrade) h1.on("upgrade", handler.upgrade);
  const h2 = createHttp2Server({}, handler as (req: Http2ServerRequest, res: Http2ServerResponse) => void);
  const sockets = new Set<Socket>();
  const sessions = new Set<Http2Session>();
  h2.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  const server = createNetServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.once("readable", () => {
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
      h1.closeIdleConnections();
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
