#!/usr/bin/env bash
# Cloud TPU launcher for sif_jax: create a TPU VM / pod slice, install the package on every
# worker, run `python -m sif_jax.train` on all workers at once, copy results back, delete.
# Run `launch/tpu_vm.sh --help` for usage; launch/README.md has the walk-through.
#
# Runtime (software) versions default per TPU generation, as listed in
# https://cloud.google.com/tpu/docs/runtimes ("PyTorch and JAX" table):
#   v6e (Trillium) v2-alpha-tpuv6e | v5p v2-alpha-tpuv5 | v5e v2-alpha-tpuv5-lite |
#   v4 and older tpu-ubuntu2204-base
# Chips/hosts per accelerator type: https://cloud.google.com/tpu/docs/v5p (v5p-N counts
# TensorCores, 2 per chip, 4 chips per host), https://cloud.google.com/tpu/docs/v5e
# (v5litepod-N counts chips; multi-host slices have 4 chips per host).
set -euo pipefail

readonly PROG=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly EXIT_USAGE=2 EXIT_ENV=3

usage() {
  cat <<EOF
Usage: $PROG COMMAND --name NAME --zone ZONE [options] [-- TRAIN_ARGS...]

Commands
  create     create the TPU VM / pod slice        (needs --accelerator-type)
  install    copy the code to every worker and pip install -e '.[tpu]' in ~/REMOTE_DIR/.venv
  run        python -m sif_jax.train on every worker at once (--worker=all)
  stop       SIGTERM the training processes on all workers (they save a checkpoint and exit);
             with --force SIGKILL them and remove /tmp/libtpu_lockfile ("TPU busy")
  logs       tail the training logs (default --worker=0)
  exec       run the command after -- on the workers (default --worker=all), in REMOTE_DIR;
             a single quoted word is shell code: -- 'pip list | grep jax'
  copy-back  copy logs and the workdir (metrics, summary; checkpoints with --with-checkpoints)
             to --dest
  delete     delete the TPU VM
  all        create, install, run, copy-back, delete (--keep: do not delete; a failed run
             copies back and keeps the VM for debugging)

Required
  --name NAME               TPU VM name (lower case letters, digits, '-')
  --zone ZONE               e.g. us-east5-a (v5p), us-west4-a (v5e), us-central2-b (v4)
  --accelerator-type TYPE   create/all: v4-8, v5litepod-16, v5p-8, v5p-64, v6e-8, ...

Create
  --version VERSION         runtime image (default by generation: v2-alpha-tpuv5 for v5p,
                            v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv6e for v6e,
                            tpu-ubuntu2204-base for v4 and older)
  --spot | --preemptible    spot / (legacy) preemptible capacity
  --create-arg ARG          extra argument for 'gcloud ... create' (repeatable), e.g.
                            --create-arg=--network=my-net --create-arg=--internal-ips

Install
  --src DIR                 local tree to copy (default: this repository, $(cd "$SCRIPT_DIR/.." && pwd))
                            only git-tracked and untracked-not-ignored files are copied
  --git URL                 clone URL on every worker instead of copying the local tree
  --ref REF                 branch, tag or commit for --git (default: the remote's HEAD)
  --python BIN              Python >= 3.11 on the workers (default python3.11; installed
                            with apt if missing)
  --extras LIST             pip extras (default tpu)
  --fetch GCS=DIR           before training, gcloud storage rsync GCS to DIR on every worker
                            (repeatable), e.g. the HF checkpoint and tokenizer:
                            --fetch gs://b/Qwen2.5-VL-7B-Instruct=/home/\$USER/qwen7b

Run
  --config FILE             config file (default configs/grpo.py)
  --workdir DIR             --config.workdir (default workdir/tpu, on each worker's disk under
                            REMOTE_DIR); use gs://bucket/path on multi-host slices
  --config.KEY=VALUE        config override, passed through (also accepted after --)
  --env KEY=VALUE           environment variable for the training processes (repeatable)
  --detach                  start in the background (nohup) and return; see 'logs', 'stop'

Copy-back
  --dest DIR                local directory (default ./tpu_runs/NAME)
  --with-checkpoints        also copy orbax checkpoints from a gs:// workdir (can be large)

Common
  --project PROJECT         GCP project (default: gcloud's configured project)
  --remote-dir NAME         directory under the workers' home (default sif_jax)
  --worker W                worker(s) for exec/logs: all, 0, 0,2, 1-3
  --force                   stop: SIGKILL instead of SIGTERM
  --timeout SECONDS         stop: how long to wait for processes to exit (default 300)
  --dry-run                 print every command (prefixed '+ ') instead of running it
  -h, --help                this help

Exit codes: 0 success, 2 usage error (message names the flag), 3 gcloud not found,
otherwise the exit status of the failing command.

Example
  $PROG all --name sif-v5p --zone us-east5-a --accelerator-type v5p-8 --spot \\
      --workdir gs://my-bucket/sif/run1 --config.grpo.steps=200 --config.mesh.fsdp=4
EOF
}

die_usage() {
  echo "$PROG: error: $*" >&2
  echo "Run '$PROG --help' for usage." >&2
  exit "$EXIT_USAGE"
}

info() { echo "$PROG: $*" >&2; }

# Shell-quotes one word for display and for remote bash command lines.
shquote() {
  local s=$1
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

join_dquoted() {
  local out="" w
  for w in "$@"; do out+="${out:+ }$(dquote "$w")"; done
  printf '%s' "$out"
}

join_quoted() {
  local out="" w
  for w in "$@"; do out+="${out:+ }$(shquote "$w")"; done
  printf '%s' "$out"
}

# Quotes one word for a remote bash command line with double quotes, so that the remote
# command (itself shown in single quotes) stays readable.
dquote() {
  local s=$1
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  else
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//\$/\\\$}
    s=${s//\`/\\\`}
    printf '"%s"' "$s"
  fi
}

# Prints a command ('+ ' and its words, quoted); in dry-run mode that is all it does.
run_cmd() {
  if ((DRY_RUN)); then
    printf '+ %s\n' "$(join_quoted "$@")"
    return 0
  fi
  printf '+ %s\n' "$(join_quoted "$@")" >&2
  local rc=0
  "$@" || rc=$?
  if ((rc != 0)); then
    echo "$PROG: error: command failed with exit status $rc: $1 ${2:-} ${3:-} ${4:-} ${5:-}" >&2
    exit "$rc"
  fi
}

# --- accelerator types -----------------------------------------------------------------
# Echoes "GENERATION COUNT" for TYPE, or fails.
parse_type() {
  local t=$1
  if [[ $t =~ ^(v2|v3|v4|v5p|v5litepod|v5e|v6e)-([0-9]+)$ ]]; then
    echo "${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
  else
    return 1
  fi
}

default_version() {
  local gen
  read -r gen _ <<<"$(parse_type "$1")"
  case $gen in
    v6e) echo v2-alpha-tpuv6e ;;
    v5p) echo v2-alpha-tpuv5 ;;
    v5litepod | v5e) echo v2-alpha-tpuv5-lite ;;
    v2 | v3 | v4) echo tpu-ubuntu2204-base ;;
  esac
}

