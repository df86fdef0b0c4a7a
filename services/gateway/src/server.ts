import { setMaxListeners } from "node:events";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ConnectRouter, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import {
  createMetricsRegistry,
  createObservabilityInterceptor,
  createServiceHandler,
  createServiceTokenSigner,
  createUserAuthGate,
  createUserTokenVerifier,
  createValidationInterceptor,
  type EventLog,
  type Identity,
  type Logger,
  type NodeHandler,
  type ServerLimits,
  type UserTokenConfig,
} from "@kilo-cloud/common";
import {
  BACKEND_ONLY_SESSION_METHODS,
  CreateStreamTicketResponseSchema,
  SessionService,
  StreamService,
} from "@kilo-cloud/proto";
import {
  callerOf,
  forwardingSessionHandlers,
  type UpstreamOptions,
  upstreamCallOptions,
  upstreamError,
} from "./handlers/forward.js";
import { DEFAULT_MAX_STREAMS_PER_USER, StreamSlots } from "./handlers/stream-slots.js";
import { createStreamTickets } from "./handlers/stream-tickets.js";
import { STREAM_HANDLER_OPTIONS, subscribeHandler } from "./handlers/subscribe.js";
import { streamTicketRoute } from "./handlers/ticket-route.js";
import { withHostedApiTokens, withHostedTickets } from "./hosted/hosted-auth.js";
import { hostedApi } from "./hosted/mount.js";
import type { PumpSettings } from "./stream-ws/pump.js";

/** Must match the session service's audience. */
const SESSION_AUDIENCE = "kilo-cloud-session";

const INTERNAL_METHODS = BACKEND_ONLY_SESSION_METHODS;
/** Subscribe authenticates in its handler: a stream ticket or a bearer token. */
const PUBLIC_METHODS = new Set([`${StreamService.typeName}/Subscribe`]);

export interface GatewayDeps {
  logger: Logger;
  userTokens: UserTokenConfig;
  internalApiKey: string;
  serviceTokenPrivateKey: string;
  streamTicketSecret: string;
  sessionServiceUrl: string;
  upstreamTimeoutMs?: number;
  /** The event log Subscribe reads (JetStream in production). */
  events?: EventLog;
  /** Readiness of the event log (e.g. the NATS connection and the stream). */
  eventsReady?: () => Promise<void>;
  keepaliveMs?: number;
  /** The hosted backend's NEXTAUTH_SECRET: accept its API tokens and stream tickets too. */
  hostedAuthSecret?: string | undefined;
  /** `/stream` WebSocket: ping interval, allowed browser origins, backpressure. */
  streamPingMs?: number;
  streamAllowedOrigins?: readonly string[];
  streamSocket?: Partial<PumpSettings>;
  /** Open Subscribe streams per user on this replica (default 20). */
  maxStreamsPerUser?: number;
  /** Request size limit (default 4 MiB); `timeouts` are for `listen`. */
  limits?: ServerLimits;
}

export interface GatewayApp {
  /** Requests, and WebSocket upgrades (`/stream`) when an event log is configured. */
  handler: NodeHandler;
  /** Ends streams and upstream connections. */
  close(): void;
}

