export * from "./event-log.js";
export * from "./jetstream-event-log.js";
