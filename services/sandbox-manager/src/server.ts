import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import {
  createMetricsRegistry,
  createObservabilityInterceptor,
  createServiceAuthGate,
  createServiceHandler,
  createServiceTokenVerifier,
  createValidationInterceptor,
  type EventLog,
  type Logger,
  type NodeRequest,
  type NodeResponse,
  requireIdentity,
} from "@kilo-cloud/common";
import { SandboxService } from "@kilo-cloud/proto/sandbox";
import { Gauge } from "prom-client";
import { type Driver, type SandboxKey, sessionHome, workspacePath } from "./drivers/driver.js";
import { ExecutionRunner, type RepositoryTokens, type RunnerSettings } from "./execution/runner.js";

/** Service tokens addressed to sandbox-manager; the session service signs them. */
export const SANDBOX_SERVICE_AUDIENCE = "kilo-cloud-sandbox";
export const SESSION_SERVICE_ISSUER = "kilo-cloud-session";

export interface SandboxManagerDeps {
  driver: Driver;
  events: EventLog;
  logger: Logger;
  settings: RunnerSettings;
  serviceTokenPublicKey: string;
  tokens?: RepositoryTokens | undefined;
  /** Readiness of the event log (e.g. the NATS connection). */
  eventsReady?: () => Promise<void>;
}

export interface SandboxManagerApp {
  handler: (req: NodeRequest, res: NodeResponse) => void;
  runner: ExecutionRunner;
  /** Interrupts every running execution. */
  close(): Promise<void>;
}

function keyOf(
  sandbox: { userId: string; orgId?: string | undefined; botId?: string | undefined } | undefined,
): SandboxKey {
  if (!sandbox) throw new ConnectError("sandbox is required", Code.InvalidArgument);
  return { userId: sandbox.userId, orgId: sandbox.orgId, botId: sandbox.botId };
}

export async function createSandboxManager(deps: SandboxManagerDeps): Promise<SandboxManagerApp> {
  const metrics = createMetricsRegistry("sandbox-manager");
  const runner = new ExecutionRunner({
    driver: deps.driver,
    events: deps.events,
    logger: deps.logger,
    settings: deps.settings,
    tokens: deps.tokens,
  });
  new Gauge({
    name: "sandbox_running_executions",
    help: "Executions running in this sandbox-manager",
    registers: [metrics],
    collect() {
      this.set(runner.activeCount);
    },
  });
  const verify = await createServiceTokenVerifier(
    deps.serviceTokenPublicKey,
    SANDBOX_SERVICE_AUDIENCE,
    SESSION_SERVICE_ISSUER,
  );

  const routes = (router: ConnectRouter) => {
    router.service(SandboxService, {
      async startExecution(req, ctx) {
        const { userId } = requireIdentity(ctx.values);
        if (req.sandbox?.userId !== userId) {
          throw new ConnectError("the sandbox does not belong to the caller", Code.PermissionDenied);
        }
        const cap = deps.settings.maxRunningExecutions;
        if (cap !== undefined && runner.activeCount >= cap && !runner.isRunning(req.executionId)) {
          throw new ConnectError(
            `this sandbox-manager already runs its maximum of ${cap} executions; try again later`,
            Code.ResourceExhausted,
          );
        }
        runner.start(req);
        return { executionId: req.executionId };
      },
      async interrupt(req, ctx) {
        const { userId } = requireIdentity(ctx.values);
        if (keyOf(req.sandbox).userId !== userId) {
          throw new ConnectError("the sandbox does not belong to the caller", Code.PermissionDenied);
        }
        return runner.interrupt(req.executionId, req.cloudAgentSessionId, userId);
      },
      async removeSessionWorkspace(req, ctx) {
        const { userId } = requireIdentity(ctx.values);
        const key = keyOf(req.sandbox);
        if (key.userId !== userId)
          throw new ConnectError("the sandbox does not belong to the caller", Code.PermissionDenied);
        const sandbox = await deps.driver.ensureSandbox(key);
        const workspace = workspacePath(key, req.cloudAgentSessionId);
        const home = sessionHome(req.cloudAgentSessionId);
        const existed =
          (await deps.driver.exists(sandbox, workspace)) || (await deps.driver.exists(sandbox, home));
        await deps.driver.remove(sandbox, workspace);
        await deps.driver.remove(sandbox, home);
        return { removed: existed };
      },
    });
  };

  const handler = createServiceHandler({
    routes,
    interceptors: [createObservabilityInterceptor(deps.logger, metrics), createValidationInterceptor()],
    requestGate: createServiceAuthGate({ verify }),
    metrics,
    logger: deps.logger,
    readiness: async () => {
      await deps.eventsReady?.();
    },
  });

  return { handler, runner, close: () => runner.stopAll() };
}
