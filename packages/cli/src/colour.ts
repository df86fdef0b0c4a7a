/**
 * Colour for a person at a terminal: on when the output is a TTY, off with NO_COLOR (any
 * non-empty value, https://no-color.org) or when piped; FORCE_COLOR turns it on anyway.
 */
export function colourEnabled(isTTY: boolean, env: NodeJS.ProcessEnv): boolean {
  if (env.NO_COLOR) return false;
  if (env.FORCE_COLOR && env.FORCE_COLOR !== "0") return true;
  return isTTY && env.TERM !== "dumb";
}

const SGR: [prefix: string, code: string][] = [
  ["✓", "32"], // green: a tool call that worked
  ["✗", "31"], // red: errors
  ["■", "33"], // yellow: interrupted
  ["·", "2"], // dim: infrastructure steps
  ["  │", "2"], // dim: command output
  ["── ", "1"], // bold: the summary's heading
];

/** One rendered line, coloured by its leading mark. */
export function paint(line: string, enabled: boolean): string {
  if (!enabled) return line;
  const match = SGR.find(([prefix]) => line.startsWith(prefix));
  return match ? `\x1b[${match[1]}m${line}\x1b[0m` : line;
}
