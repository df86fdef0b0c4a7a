/**
 * When a callback that failed is tried again: a schedule of delays after each failed
 * attempt, over hours (the Standard Webhooks / Svix schedule by default), a Retry-After
 * honoured when it asks for longer, and a little jitter so receivers that came back are
 * not hit by every delivery at once. Pure.
 */

/** Delays after the 1st, 2nd, … failed attempt: 8 attempts over about 27.5 hours. */
export const DEFAULT_RETRY_SCHEDULE_MS: readonly number[] = [
  5_000,
  5 * 60_000,
  30 * 60_000,
  2 * 3_600_000,
  5 * 3_600_000,
  10 * 3_600_000,
  10 * 3_600_000,
];

/** A Retry-After beyond this is capped (a receiver cannot park a delivery for days). */
export const MAX_RETRY_AFTER_MS = 24 * 3_600_000;

/**
 * The delay before the next attempt after `attemptsMade` attempts (1 after the first),
 * or `undefined` when the schedule is used up and the delivery has failed for good.
 * `random` is in [0, 1): the delay is jittered by ±10 %.
 */
export function nextRetryDelayMs(
  schedule: readonly number[],
  attemptsMade: number,
  retryAfterMs: number | undefined,
  random: number,
): number | undefined {
  const base = schedule[attemptsMade - 1];
  if (base === undefined) return undefined;
  const jittered = Math.round(base * (0.9 + 0.2 * random));
  if (retryAfterMs === undefined) return jittered;
  return Math.max(jittered, Math.min(retryAfterMs, MAX_RETRY_AFTER_MS));
}

const UNIT_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };

/** Parses `5s,5m,30m,2h` (units ms, s, m, h) into milliseconds; throws naming the bad item. */
export function parseRetrySchedule(text: string): number[] {
  const items = text.split(",").map((s) => s.trim());
  if (items.length === 0 || items.length > 20) throw new Error("give 1 to 20 delays, e.g. 5s,5m,30m,2h");
  return items.map((item) => {
    const m = /^(\d+)(ms|s|m|h)$/.exec(item);
    if (!m) throw new Error(`"${item}" is not a delay like 500ms, 5s, 5m or 2h`);
    return Number(m[1]) * (UNIT_MS[m[2] as string] as number);
  });
}
