import type { IncomingMessage, ServerResponse } from "node:http";
import type { HttpRoute } from "@kilo-cloud/common";
import { nodeHTTPRequestHandler } from "@trpc/server/adapters/node-http";
import { type FacadeDeps, requestContext } from "./context.js";
import { createCloudAgentRouter } from "./router.js";

export const TRPC_PREFIX = "/trpc";
/** Bodies above this answer PAYLOAD_TOO_LARGE (a prepare with every limit used fits). */
const MAX_BODY_BYTES = 2 * 1024 * 1024;

/** `/trpc/<procedure>` (and batches `/trpc/a,b?batch=1`) on the gateway's port. */
export function trpcRoute(deps: FacadeDeps): HttpRoute {
  const router = createCloudAgentRouter(deps);
  return async (req, res) => {
    const path = (req.url ?? "").split("?")[0] ?? "";
    if (path !== TRPC_PREFIX && !path.startsWith(`${TRPC_PREFIX}/`)) return false;
    await nodeHTTPRequestHandler({
      router,
      req: req as IncomingMessage,
      res: res as ServerResponse,
      // Still percent-encoded: tRPC decodes it itself.
      path: path.slice(TRPC_PREFIX.length + 1),
      maxBodySize: MAX_BODY_BYTES,
      createContext: () => requestContext(req.headers),
      onError({ error, path: procedure }) {
        if (error.code !== "INTERNAL_SERVER_ERROR") return;
        const cause = error.cause;
        deps.logger.error(
          {
            procedure,
            error: error.message,
            cause: cause instanceof Error ? cause.message : String(cause ?? ""),
          },
          "trpc procedure failed",
        );
      },
    });
    return true;
  };
}
