#!/usr/bin/env bash
# Run a command on this machine, Kaldi run.pl style, written anew for recipes
# that have no Kaldi utils/ (the ESPnet wheel ships none):
#
#   run_local.sh [--gpu N] [--mem X] [--num_threads N] [--name X] [--max_jobs_run N] \
#                [JOB=1:N] LOG COMMAND ARGS...
#
# With JOB=1:N the command runs N times in parallel (at most --max_jobs_run at
# once), with every "JOB" in LOG and the arguments replaced by the job number.
# The output goes to LOG; the exit status is non-zero if any job failed.
# espnet2.bin.launch calls it as: run_local.sh [--name X] --gpu N LOG COMMAND...
set -uo pipefail

max_jobs_run=0
while [ $# -gt 0 ]; do
    case "$1" in
        --gpu|--mem|--num_threads|--name|--time|--max-jobs-run|--max_jobs_run)
            [ "$1" = "--max_jobs_run" ] || [ "$1" = "--max-jobs-run" ] && max_jobs_run="$2"
            shift 2 ;;
        --config) shift 2 ;;
        *) break ;;
    esac
done

jobvar=; first=1; last=1
if [[ "${1:-}" =~ ^([A-Za-z_][A-Za-z0-9_]*)=([0-9]+):([0-9]+)$ ]]; then
    jobvar="${BASH_REMATCH[1]}"; first="${BASH_REMATCH[2]}"; last="${BASH_REMATCH[3]}"
    shift
elif [[ "${1:-}" =~ ^([A-Za-z_][A-Za-z0-9_]*)=([0-9]+)$ ]]; then
    jobvar="${BASH_REMATCH[1]}"; first="${BASH_REMATCH[2]}"; last="${first}"
    shift
fi
if [ $# -lt 2 ]; then
    echo "usage: $0 [--gpu N] [--max_jobs_run N] [JOB=1:N] LOG COMMAND ARGS..." >&2
    exit 1
fi
log="$1"; shift
mkdir -p "$(dirname "${log}")"

run_one() {
    local id="$1" logfile="$2"; shift 2
    local args=() a
    for a in "$@"; do
        [ -n "${jobvar}" ] && a="${a//${jobvar}/${id}}"
        # Quote an argument with white space (as run.pl does); keep | and > bare.
        if [[ "$a" =~ [[:space:]] ]]; then a=$(printf '%q' "$a"); fi
        args+=("$a")
    done
    local t0; t0=$(date +%s)
    {
        echo "# ${args[*]}"
        echo "# Started at $(date)"
    } > "${logfile}"
    # The command is run through bash so pipes and redirections in it work.
    bash -c "${args[*]}" >> "${logfile}" 2>&1
    local rc=$?
    {
        echo "# Accounting: time=$(( $(date +%s) - t0 )) threads=1"
        echo "# Ended (code ${rc}) at $(date)"
    } >> "${logfile}"
    return "${rc}"
}

pids=(); ids=()
for (( i = first; i <= last; i++ )); do
    logfile="${log}"
    [ -n "${jobvar}" ] && logfile="${log//${jobvar}/${i}}"
    run_one "${i}" "${logfile}" "$@" &
    pids+=($!); ids+=("${i}")
    if [ "${max_jobs_run}" -gt 0 ]; then
        while [ "$(jobs -rp | wc -l)" -ge "${max_jobs_run}" ]; do wait -n || true; done
    fi
done

failed=0
for k in "${!pids[@]}"; do
    if ! wait "${pids[$k]}"; then
        failed=$((failed + 1))
        lf="${log}"; [ -n "${jobvar}" ] && lf="${log//${jobvar}/${ids[$k]}}"
        echo "$0: job ${ids[$k]} failed, see ${lf}" >&2
    fi
done
if [ "${failed}" -gt 0 ]; then
    echo "$0: ${failed} of $(( last - first + 1 )) jobs failed" >&2
    exit 1
fi
exit 0
