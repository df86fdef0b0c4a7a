import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { internalError, type Pool, requireIdentity } from "@kilo-cloud/common";
import { type CallbackDeliverySchema, CallbackDeliveryStatus, type SessionService } from "@kilo-cloud/proto";
import { webhookId } from "../callbacks/standard-webhooks.js";
import { type DeliveryRow, listDeliveries, redeliver } from "../db/callback-deliveries.js";
import { findSession } from "../db/sessions.js";
import { owned } from "./ownership.js";

const STATUS: Record<DeliveryRow["status"], CallbackDeliveryStatus> = {
  pending: CallbackDeliveryStatus.PENDING,
  delivered: CallbackDeliveryStatus.DELIVERED,
  failed: CallbackDeliveryStatus.FAILED,
};

export function deliveryInfo(row: DeliveryRow): MessageInitShape<typeof CallbackDeliverySchema> {
  return {
    executionId: row.execution_id,
    webhookId: webhookId(row.execution_id),
    status: STATUS[row.status],
    attempts: row.attempts,
    ...(row.last_http_status !== null ? { lastHttpStatus: row.last_http_status } : {}),
    ...(row.last_error !== null ? { lastError: row.last_error } : {}),
    ...(row.status === "pending" ? { nextAttemptAt: timestampFromDate(row.next_attempt_at) } : {}),
    createdAt: timestampFromDate(row.created_at),
    updatedAt: timestampFromDate(row.updated_at),
  };
}

async function ownedSession(pool: Pool, sessionId: string, ctx: HandlerContext): Promise<string> {
  const { userId } = requireIdentity(ctx.values);
  const row = await findSession(pool, sessionId).catch((err: unknown) => {
    throw internalError("could not read the session", err);
  });
  owned(row, sessionId, userId);
  return userId;
}

/** ListCallbackDeliveries and RedeliverCallback: the dead letters of callbacks, visible and redeliverable. */
export function callbackDeliveryHandlers(deps: {
  pool: Pool;
  /** Looks for due deliveries at once (the outbox), after a redelivery. */
  onRedeliver?: () => void;
}): Pick<ServiceImpl<typeof SessionService>, "listCallbackDeliveries" | "redeliverCallback"> {
  const { pool } = deps;
  return {
    async listCallbackDeliveries(req, ctx) {
      const userId = await ownedSession(pool, req.cloudAgentSessionId, ctx);
      const rows = await listDeliveries(pool, req.cloudAgentSessionId, userId).catch((err: unknown) => {
        throw internalError("could not read the callback deliveries", err);
      });
      return { deliveries: rows.map(deliveryInfo) };
    },

    async redeliverCallback(req, ctx) {
      const userId = await ownedSession(pool, req.cloudAgentSessionId, ctx);
      const row = await redeliver(pool, req.cloudAgentSessionId, req.executionId, userId).catch(
        (err: unknown) => {
          throw internalError("could not schedule the redelivery", err);
        },
      );
      if (!row) {
        throw new ConnectError(`no callback for execution ${req.executionId} in this session`, Code.NotFound);
      }
      deps.onRedeliver?.();
      return { delivery: deliveryInfo(row) };
    },
  };
}
