import { COMMANDS, COMMON_OPTIONS } from "./commands.js";

/** `kilo-cloud completion bash|zsh`: a script to source (or put in a completions directory). */
export function completionScript(shell: string): string | undefined {
  const names = COMMANDS.map((c) => c.name).join(" ");
  const perCommand = COMMANDS.filter((c) => c.name !== "completion").map(
    (c) => `    ${c.name}) opts="${[...c.options, ...COMMON_OPTIONS].join(" ")}" ;;`,
  );
  if (shell === "bash") {
    return `# kilo-cloud bash completion: eval "$(kilo-cloud completion bash)"
_kilo_cloud() {
  local cur=\${COMP_WORDS[COMP_CWORD]} cmd=\${COMP_WORDS[1]} opts
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "${names} --help --version" -- "$cur"))
    return
  fi
  case "$cmd" in
${perCommand.join("\n")}
    completion) opts="bash zsh" ;;
    *) opts="" ;;
  esac
  COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -o default -F _kilo_cloud kilo-cloud
`;
  }
  if (shell === "zsh") {
    return `#compdef kilo-cloud
# kilo-cloud zsh completion: eval "$(kilo-cloud completion zsh)" (or save as _kilo-cloud in $fpath)
_kilo_cloud() {
  local cmd=\${words[2]} opts
  if (( CURRENT == 2 )); then
    compadd -- ${names} --help --version
    return
  fi
  case "$cmd" in
${perCommand.join("\n")}
    completion) opts="bash zsh" ;;
    *) opts="" ;;
  esac
  compadd -- \${=opts}
}
compdef _kilo_cloud kilo-cloud
`;
  }
  return undefined;
}
