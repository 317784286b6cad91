#!/bin/bash
# Two-worker run queue over queue.txt (start this script twice). Each line: TASK LABEL SEED <zo finetune method options>.
# `next` holds the first line not yet started; a run whose directory holds a checkpoint (state.json, no summary.json)
# is resumed (--resume), a finished one is skipped. Usage: cp -r benchmarks/results/matrix-smollm2-cpu benchmarks/out/matrix;
# setsid nohup benchmarks/out/matrix/runq.sh & (twice). `touch stop` lets the workers exit when the queue is empty.
# A line "@ NAME COMMAND..." runs COMMAND (e.g. a zo meta-train) once: done when NAME.done exists in the queue dir.
Q="$(cd "$(dirname "$0")" && pwd)"
cd "$Q/../../.."
while true; do
  exec 9>"$Q/.lock"; flock 9
  n=$(cat "$Q/next" 2>/dev/null || echo 1)
  line=$(sed -n "${n}p" "$Q/queue.txt")
  echo $((n+1)) > "$Q/next"
  flock -u 9
  if [ -z "$line" ]; then
    [ -f "$Q/stop" ] && exit 0
    echo "$n" > "$Q/next"; sleep 30; continue
  fi
  if [ "${line:0:2}" = "@ " ]; then
    set -- $line; name=$2; cmd=${line#@ $name }
    [ -f "$Q/$name.done" ] && continue
    echo "$(date +%T) start $n @$name" >> "$Q/log"
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 bash -c "$cmd" > "$Q/$name.out" 2> "$Q/$name.err"
    rc=$?
    [ $rc = 0 ] && touch "$Q/$name.done"
    echo "$(date +%T) end $n rc=$rc @$name" >> "$Q/log"
    continue
  fi
  set -- $line; task=$1 label=$2 seed=$3; shift 3
  d="$Q/runs/$task/$label/seed$seed"; mkdir -p "$d"
  [ -f "$d/summary.json" ] && continue
  resume=(); [ -f "$d/state.json" ] && [ -f "$d/trajectory.jsonl" ] && resume=(--resume)
  echo "$(date +%T) start $n $task $label $seed ${resume[*]}" >> "$Q/log"
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/zo finetune --model smollm2-135m --task "$task" --seed "$seed" \
    --steps 300 --batch-size 16 --eval-every 50 --num-train 1000 --num-dev 200 --num-test 872 --no-zero-shot \
    --experiment zo-matrix-cpu --run-name "$task-$label-s$seed" --out-dir "$d" --json "${resume[@]}" "$@" \
    > "$d/stdout.log" 2> "$d/stderr.log"
  rc=$?  # before any command substitution resets $?
  echo "$(date +%T) end $n rc=$rc $task $label $seed" >> "$Q/log"
done
