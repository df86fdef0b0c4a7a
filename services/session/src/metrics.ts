import type { Pool } from "@kilo-cloud/common";
import { Counter, Gauge, Histogram, type Registry } from "prom-client";

/**
 * What the session service tells operators (names are referenced by the chart's dashboard
 * and alert rules: deploy/helm/kilo-cloud-agent/templates/monitoring.yaml):
 * executions by outcome and how long they ran, how long messages wait in the queue, queue
 * depth and running executions (read from the database at scrape time, so every replica
 * reports the same truth), and callback deliveries by outcome with the dead letters kept.
 */
export interface SessionMetrics {
  executionFinished(outcome: string, startedAt: Date | null, finishedAt: Date | null): void;
  executionStarted(queuedAt: Date, startedAt: Date): void;
  callbackAttempt(outcome: "delivered" | "retry" | "failed"): void;
}

const DURATION_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1_200, 1_800, 3_600];
const WAIT_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 30, 60, 300, 900, 3_600];

/** Counts on the whole deployment, read when Prometheus scrapes. */
const SNAPSHOT = `SELECT
  (SELECT count(*) FROM session.executions WHERE status = 'queued')::int AS queued,
  (SELECT count(*) FROM session.executions WHERE status = 'started')::int AS running,
  (SELECT count(*) FROM session.callback_deliveries WHERE status = 'failed')::int AS dead,
  (SELECT count(*) FROM session.callback_deliveries WHERE status = 'pending')::int AS pending`;

export function createSessionMetrics(registry: Registry, pool: Pool): SessionMetrics {
  const finished = new Counter({
    name: "kilo_executions_finished_total",
    help: "Executions that reached a terminal status, by outcome (completed, failed, interrupted, expired)",
    labelNames: ["outcome"],
    registers: [registry],
  });
  const duration = new Histogram({
    name: "kilo_execution_duration_seconds",
    help: "From an execution's start to its terminal status, by outcome",
    labelNames: ["outcome"],
    buckets: DURATION_BUCKETS,
    registers: [registry],
  });
  const wait = new Histogram({
    name: "kilo_queue_wait_seconds",
    help: "From a message being queued to its execution starting",
    buckets: WAIT_BUCKETS,
    registers: [registry],
  });
  const deliveries = new Counter({
    name: "kilo_callback_attempts_total",
    help: "Callback delivery attempts, by outcome (delivered, retry, failed)",
    labelNames: ["outcome"],
    registers: [registry],
  });
  registerSnapshotGauges(registry, pool);
  return {
    executionFinished(outcome, startedAt, finishedAt) {
      finished.inc({ outcome });
      if (startedAt && finishedAt) {
        duration.observe({ outcome }, Math.max(0, finishedAt.getTime() - startedAt.getTime()) / 1000);
      }
    },
    executionStarted(queuedAt, startedAt) {
      wait.observe(Math.max(0, startedAt.getTime() - queuedAt.getTime()) / 1000);
    },
    callbackAttempt(outcome) {
      deliveries.inc({ outcome });
    },
  };
}

/** Gauges whose values come from one query per scrape (a failed query leaves them as they were). */
function registerSnapshotGauges(registry: Registry, pool: Pool): void {
  let snapshot: Promise<Record<string, number>> | undefined;
  const read = () => {
    snapshot ??= pool
      .query<Record<string, number>>(SNAPSHOT)
      .then((r) => r.rows[0] ?? {})
      .finally(() => {
        // One query serves the gauges of one scrape.
        setTimeout(() => {
          snapshot = undefined;
        }, 500).unref();
      });
    return snapshot;
  };
  const gauge = (name: string, help: string, column: string) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      async collect() {
        const row = await read().catch(() => undefined);
        if (row?.[column] !== undefined) this.set(Number(row[column]));
      },
    });
  gauge("kilo_queue_depth", "Messages waiting in session queues", "queued");
  gauge("kilo_executions_running", "Executions running now", "running");
  gauge("kilo_callback_dead_letters", "Callback deliveries that failed for good and are kept", "dead");
  gauge("kilo_callback_pending", "Callback deliveries waiting for their next attempt", "pending");
}
