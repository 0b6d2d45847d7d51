#!/usr/bin/env bash
# Copies the working tree of SRC (what git tracks plus untracked files git does not ignore,
# i.e. no .venv, workdir/, caches) into DEST, for `tpu_vm.sh install` to scp to every worker.
# Outside a git checkout it copies SRC minus .git, virtual environments, workdir and caches.
#
#   launch/stage_tree.sh SRC DEST
#
# Exit codes: 0 done, 2 usage error, 1 copy failed.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 SRC DEST" >&2
  exit 2
fi
src=$1
dest=$2
if [[ ! -d $src ]]; then
  echo "error: source directory '$src' does not exist" >&2
  exit 2
fi
mkdir -p "$dest"

if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # Tracked (minus files deleted in the working tree) + untracked-but-not-ignored files.
  git -C "$src" ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do
        if [[ -e "$src/$f" || -L "$src/$f" ]]; then printf '%s\0' "$f"; fi
      done \
    | tar -C "$src" --null -T - -cf - \
    | tar -C "$dest" -xf -
else
  tar -C "$src" -cf - --exclude=.git --exclude=.venv --exclude=venv --exclude=workdir \
    --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache --exclude=.ruff_cache . \
    | tar -C "$dest" -xf -
fi
