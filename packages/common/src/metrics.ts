import { collectDefaultMetrics, Registry } from "prom-client";

/** A registry per service (several services can share one process) with process metrics. */
export function createMetricsRegistry(service: string): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  collectDefaultMetrics({ register: registry });
  return registry;
}
