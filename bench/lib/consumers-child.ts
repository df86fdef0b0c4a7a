/**
 * The raw baseline of the idle-stream memory measure in bench/events.ts: a process that
 * holds plain JetStream ordered consumers, configured as JetStreamEventLog.read does (one
 * per subject filter, `consume({max_messages: 512})`), each having received its first
 * message. Run with `node --expose-gc --import tsx` and an IPC channel:
 *   → {type: "open", stream, subjects}   ← {type: "opened", ms}
 *   → {type: "close"}                    ← {type: "closed"} (closes every consumer held)
 *   → {type: "mem"}                      ← {type: "mem", usage}
 *   → {type: "exit"}                     (also when the parent goes away)
 */
import { DeliverPolicy, jetstream } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { memoryAfterGc, type ParentMessage } from "./ipc.js";

const nc = await connect({ servers: process.env.BENCH_NATS_URL ?? "", name: "raw-consumers" });
const js = jetstream(nc);
const held: { close(): Promise<unknown> }[] = [];

async function open(stream: string, subject: string, single: boolean): Promise<void> {
  const consumer = await js.consumers.get(stream, {
    // A string becomes the server's `filter_subject`, an array its `filter_subjects`.
    filter_subjects: single ? subject : [subject],
    deliver_policy: DeliverPolicy.All,
  });
  const messages = await consumer.consume({ max_messages: 512 });
  held.push(messages);
  const first = new Promise<void>((resolve) => {
    void (async () => {
      for await (const _ of messages) {
        resolve();
      }
    })();
  });
  await first;
}

process.on("message", (m: ParentMessage) => {
  if (m.type === "mem") process.send?.({ type: "mem", usage: memoryAfterGc() });
  else if (m.type === "exit") void exit();
  else if (m.type === "close") {
    void Promise.all(held.splice(0).map((h) => h.close().catch(() => undefined))).then(() =>
      process.send?.({ type: "closed" }),
    );
  } else if (m.type === "open") {
    const t0 = performance.now();
    void (async () => {
      const queue = [...m.subjects];
      const worker = async () => {
        for (let s = queue.shift(); s !== undefined; s = queue.shift())
          await open(m.stream, s, m.single ?? false);
      };
      await Promise.all(Array.from({ length: 32 }, worker));
      process.send?.({ type: "opened", ms: performance.now() - t0 });
    })();
  }
});

async function exit(): Promise<void> {
  await Promise.all(held.map((h) => h.close().catch(() => undefined)));
  await nc.close().catch(() => undefined);
  process.exit(0);
}
process.on("disconnect", () => void exit());
process.send?.({ type: "ready" });