# "CHIPS HOSTS" (JAX devices = chips; v2/v3 expose one device per TensorCore).
chips_hosts() {
  local gen n chips hosts
  read -r gen n <<<"$(parse_type "$1")"
  case $gen in
    v2 | v3) chips=$((n / 2)); hosts=$(((n + 7) / 8)) ;;
    v4 | v5p) chips=$((n / 2)); hosts=$(((chips + 3) / 4)) ;;
    v5litepod | v5e | v6e)
      chips=$n
      if ((n <= 8)); then hosts=1; else hosts=$((n / 4)); fi
      ;;
  esac
  echo "$chips $hosts"
}

# --- arguments -------------------------------------------------------------------------
COMMAND="" NAME="" ZONE="" PROJECT="" ACCEL="" VERSION="" SPOT=0 PREEMPTIBLE=0
SRC="" GIT_URL="" GIT_REF="" PYTHON_BIN=python3.11 EXTRAS=tpu REMOTE_DIR=sif_jax
CONFIG=configs/grpo.py WORKDIR="" DETACH=0 DEST="" WITH_CKPT=0 WORKER="" FORCE=0
STOP_TIMEOUT=300 KEEP=0 DRY_RUN=0
CREATE_ARGS=() FETCHES=() ENVS=() OVERRIDES=() REST=()

needs_value() { # OPT HAVE_VALUE
  [[ $2 == 1 ]] || die_usage "$1 needs a value"
}

