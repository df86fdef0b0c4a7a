import type { HttpRoute, UpgradeHandler } from "@kilo-cloud/common";
import type { StreamTickets } from "../handlers/stream-tickets.js";
import type { PumpSettings } from "../stream-ws/pump.js";
import { createStreamSocket } from "../stream-ws/stream-socket.js";
import type { FacadeDeps } from "../trpc/context.js";
import { trpcRoute } from "../trpc/http-route.js";

export interface HostedApiOptions extends FacadeDeps {
  tickets: StreamTickets;
  shutdown: AbortSignal;
  stream: {
    pingMs?: number | undefined;
    allowedOrigins?: readonly string[] | undefined;
  } & Partial<PumpSettings>;
}

/**
 * The hosted product's API on the gateway's port: `/trpc` and, with an event log, the
 * `/stream` WebSocket (its routes, and the upgrade handler `listen` hands upgrades to).
 */
export function hostedApi(opts: HostedApiOptions): { routes: HttpRoute[]; upgrade?: UpgradeHandler } {
  const trpc = trpcRoute(opts);
  if (!opts.events) return { routes: [trpc] };
  const { pingMs, allowedOrigins, ...settings } = opts.stream;
  const socket = createStreamSocket({
    events: opts.events,
    verifyTicket: opts.tickets.verify,
    logger: opts.logger,
    shutdown: opts.shutdown,
    settings: { ...(pingMs ? { pingMs } : {}), ...settings },
    allowedOrigins: allowedOrigins ?? [],
  });
  return { routes: [socket.route, trpc], upgrade: socket.upgrade };
}
