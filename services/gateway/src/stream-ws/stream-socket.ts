import { STATUS_CODES } from "node:http";
import type { Duplex } from "node:stream";
import { Code, ConnectError } from "@connectrpc/connect";
import type { EventLog, HttpRoute, Logger, UpgradeHandler } from "@kilo-cloud/common";
import { WebSocketServer } from "ws";
import { DEFAULT_PUMP_SETTINGS, type PumpSettings, pumpEvents } from "./pump.js";
import { HandshakeError, parseStreamQuery } from "./query.js";

export const STREAM_PATH = "/stream";

export interface StreamSocketDeps {
  events: EventLog;
  /** Checks a ticket for the session: UNAUTHENTICATED / PERMISSION_DENIED / NOT_FOUND. */
  verifyTicket(ticket: string, cloudAgentSessionId: string, signal: AbortSignal): Promise<unknown>;
  logger: Logger;
  shutdown: AbortSignal;
  settings?: Partial<PumpSettings>;
  /** When non-empty, a request with an `Origin` header must name one of these. */
  allowedOrigins?: readonly string[];
}

const HANDSHAKE_STATUS: Partial<Record<Code, number>> = {
  [Code.Unauthenticated]: 401,
  [Code.PermissionDenied]: 403,
  [Code.NotFound]: 404,
  [Code.InvalidArgument]: 400,
  [Code.Unavailable]: 503,
  [Code.DeadlineExceeded]: 504,
};

/** Answers an upgrade request with a plain HTTP error and closes the connection. */
function refuse(socket: Duplex, status: number, message: string): void {
  if (!socket.writable) return void socket.destroy();
  const body = `${message}\n`;
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ""}\r\n` +
      "Connection: close\r\nContent-Type: text/plain; charset=utf-8\r\n" +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

function handshakeError(err: unknown): HandshakeError {
  if (err instanceof HandshakeError) return err;
  const ce = ConnectError.from(err);
  const status = HANDSHAKE_STATUS[ce.code] ?? 500;
  return new HandshakeError(status, status === 500 ? "internal error" : ce.rawMessage);
}

/**
 * The hosted product's `/stream` WebSocket on the gateway's port: the query is checked
 * and the ticket verified before the upgrade (an HTTP error otherwise, as the hosted
 * product answers), then the session's events are pumped to the socket.
 */
export function createStreamSocket(deps: StreamSocketDeps): { route: HttpRoute; upgrade: UpgradeHandler } {
  const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024, perMessageDeflate: false });
  const settings = { ...DEFAULT_PUMP_SETTINGS, ...deps.settings };
  const origins = new Set(deps.allowedOrigins ?? []);

  const upgrade: UpgradeHandler = (req, socket, head) => {
    const url = new URL(req.url ?? "/", "http://gateway");
    if (url.pathname !== STREAM_PATH) return refuse(socket, 404, "Not found");
    socket.on("error", () => socket.destroy());
    const abort = new AbortController();
    socket.once("close", () => abort.abort());
    void (async () => {
      if (req.headers.upgrade?.toLowerCase() !== "websocket")
        throw new HandshakeError(426, "Expected WebSocket upgrade");
      const origin = req.headers.origin;
      if (origins.size > 0 && origin !== undefined && !origins.has(origin)) {
        throw new HandshakeError(403, "Origin not allowed");
      }
      const q = parseStreamQuery(url);
      await deps.verifyTicket(q.ticket, q.cloudAgentSessionId, abort.signal);
      if (abort.signal.aborted) return;
      wss.handleUpgrade(req, socket, head, (ws) => {
        ws.on("error", () => ws.terminate());
        void pumpEvents(ws, q, {
          events: deps.events,
          logger: deps.logger,
          settings,
          shutdown: deps.shutdown,
        });
      });
    })().catch((err: unknown) => {
      const e = handshakeError(err);
      if (e.status === 500) deps.logger.error({ err }, "stream handshake failed");
      refuse(socket, e.status, e.message);
    });
  };

  /** A plain GET of /stream (no upgrade) is told to upgrade. */
  const route: HttpRoute = (req, res) => {
    if ((req.url ?? "").split("?")[0] !== STREAM_PATH) return false;
    (res as import("node:http").ServerResponse).writeHead(426, {
      "content-type": "text/plain; charset=utf-8",
      upgrade: "websocket",
    });
    res.end("Expected WebSocket upgrade\n");
    return true;
  };

  return { route, upgrade };
}
