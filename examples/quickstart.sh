#!/usr/bin/env bash
# The moreh-tools tour: an admin issues a token and an SDA, a user looks at it with moreh-smi and
# runs jobs through the priority scheduler on this machine's GPUs (simulated ones, clearly
# labelled, when it has no NVIDIA GPU).
#
# It works on its own state directory so it never touches a real one:
#   MOREH_HOME (default ./.moreh-quickstart, wiped first unless QUICKSTART_KEEP=1).
# Tools are taken from the PATH, or from the virtual environment this script is run with.
set -euo pipefail

bin_dir=${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/}
if [[ -z "$bin_dir" && -x .venv/bin/moreh_smclient ]]; then bin_dir=.venv/bin/; fi

export MOREH_HOME=${MOREH_HOME:-$PWD/.moreh-quickstart}
if [[ "${QUICKSTART_KEEP:-0}" != 1 ]]; then rm -rf "$MOREH_HOME"; fi
unset MOREH_SDA_TOKEN

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

smc() { say "moreh_smclient -c \"$1\""; "${bin_dir}moreh_smclient" -c "$1"; }

echo "moreh-tools quickstart - state in $MOREH_HOME"
py=${bin_dir:+${bin_dir}python}
"${py:-python3}" -c 'from moreh_tools.gpus import get_provider as g; p = g(); print(("SIMULATED GPUs - " if p.simulated else "GPUs - ") + p.description)'

# The admin side (master node).
say 'moreh_smclient -c "create token quickstart@example.com 10"'
created=$("${bin_dir}moreh_smclient" -c "create token quickstart@example.com 10")
echo "$created"
token=${created##*: }
token=${token%)}
smc "show sdamodel"
smc "create sda $token quickstart-sda 3"
smc "show token"

# The user side (a VM with the token).
export MOREH_SDA_TOKEN=$token
run "${bin_dir}moreh-smi"
run "${bin_dir}moreh-run" -- sh -c 'echo "job $MOREH_JOB_ID runs on GPUs $CUDA_VISIBLE_DEVICES"'

# A job that runs a while: moreh-smi shows it with the GPU memory it holds; a second job of the
# same SDA waits until the first ends (one process per SDA).
say "moreh-run -- sleep 3 &"
"${bin_dir}moreh-run" -- sleep 3 &
sleep 1.5
run "${bin_dir}moreh-smi"
run "${bin_dir}moreh-smi" -p
smc "show job"
run "${bin_dir}moreh-run" -- echo "second job ran after the first released the SDA"
wait

smc "show history"
echo
echo "Done. Explore further with: MOREH_HOME=$MOREH_HOME ${bin_dir}moreh_smclient  (type 'help')"