export async function createGateway(deps: GatewayDeps): Promise<GatewayApp> {
  const metrics = createMetricsRegistry("gateway");
  const verifyUser = withHostedApiTokens(createUserTokenVerifier(deps.userTokens), deps.hostedAuthSecret);
  const upstream: UpstreamOptions = {
    sign: await createServiceTokenSigner(deps.serviceTokenPrivateKey),
    audience: SESSION_AUDIENCE,
    timeoutMs: deps.upstreamTimeoutMs ?? 15_000,
  };
  const sessions = createClient(
    SessionService,
    createConnectTransport({ baseUrl: deps.sessionServiceUrl, httpVersion: "2", useBinaryFormat: true }),
  );
  /** NOT_FOUND unless the user owns the session (asked of the session service, as the user). */
  const checkOwner = async (userId: string, cloudAgentSessionId: string, signal: AbortSignal) => {
    try {
      await sessions.getSession(
        { cloudAgentSessionId },
        await upstreamCallOptions({ identity: { userId, internal: false }, signal }, upstream),
      );
    } catch (err) {
      throw upstreamError(err, "session service");
    }
  };
  const tickets = withHostedTickets(
    createStreamTickets(deps.streamTicketSecret),
    deps.hostedAuthSecret,
    checkOwner,
  );
  const slots = new StreamSlots(deps.maxStreamsPerUser ?? DEFAULT_MAX_STREAMS_PER_USER);
  const shutdown = new AbortController();
  // Every open stream listens on the shutdown signal; thousands of them are expected.
  setMaxListeners(0, shutdown.signal);

  /** Issues a ticket after the session service confirms the caller owns the session. */
  const issueTicket = async (identity: Identity, cloudAgentSessionId: string, signal: AbortSignal) => {
    try {
      await sessions.getSession(
        { cloudAgentSessionId },
        await upstreamCallOptions({ identity, signal }, upstream),
      );
    } catch (err) {
      throw upstreamError(err, "session service");
    }
    return tickets.issue({ userId: identity.userId, cloudAgentSessionId });
  };

  const routes = (router: ConnectRouter) => {
    router.service(
      SessionService,
      forwardingSessionHandlers(sessions, upstream, {
        async createStreamTicket(req, ctx) {
          const { ticket, expiresAt } = await issueTicket(
            callerOf(ctx, false).identity,
            req.cloudAgentSessionId,
            ctx.signal,
          );
          return create(CreateStreamTicketResponseSchema, {
            ticket,
            expiresAt: timestampFromDate(expiresAt),
          });
        },
      }),
    );
    const events = deps.events;
    router.service(
      StreamService,
      {
        subscribe: events
          ? subscribeHandler({
              events,
              tickets,
              verifyUser,
              keepaliveMs: deps.keepaliveMs ?? 15_000,
              checkOwner,
              slots,
            })
          : // biome-ignore lint/correctness/useYield: no event log configured
            async function* () {
              throw new ConnectError("streaming is not configured on this gateway", Code.Unimplemented);
            },
      },
      STREAM_HANDLER_OPTIONS,
    );
  };

  // The hosted product's clients: /trpc and the /stream WebSocket, on this same port.
  const hosted = hostedApi({
    sessions,
    upstream,
    verifyUser,
    internalApiKey: deps.internalApiKey,
    events: deps.events,
    logger: deps.logger,
    tickets,
    shutdown: shutdown.signal,
    stream: { pingMs: deps.streamPingMs, allowedOrigins: deps.streamAllowedOrigins, ...deps.streamSocket },
  });

  const handler = createServiceHandler({
    routes,
    interceptors: [createObservabilityInterceptor(deps.logger, metrics), createValidationInterceptor()],
    requestGate: createUserAuthGate({
      verify: verifyUser,
      internalApiKey: deps.internalApiKey,
      internalMethods: INTERNAL_METHODS,
      publicMethods: PUBLIC_METHODS,
    }),
    ...(deps.limits ? { maxRequestBytes: deps.limits.maxRequestBytes } : {}),
    metrics,
    logger: deps.logger,
    shutdownSignal: shutdown.signal,
    httpRoutes: [
      streamTicketRoute(async (bearer, id, signal) => {
        const { userId } = await verifyUser(bearer);
        return issueTicket({ userId, internal: false }, id, signal);
      }),
      ...hosted.routes,
    ],
    // Ready when what the gateway itself serves works: Subscribe needs the event log. Not
    // chained to the session service's readiness: a database blip behind it makes its RPCs
    // answer UNAVAILABLE, and must not take every gateway (and so every stream) out of the
    // load balancer.
    readiness: async () => {
      await deps.eventsReady?.();
    },
  });

  return {
    handler: Object.assign(handler, hosted.upgrade ? { upgrade: hosted.upgrade } : {}),
    close: () => shutdown.abort(),
  };
}
