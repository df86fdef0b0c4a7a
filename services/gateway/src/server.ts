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
  type NodeRequest,
  type NodeResponse,
  type ServerLimits,
  type UserTokenConfig,
} from "@kilo-cloud/common";
import { CreateStreamTicketResponseSchema, SessionService, StreamService } from "@kilo-cloud/proto";
import {
  callerOf,
  forwardingSessionHandlers,
  type UpstreamOptions,
  upstreamCallOptions,
  upstreamError,
} from "./handlers/forward.js";
import { DEFAULT_MAX_STREAMS_PER_USER, StreamSlots } from "./handlers/stream-slots.js";
import { createStreamTickets } from "./handlers/stream-tickets.js";
import { subscribeHandler } from "./handlers/subscribe.js";
import { streamTicketRoute } from "./handlers/ticket-route.js";

/** Must match the session service's audience. */
const SESSION_AUDIENCE = "kilo-cloud-session";

const INTERNAL_METHODS = new Set(
  ["PrepareSession", "PrepareLegacySession", "UpdateSession"].map((m) => `${SessionService.typeName}/${m}`),
);
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
  keepaliveMs?: number;
  /** Open Subscribe streams per user on this replica (default 20). */
  maxStreamsPerUser?: number;
  /** Request size limit (default 4 MiB); `timeouts` are for `listen`. */
  limits?: ServerLimits;
}

export interface GatewayApp {
  handler: (req: NodeRequest, res: NodeResponse) => void;
  /** Ends streams and upstream connections. */
  close(): void;
}

export async function createGateway(deps: GatewayDeps): Promise<GatewayApp> {
  const metrics = createMetricsRegistry("gateway");
  const verifyUser = createUserTokenVerifier(deps.userTokens);
  const upstream: UpstreamOptions = {
    sign: await createServiceTokenSigner(deps.serviceTokenPrivateKey),
    audience: SESSION_AUDIENCE,
    timeoutMs: deps.upstreamTimeoutMs ?? 15_000,
  };
  const sessions = createClient(
    SessionService,
    createConnectTransport({ baseUrl: deps.sessionServiceUrl, httpVersion: "2", useBinaryFormat: true }),
  );
  const tickets = createStreamTickets(deps.streamTicketSecret);
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
    router.service(StreamService, {
      subscribe: events
        ? subscribeHandler({
            events,
            tickets,
            verifyUser,
            keepaliveMs: deps.keepaliveMs ?? 15_000,
            slots,
            async checkOwner(userId, cloudAgentSessionId, signal) {
              try {
                await sessions.getSession(
                  { cloudAgentSessionId },
                  await upstreamCallOptions({ identity: { userId, internal: false }, signal }, upstream),
                );
              } catch (err) {
                throw upstreamError(err, "session service");
              }
            },
          })
        : // biome-ignore lint/correctness/useYield: no event log configured
          async function* () {
            throw new ConnectError("streaming is not configured on this gateway", Code.Unimplemented);
          },
    });
  };

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
    ],
    readiness: async () => {
      const res = await fetch(new URL("/readyz", deps.sessionServiceUrl), {
        signal: AbortSignal.timeout(2_000),
      });
      if (!res.ok) throw new Error(`session service not ready (${res.status})`);
    },
  });

  return {
    handler,
    close: () => shutdown.abort(),
  };
}
