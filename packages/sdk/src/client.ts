import { type Client, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { SessionService } from "../../proto/src/gen/kilocode/cloudagent/v1/session_pb.js";
import type { Event } from "../../proto/src/gen/kilocode/cloudagent/v1/stream_pb.js";
import { StreamService } from "../../proto/src/gen/kilocode/cloudagent/v1/stream_pb.js";
import { type AuthOptions, authInterceptor } from "./auth.js";
import { unavailableOnNetworkError } from "./network.js";
import { type RetryOptions, retryInterceptor } from "./retry.js";
import { type SubscribeOptions, subscribeEvents } from "./subscribe.js";

export interface KiloCloudClientOptions extends AuthOptions {
  /** The gateway, e.g. http://127.0.0.1:8080. */
  baseUrl: string;
  /** A fetch implementation (default: the global one). */
  fetch?: typeof globalThis.fetch;
  /** Retries of idempotent calls on UNAVAILABLE ({maxAttempts: 1} disables them). */
  retry?: RetryOptions;
  /** More interceptors, run inside auth and retries (logging, tracing). */
  interceptors?: Interceptor[];
  /**
   * Builds the transport from the client's interceptors instead of Connect over fetch
   * (tests use `createRouterTransport`; Node users may prefer connect-node's transport).
   */
  transport?: (interceptors: Interceptor[]) => Transport;
}

export interface KiloCloudClient {
  /** Every SessionService call: prepare, initiate, send, interrupt, get, list, delete, … */
  sessions: Client<typeof SessionService>;
  /** The raw StreamService (one connection, no resume); most callers want `subscribe`. */
  stream: Client<typeof StreamService>;
  /** A session's events, resuming from the last id after a dropped connection. */
  subscribe(sessionId: string, options?: SubscribeOptions): AsyncGenerator<Event, void, undefined>;
}

/** A typed client for a Kilo Cloud Agent gateway. */
export function createKiloCloudClient(options: KiloCloudClientOptions): KiloCloudClient {
  const interceptors = [
    authInterceptor(options),
    retryInterceptor(options.retry),
    ...(options.interceptors ?? []),
  ];
  const transport = options.transport
    ? options.transport(interceptors)
    : createConnectTransport({
        baseUrl: options.baseUrl,
        interceptors,
        fetch: unavailableOnNetworkError(options.fetch ?? ((input, init) => globalThis.fetch(input, init))),
      });
  const stream = createClient(StreamService, transport);
  return {
    sessions: createClient(SessionService, transport),
    stream,
    subscribe: (sessionId, subscribeOptions) => subscribeEvents(stream, sessionId, subscribeOptions),
  };
}
