export * from "./event-log.js";
export * from "./jetstream-event-log.js";
export * from "./postgres-event-log.js";
