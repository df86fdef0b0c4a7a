import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { colourEnabled, paint } from "./colour.js";
import { main } from "./main.js";

async function cli(...argv: string[]): Promise<{ code: number; out: string }> {
  const out: string[] = [];
  const io = {
    out: (l: string) => out.push(l),
    err: (l: string) => out.push(l),
    isTTY: false,
    colour: false,
    env: {},
  };
  const code = await main(argv, io);
  return { code, out: out.join("\n") };
}

describe("kilo-cloud", () => {
  it("prints its package's version", async () => {
    expect(await cli("--version")).toEqual({ code: 0, out: "0.1.0" });
  });

  it("has help per command, and a command list", async () => {
    const run = await cli("run", "--help");
    expect(run.out).toMatch(/^usage: kilo-cloud run --repo OWNER\/NAME \| --git-url URL --prompt TEXT/);
    expect(run.out).not.toContain("list your sessions");
    expect((await cli("help", "watch")).out).toContain("usage: kilo-cloud watch SESSION [--from ID]");
    const all = await cli("--help");
    for (const c of ["run", "send", "watch", "interrupt", "get", "delete", "ls", "completion"])
      expect(all.out).toContain(`\n  ${c}`);
  });

  it("prints completion scripts that bash and zsh accept", async () => {
    const bash = await cli("completion", "bash");
    const words = execFileSync(
      "bash",
      [
        "-c",
        `${bash.out}\nCOMP_WORDS=(kilo-cloud run --gi); COMP_CWORD=2; _kilo_cloud; echo "\${COMPREPLY[@]}"`,
      ],
      { encoding: "utf8" },
    );
    expect(words.trim()).toBe("--git-url");
    expect((await cli("completion", "zsh")).out).toContain("compdef _kilo_cloud kilo-cloud");
    await expect(cli("completion", "fish")).rejects.toThrow(/bash or zsh/);
  });

  it("colours on a terminal, not with NO_COLOR or when piped", () => {
    expect(colourEnabled(true, {})).toBe(true);
    expect(colourEnabled(true, { NO_COLOR: "1" })).toBe(false);
    expect(colourEnabled(false, {})).toBe(false);
    expect(paint("✗ failed", true)).toBe("\x1b[31m✗ failed\x1b[0m");
    expect(paint("✗ failed", false)).toBe("✗ failed");
  });
});