while (($#)); do
  arg=$1
  shift
  opt=$arg val="" has_val=0
  case $arg in
    --config.*)
      OVERRIDES+=("$arg")
      continue
      ;;
    --) REST=("$@"); break ;;
    --*=*) opt=${arg%%=*} val=${arg#*=} has_val=1 ;;
  esac
  takes_value=1
  case $opt in
    --name | --zone | --project | --accelerator-type | --version | --create-arg | --src | --git | --ref | \
      --python | --extras | --fetch | --config | --workdir | --env | --dest | --remote-dir | --worker | --timeout)
      # The next word is the value unless it looks like another option (--create-arg
      # values are gcloud flags themselves).
      if ((!has_val)) && (($#)) && [[ $1 != -* || $opt == --create-arg ]]; then
        val=$1 has_val=1
        shift
      fi
      needs_value "$opt" "$has_val"
      ;;
    *) takes_value=0 ;;
  esac
  if ((!takes_value)) && ((has_val)); then
    die_usage "$opt takes no value"
  fi
  case $opt in
    -h | --help) usage; exit 0 ;;
    --name) NAME=$val ;;
    --zone) ZONE=$val ;;
    --project) PROJECT=$val ;;
    --accelerator-type) ACCEL=$val ;;
    --version) VERSION=$val ;;
    --spot) SPOT=1 ;;
    --preemptible) PREEMPTIBLE=1 ;;
    --create-arg) CREATE_ARGS+=("$val") ;;
    --src) SRC=$val ;;
    --git) GIT_URL=$val ;;
    --ref) GIT_REF=$val ;;
    --python) PYTHON_BIN=$val ;;
    --extras) EXTRAS=$val ;;
    --fetch) FETCHES+=("$val") ;;
    --config) CONFIG=$val ;;
    --workdir) WORKDIR=$val ;;
    --env) ENVS+=("$val") ;;
    --detach) DETACH=1 ;;
    --dest) DEST=$val ;;
    --with-checkpoints) WITH_CKPT=1 ;;
    --remote-dir) REMOTE_DIR=$val ;;
    --worker) WORKER=$val ;;
    --force) FORCE=1 ;;
    --timeout) STOP_TIMEOUT=$val ;;
    --keep) KEEP=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -*) die_usage "unknown option $opt" ;;
    *)
      if [[ -z $COMMAND ]]; then COMMAND=$arg; else die_usage "unexpected argument '$arg'"; fi
      ;;
  esac
done

[[ -n $COMMAND ]] || die_usage "no command given (create, install, run, stop, logs, exec, copy-back, delete, all)"
case $COMMAND in
  create | install | run | stop | logs | exec | copy-back | delete | all) ;;
  *) die_usage "unknown command '$COMMAND' (create, install, run, stop, logs, exec, copy-back, delete, all)" ;;
esac

