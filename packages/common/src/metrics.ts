import { collectDefaultMetrics, Registry } from "prom-client";

/**
 * A registry per service (several services can share one process) with process metrics.
 * Every series carries `component` (gateway, session, sandbox-manager, token): not
 * `service`, which Prometheus' Kubernetes discovery sets on every target.
 */
export function createMetricsRegistry(component: string): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ component });
  collectDefaultMetrics({ register: registry });
  return registry;
}
