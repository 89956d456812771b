#!/usr/bin/env bash
# Runs the README's walk-through (the fenced block after `<!-- walkthrough -->`) as written, line by line and in
# order, in a fresh temporary folder, offline; stops at the first line that fails. Usage:
#   scripts/readme_walkthrough.sh [README.md]      (CNET: the command to run, default `cnet`)
set -euo pipefail
readme="$(cd "$(dirname "${1:-README.md}")" && pwd)/$(basename "${1:-README.md}")"
cnet="${CNET:-cnet}"
work="$(mktemp -d "${TMPDIR:-/tmp}/cnet-walkthrough.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# the block: lines between the marker's opening fence and its closing fence; `#` comments and blank lines skipped
mapfile -t lines < <(awk '/<!-- walkthrough -->/{on=1; next} on && /^```/{n++; if (n==2) exit; next} on && n==1' "$readme" \
                     | sed -e 's/[[:space:]]*#.*$//' -e '/^[[:space:]]*$/d')
[ "${#lines[@]}" -gt 0 ] || { echo "no walk-through block in $readme" >&2; exit 2; }
cd "$work"
for line in "${lines[@]}"; do
  echo "+ $line" >&2
  [[ "$line" == cnet\ * ]] || { echo "not a cnet line: $line" >&2; exit 2; }
  eval "$cnet ${line#cnet }"
done
echo "walk-through: ${#lines[@]} lines passed in $work" >&2
