# SPDX-License-Identifier: GPL-3.0-or-later
# bash completion for iotgwctl: its commands, their options, and the ids of enrolled devices
# (asked of iotgwd with `iotgwctl devices`; nothing when it is not running or not readable).

_iotgwctl_devices() {
  iotgwctl devices 2>/dev/null | while read -r id _; do printf '%s\n' "$id"; done
}

_iotgwctl() {
  local cur prev words cword
  if declare -F _init_completion >/dev/null; then
    _init_completion -s || return
  else
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD - 1]}
    words=("${COMP_WORDS[@]}")
    cword=$COMP_CWORD
  fi
  local commands="devices show status enroll set-policy remove quarantine release reload watch"
  local command="" position=0 i
  for ((i = 1; i < cword; i++)); do
    case ${words[i]} in
    --reason | --count) ((i++)) ;;
    -*) ;;
    *)
      if [[ -z $command ]]; then
        command=${words[i]}
      else
        ((position++))
      fi
      ;;
    esac
  done
  case $prev in
  --reason | --count)
    return # free text, a number
    ;;
  esac
  if [[ $cur == -* ]]; then
    local options="--json --help --version"
    case $command in
    quarantine) options+=" --reason" ;;
    watch) options+=" --count" ;;
    esac
    mapfile -t COMPREPLY < <(compgen -W "$options" -- "$cur")
    return
  fi
  if [[ -z $command ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$commands" -- "$cur")
    return
  fi
  case $command:$position in
  show:0 | remove:0 | quarantine:0 | release:0 | set-policy:0)
    mapfile -t COMPREPLY < <(compgen -W "$(_iotgwctl_devices)" -- "$cur")
    ;;
  enroll:1 | set-policy:1)
    mapfile -t COMPREPLY < <(compgen -f -- "$cur")
    ;;
  esac
}

complete -F _iotgwctl iotgwctl
