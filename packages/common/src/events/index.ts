export * from "./event-log.js";
export * from "./jetstream-event-log.js";
export * from "./ordered-publisher.js";
export * from "./postgres-event-log.js";
export * from "./stored-event.js";
