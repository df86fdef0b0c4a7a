import { Code, ConnectError } from "@connectrpc/connect";
import {
  bearerToken,
  type HttpRoute,
  type NodeRequest,
  type NodeResponse,
  SESSION_ID_PATTERN,
} from "@kilo-cloud/common";

const MAX_BODY_BYTES = 4096;

const HTTP_STATUS: Partial<Record<Code, number>> = {
  [Code.InvalidArgument]: 400,
  [Code.Unauthenticated]: 401,
  [Code.PermissionDenied]: 403,
  [Code.NotFound]: 404,
  [Code.Unavailable]: 503,
  [Code.DeadlineExceeded]: 504,
};

function sendJson(res: NodeResponse, status: number, body: unknown): void {
  const r = res as import("node:http").ServerResponse;
  r.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" });
  r.end(JSON.stringify(body));
}

async function readBody(req: NodeRequest): Promise<string> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new ConnectError("request body is too large", Code.InvalidArgument);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** The hosted backend's path (what its README example calls); it answers `expiresAt` in unix seconds. */
const HOSTED_PATH = "/api/cloud-agent/sessions/stream-ticket";

/**
 * `POST /stream-ticket` (and the hosted backend's path) with `{"cloudAgentSessionId":
 * "agent_…"}` and a bearer token, for browser backends that speak plain JSON:
 * `{"ticket", "expiresAt"}`.
 */
export function streamTicketRoute(
  issue: (
    bearer: string,
    cloudAgentSessionId: string,
    signal: AbortSignal,
  ) => Promise<{ ticket: string; expiresAt: Date }>,
): HttpRoute {
  return async (req, res) => {
    const path = (req.url ?? "").split("?")[0];
    if (path !== "/stream-ticket" && path !== HOSTED_PATH) return false;
    if (req.method !== "POST") {
      sendJson(res, 405, { code: "method_not_allowed", message: "use POST" });
      return true;
    }
    const abort = new AbortController();
    res.on("close", () => abort.abort());
    try {
      const token = bearerToken((req.headers.authorization as string | undefined) ?? null);
      if (!token)
        throw new ConnectError("missing bearer token (Authorization: Bearer <token>)", Code.Unauthenticated);
      let body: unknown;
      try {
        body = JSON.parse(await readBody(req));
      } catch (err) {
        if (err instanceof ConnectError) throw err;
        throw new ConnectError("body must be JSON", Code.InvalidArgument);
      }
      const id = (body as { cloudAgentSessionId?: unknown } | null)?.cloudAgentSessionId;
      if (typeof id !== "string" || !SESSION_ID_PATTERN.test(id)) {
        throw new ConnectError(
          "cloudAgentSessionId: must be a session id of the form agent_<uuid>",
          Code.InvalidArgument,
        );
      }
      const { ticket, expiresAt } = await issue(token, id, abort.signal);
      const expires = path === HOSTED_PATH ? Math.floor(expiresAt.getTime() / 1000) : expiresAt.toISOString();
      sendJson(res, 200, { ticket, expiresAt: expires });
    } catch (err) {
      const ce = ConnectError.from(err);
      sendJson(res, HTTP_STATUS[ce.code] ?? 500, {
        code: Code[ce.code]?.replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase(),
        message: HTTP_STATUS[ce.code] ? ce.rawMessage : "internal error",
      });
    }
    return true;
  };
}
