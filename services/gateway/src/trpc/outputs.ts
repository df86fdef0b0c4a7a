import { type Timestamp, timestampMs } from "@bufbuild/protobuf/wkt";
import {
  ExecutionHealth,
  ExecutionStatus,
  type InitiateSessionResponse,
  type SendMessageResponse,
  type SessionInfo,
} from "@kilo-cloud/proto";

/** Our responses in the hosted product's output shapes (undefined fields are omitted). */

const ms = (t: Timestamp | undefined) => (t ? timestampMs(t) : undefined);

function defined<T extends Record<string, unknown>>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

const HEALTH: Record<ExecutionHealth, "healthy" | "stale" | "unknown"> = {
  [ExecutionHealth.UNSPECIFIED]: "unknown",
  [ExecutionHealth.HEALTHY]: "healthy",
  [ExecutionHealth.STALE]: "stale",
};

/** The active execution, or null (the hosted `execution` is always present). */
function execution(info: SessionInfo) {
  const run = info.runningExecution;
  if (!run) return null;
  return {
    id: run.executionId,
    status: "running" as const,
    startedAt: ms(run.startedAt) ?? 0,
    lastHeartbeat: ms(run.lastHeartbeatAt) ?? null,
    processId: null,
    error: null,
    health: HEALTH[run.health],
  };
}

export function sessionOutput(info: SessionInfo) {
  const count = (n: number) => (n > 0 ? n : undefined);
  return {
    ...defined({
      sessionId: info.cloudAgentSessionId,
      kiloSessionId: info.kiloSessionId || undefined,
      userId: info.userId,
      orgId: info.orgId,
      botId: info.botId,
      githubRepo: info.githubRepo,
      gitUrl: info.gitUrl,
      prompt: info.prompt || undefined,
      mode: info.mode,
      model: info.model,
      autoCommit: info.autoCommit,
      upstreamBranch: info.upstreamBranch,
      envVarCount: count(info.envVarCount),
      setupCommandCount: count(info.setupCommandCount),
      mcpServerCount: count(info.mcpServerCount),
      preparedAt: ms(info.preparedAt),
      initiatedAt: ms(info.initiatedAt),
    }),
    execution: execution(info),
    queuedCount: info.queueLength,
    timestamp: ms(info.updatedAt) ?? 0,
    version: Number(info.version),
  };
}

/** QueueAck: `started` when it runs now, `queued` behind another. */
export function queueAck(res: InitiateSessionResponse | SendMessageResponse) {
  return {
    executionId: res.executionId,
    cloudAgentSessionId: res.cloudAgentSessionId,
    status: res.status === ExecutionStatus.QUEUED ? ("queued" as const) : ("started" as const),
    streamUrl: `/stream?cloudAgentSessionId=${res.cloudAgentSessionId}`,
  };
}
