import { GitError, type GitStep } from "./git-error.js";

/** Branches a session may only push to when the caller explicitly asked for them. */
export const PROTECTED_BRANCHES: readonly string[] = ["main", "master"];

/**
 * The reference's rule (letters, digits, dots, dashes, underscores, slashes) tightened to
 * what `git check-ref-format --branch` accepts, so a name can never be read as an option
 * or a revision expression when it reaches argv.
 */
export function isValidBranchName(name: string): boolean {
  if (name.length === 0 || name.length > 255) return false;
  if (!/^[A-Za-z0-9._/-]+$/.test(name)) return false;
  if (name.startsWith("-") || name === "HEAD" || name.includes("..") || name.endsWith(".")) return false;
  return name.split("/").every((part) => part.length > 0 && !part.startsWith(".") && !part.endsWith(".lock"));
}

export function assertBranchName(name: string, step: GitStep): void {
  if (!isValidBranchName(name)) throw new GitError(step, `"${name}" is not a valid branch name`);
}