# Train args after `--` count as overrides for run/all; exec takes them as the remote command.
if [[ $COMMAND == exec ]]; then
  ((${#REST[@]})) || die_usage "exec needs a command after --, e.g. $PROG exec --name N --zone Z -- nproc"
  ((${#OVERRIDES[@]} == 0)) || die_usage "--config.* overrides only apply to run/all"
else
  OVERRIDES+=("${REST[@]}")
fi

# A --config.workdir=... override is the workdir (the last one wins, as in ml_collections).
for o in "${OVERRIDES[@]}"; do
  if [[ $o == --config.workdir=* ]]; then WORKDIR=${o#--config.workdir=}; fi
done
filtered=()
for o in "${OVERRIDES[@]}"; do
  [[ $o == --config.workdir=* ]] || filtered+=("$o")
done
OVERRIDES=("${filtered[@]}")
WORKDIR=${WORKDIR:-workdir/tpu}

# --- validation --------------------------------------------------------------------------
missing=()
[[ -n $NAME ]] || missing+=(--name)
[[ -n $ZONE ]] || missing+=(--zone)
if [[ $COMMAND == create || $COMMAND == all ]]; then
  [[ -n $ACCEL ]] || missing+=(--accelerator-type)
fi
if ((${#missing[@]})); then
  die_usage "'$COMMAND' needs ${missing[*]}"
fi
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die_usage "--name '$NAME': use lower case letters, digits and '-', starting with a letter"
[[ $ZONE =~ ^[a-z0-9-]+$ ]] || die_usage "--zone '$ZONE' is not a zone name (e.g. us-east5-a)"
if [[ -n $ACCEL ]]; then
  parse_type "$ACCEL" >/dev/null ||
    die_usage "--accelerator-type '$ACCEL': expected e.g. v4-8, v5litepod-16, v5p-8, v5p-64, v6e-8"
  if [[ -z $VERSION ]]; then VERSION=$(default_version "$ACCEL"); fi
fi
((SPOT + PREEMPTIBLE <= 1)) || die_usage "--spot and --preemptible are mutually exclusive"
[[ $REMOTE_DIR =~ ^[A-Za-z0-9._-]+$ && $REMOTE_DIR != . && $REMOTE_DIR != .. ]] ||
  die_usage "--remote-dir '$REMOTE_DIR': a single directory name under the workers' home"
[[ $STOP_TIMEOUT =~ ^[0-9]+$ ]] || die_usage "--timeout '$STOP_TIMEOUT': whole seconds"
[[ -z $WORKER || $WORKER == all || $WORKER =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] ||
  die_usage "--worker '$WORKER': all, or worker numbers such as 0, 0,2 or 1-3"
[[ -z $GIT_REF || -n $GIT_URL ]] || die_usage "--ref needs --git URL"
for e in "${ENVS[@]}"; do
  [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die_usage "--env '$e': expected KEY=VALUE"
done
for f in "${FETCHES[@]}"; do
  [[ $f == gs://*=?* ]] || die_usage "--fetch '$f': expected gs://bucket/path=/dest/dir"
done
if [[ $COMMAND == install || $COMMAND == all ]] && [[ -z $GIT_URL ]]; then
  SRC=${SRC:-$(cd "$SCRIPT_DIR/.." && pwd)}
  [[ -d $SRC ]] || die_usage "--src '$SRC' is not a directory"
  [[ -f $SRC/pyproject.toml ]] || die_usage "--src '$SRC' has no pyproject.toml (not a sif_jax checkout?)"
fi
DEST=${DEST:-./tpu_runs/$NAME}

if ((!DRY_RUN)) && ! command -v gcloud >/dev/null 2>&1; then
  echo "$PROG: error: gcloud not found on PATH; install the Google Cloud CLI" \
    "(https://cloud.google.com/sdk/docs/install) or use --dry-run" >&2
  exit "$EXIT_ENV"
fi

# --- gcloud helpers ----------------------------------------------------------------------
TPU=(gcloud compute tpus tpu-vm)
LOC=(--zone="$ZONE")
if [[ -n $PROJECT ]]; then LOC+=(--project="$PROJECT"); fi

ssh_workers() { # WORKER REMOTE_COMMAND
  run_cmd "${TPU[@]}" ssh "$NAME" "${LOC[@]}" --worker="$1" --command "$2"
}

# --- commands ----------------------------------------------------------------------------
do_create() {
  local chips hosts
  read -r chips hosts <<<"$(chips_hosts "$ACCEL")"
  info "$ACCEL: $chips chips (JAX devices), $hosts host(s); runtime $VERSION"
  local cmd=("${TPU[@]}" create "$NAME" "${LOC[@]}" --accelerator-type="$ACCEL" --version="$VERSION")
  if ((SPOT)); then cmd+=(--spot); fi
  if ((PREEMPTIBLE)); then cmd+=(--preemptible); fi
  cmd+=("${CREATE_ARGS[@]}")
  run_cmd "${cmd[@]}"
}

install_script() {
  local py ext s
  py=$(dquote "$PYTHON_BIN")
  ext=$(dquote ".[${EXTRAS}]")
  s="set -euo pipefail; cd $(dquote "$REMOTE_DIR")"
  s+="; if ! command -v $py >/dev/null; then sudo apt-get -o DPkg::Lock::Timeout=600 update -qq"
  s+=" && sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq"
  s+=" $py $(dquote "${PYTHON_BIN}-venv"); fi"
  s+="; if [ ! -x .venv/bin/python ]; then $py -m venv .venv; fi"
  s+="; .venv/bin/python -m pip install -q -U pip"
  # gcsfs: orbax/etils need it for gs:// paths when TensorFlow is not installed.
  s+="; .venv/bin/python -m pip install -q -e $ext gcsfs"
  local f src dst
  for f in "${FETCHES[@]}"; do
    src=${f%=*} dst=${f##*=}
    s+="; mkdir -p $(dquote "$dst") && gcloud storage rsync --recursive $(dquote "$src") $(dquote "$dst")"
  done
  s+="; .venv/bin/python -c \"import jax, sif_jax; print(jax.__version__)\""
  printf '%s' "$s"
}

do_install() {
  local remote_install
  remote_install=$(install_script)
  if [[ -n $GIT_URL ]]; then
    local d url checkout
    d=$(dquote "$REMOTE_DIR")
    url=$(dquote "$GIT_URL")
    if [[ -n $GIT_REF ]]; then
      local r
      r=$(dquote "$GIT_REF")
      checkout="git -C $d checkout --quiet --detach origin/$r 2>/dev/null || git -C $d checkout --quiet --detach $r"
    else
      checkout="git -C $d checkout --quiet --detach origin/HEAD"
    fi
    ssh_workers all "set -euo pipefail; if [ -d $d/.git ]; then git -C $d fetch --quiet --tags origin; else git clone --quiet $url $d; fi; $checkout; ${remote_install#set -euo pipefail; }"
  else
    local stage
    if ((DRY_RUN)); then
      stage="${TMPDIR:-/tmp}/sif_jax-stage.XXXXXX"
    else
      stage=$(mktemp -d "${TMPDIR:-/tmp}/sif_jax-stage.XXXXXX")
      # shellcheck disable=SC2064  # expand now: the path is fixed
      trap "rm -rf $(shquote "$stage")" EXIT
    fi
    run_cmd "$SCRIPT_DIR/stage_tree.sh" "$SRC" "$stage/$REMOTE_DIR"
    run_cmd "${TPU[@]}" scp --recurse --worker=all "${LOC[@]}" "$stage/$REMOTE_DIR" "$NAME:"
    ssh_workers all "$remote_install"
  fi
}

train_args() {
  local a=(python -m sif_jax.train --config="$CONFIG") e
  printf '%s --config.workdir=%s' "$(join_dquoted "${a[@]}")" "$(dquote "$WORKDIR")"
  # Multi-host: the worker count from the TPU metadata ($n, set by run_script) makes
  # sif_jax call jax.distributed.initialize(), which discovers coordinator and process id.
  # shellcheck disable=SC2016  # $n is expanded on the worker
  printf ' --config.distributed.num_processes="$n"'
  for e in "${OVERRIDES[@]}"; do printf ' %s' "$(dquote "$e")"; done
}

run_script() {
  local s e md
  md="http://metadata.google.internal/computeMetadata/v1/instance/attributes/worker-network-endpoints"
  s="set -eo pipefail; cd $(dquote "$REMOTE_DIR"); . .venv/bin/activate; mkdir -p logs"
  s+="; n=\$(curl -sf -H Metadata-Flavor:Google $md 2>/dev/null | tr , \"\\n\" | grep -c . || true)"
  s+="; [ \"\${n:-0}\" -ge 1 ] || n=1"
  if [[ $WORKDIR != gs://* ]]; then
    s+="; if [ \"\$n\" -gt 1 ]; then echo \"warning: $(dquote "$WORKDIR") is on the local disk of each worker;"
    s+=" multi-host checkpoints need --workdir=gs://...\" >&2; fi"
  fi
  for e in "${ENVS[@]}"; do s+="; export $(dquote "$e")"; done
  # shellcheck disable=SC2016  # expanded on the worker
  local log='logs/train-$(hostname).log'
  if ((DETACH)); then
    s+="; nohup setsid $(train_args) > $log 2>&1 < /dev/null &"
    s+=" echo \"\$(hostname): started pid \$! (log ~/$(dquote "$REMOTE_DIR")/$log)\""
  else
    s+="; $(train_args) 2>&1 | tee -a $log"
  fi
  printf '%s' "$s"
}

do_run() {
  ssh_workers all "$(run_script)"
}

do_stop() {
  local sig=TERM extra=""
  if ((FORCE)); then sig=KILL extra="; sudo rm -f /tmp/libtpu_lockfile"; fi
  # Processes holding the TPU devices (v4: /dev/accel*, v5e/v5p/v6e: /dev/vfio/*) plus any
  # sif_jax.train of this user (e.g. one hanging in jax.distributed.initialize).
  local s
  s="pids=\$( { sudo lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null; pgrep -u \"\$USER\" -f \"^([^ ]*/)?python[0-9.]* -m sif_jax[.]train\"; } | sort -u | tr \"\\n\" \" \" || true)"
  s+="; if [ -n \"\${pids// /}\" ]; then echo \"\$(hostname): SIG$sig \$pids\"; sudo kill -$sig \$pids || true"
  s+="; alive=1; for i in \$(seq $STOP_TIMEOUT); do alive=0; for p in \$pids; do if sudo kill -0 \$p 2>/dev/null; then alive=1; fi; done"
  s+="; [ \$alive = 0 ] && break; sleep 1; done"
  s+="; if [ \$alive = 1 ]; then echo \"\$(hostname): still running after ${STOP_TIMEOUT}s: \$pids (use --force)\" >&2; exit 1; fi"
  s+="; else echo \"\$(hostname): no training process\"; fi$extra"
  ssh_workers all "$s"
}

do_logs() {
  ssh_workers "${WORKER:-0}" "tail -n 50 $(dquote "$REMOTE_DIR")/logs/train-*.log"
}

do_exec() {
  # One word after -- is shell code (pipes, redirections); several are a command and its args.
  local code
  if ((${#REST[@]} == 1)); then code=${REST[0]}; else code=$(join_dquoted "${REST[@]}"); fi
  ssh_workers "${WORKER:-all}" "cd $(dquote "$REMOTE_DIR") && $code"
}

do_copy_back() {
  local base
  base=$(basename "$WORKDIR")
  run_cmd mkdir -p "$DEST"
  if [[ $WORKDIR == gs://* ]]; then
    # scp cannot copy from several workers at once: each worker uploads its log next to the
    # metrics, then one rsync brings everything back.
    ssh_workers all "cd $(dquote "$REMOTE_DIR") && gcloud storage cp logs/train-*.log $(dquote "${WORKDIR%/}/logs/")"
    local cmd=(gcloud storage rsync --recursive)
    if ((!WITH_CKPT)); then cmd+=(--exclude='^(sft|grpo)/'); fi
    if [[ -n $PROJECT ]]; then cmd+=(--project="$PROJECT"); fi
    run_cmd "${cmd[@]}" "$WORKDIR" "$DEST/$base"
  else
    local remote=$WORKDIR
    # shellcheck disable=SC2088  # '~' is the worker's home, expanded there
    [[ $remote == /* ]] || remote="~/$REMOTE_DIR/$remote"
    run_cmd "${TPU[@]}" scp --recurse --worker=0 "${LOC[@]}" "$NAME:~/$REMOTE_DIR/logs" "$NAME:$remote" "$DEST/"
  fi
  info "results in $DEST"
}

do_delete() {
  run_cmd "${TPU[@]}" delete "$NAME" "${LOC[@]}" --quiet
}

# Config typos and bad values fail here, before a VM is created or a run starts, when this machine
# can import sif_jax with $SIF_PYTHON (default python3); paths are checked on the workers.
validate_locally() {
  local py=${SIF_PYTHON:-python3}
  if ! (cd "$SCRIPT_DIR/.." && "$py" -c 'import sif_jax.run_config' >/dev/null 2>&1); then
    echo "$PROG: note: sif_jax is not importable with $py here; config overrides are checked on the workers" >&2
    return 0
  fi
  if ! (cd "$SCRIPT_DIR/.." && JAX_PLATFORMS=cpu "$py" -m sif_jax.train --config="$CONFIG" "${OVERRIDES[@]}" \
        --validate_only >/dev/null); then
    echo "$PROG: the config above is invalid; nothing was created or started" >&2
    exit "$EXIT_USAGE"
  fi
}

do_all() {
  validate_locally
  do_create
  do_install
  local rc=0
  (do_run) || rc=$?
  do_copy_back
  if ((rc != 0)); then
    info "training failed (exit $rc); keeping $NAME for debugging ('$PROG delete --name $NAME --zone $ZONE')"
    exit "$rc"
  fi
  if ((KEEP)); then
    info "keeping $NAME (--keep)"
  else
    do_delete
  fi
}

case $COMMAND in
  create) do_create ;;
  install) do_install ;;
  run) validate_locally; do_run ;;
  stop) do_stop ;;
  logs) do_logs ;;
  exec) do_exec ;;
  copy-back) do_copy_back ;;
  delete) do_delete ;;
  all) do_all ;;
esac
