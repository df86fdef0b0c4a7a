import type { Logger } from "./logger.js";
import { listen, type NodeRequest, type NodeResponse } from "./server.js";
import type { ConnectionTimeouts } from "./server-limits.js";

/**
 * The end of every service's main.ts: listens, logs the URL, and on SIGTERM/SIGINT stops
 * listening, then runs `close` (the app, then its infrastructure) and exits.
 */
export async function serveUntilSignal(opts: {
  name: string;
  logger: Logger;
  handler: (req: NodeRequest, res: NodeResponse) => void;
  port: number;
  host: string;
  close: () => Promise<void>;
  /** Runs before the server closes (e.g. ending open streams, which would hold it open). */
  stopping?: () => void;
  fields?: Record<string, unknown>;
  /** Connection timeouts of the port (defaults of `listen` otherwise). */
  timeouts?: Partial<ConnectionTimeouts>;
}): Promise<void> {
  const server = await listen(opts.handler, {
    port: opts.port,
    host: opts.host,
    ...(opts.timeouts ? { timeouts: opts.timeouts } : {}),
  });
  opts.logger.info({ url: server.url, ...opts.fields }, `${opts.name} listening`);
  const shutdown = async (signal: string) => {
    opts.logger.info({ signal }, "shutting down");
    opts.stopping?.();
    await server.close().catch((err: unknown) => opts.logger.warn({ err }, "closing the server failed"));
    await opts.close().catch((err: unknown) => opts.logger.warn({ err }, "shutdown step failed"));
    process.exit(0);
  };
  process.once("SIGTERM", () => void shutdown("SIGTERM"));
  process.once("SIGINT", () => void shutdown("SIGINT"));
}
