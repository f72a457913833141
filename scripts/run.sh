#!/usr/bin/env bash
# `make run`: the whole system end to end on the local stack, finishing by itself in a few minutes.
#   stack up -> produce labelled SKAB files + a synthetic fleet -> train -> two scorers -> live anomalies
#   -> summary (records in, anomalies out, DLQ, precision/recall against the labels, report, metrics).
# FOLLOW=1 keeps the scorers and the live view running until Ctrl-C.
# Each run uses its own topics and model folder (printed below), so runs never mix.
set -euo pipefail
cd "$(dirname "$0")/.."

FOLLOW=${FOLLOW:-0}
SKAB=${ANOMSTREAM_DEMO_SKAB:-../shared/data/skab/data}
DETECTOR=${ANOMSTREAM_DEMO_DETECTOR:-pca}
FLEET_DEVICES=${ANOMSTREAM_DEMO_DEVICES:-20}
FLEET_RECORDS=${ANOMSTREAM_DEMO_RECORDS:-40000}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1/6 local stack: Apache Kafka (KRaft) + Schema Registry on 127.0.0.1"
anomstream stack up
eval "$(anomstream stack env)"

run=demo_$(date +%Y%m%d_%H%M%S)
out=out/$run
mkdir -p "$out"
export ANOMSTREAM_TELEMETRY_TOPIC=${run}_telemetry ANOMSTREAM_ANOMALY_TOPIC=${run}_anomalies
export ANOMSTREAM_DLQ_TOPIC=${run}_dlq ANOMSTREAM_MODELS_TOPIC=${run}_models ANOMSTREAM_INCIDENT_TOPIC=${run}_incidents
export ANOMSTREAM_MODEL_DIR=$out/models
anomstream stack up >/dev/null 2>&1   # creates this run's topics
echo "topics ${run}_{telemetry,anomalies,incidents,dlq,models}; model store $ANOMSTREAM_MODEL_DIR; logs in $out/"

# One model serves one channel set, so the demo streams one kind of device: the labelled SKAB pumps, or,
# where that data is absent, a synthetic fleet with injected anomalies. (Records lacking the model's
# channels would go to the dead-letter topic as `missing-channel`: accounted for, never scored.)
if [ -d "$SKAB" ]; then
  # valve1 and valve2 hold the labelled experiments; anomaly-free.csv is SKAB's unlabelled reference run
  say "2/6 producer: the labelled SKAB pump experiments ($SKAB/valve1, $SKAB/valve2)"
  anomstream produce --source "skab:$SKAB/valve1"
  anomstream produce --source "skab:$SKAB/valve2"
else
  say "2/6 producer: a synthetic fleet with injected anomalies (no SKAB data at $SKAB)"
  anomstream produce --source synthetic --devices "$FLEET_DEVICES" --records "$FLEET_RECORDS" --seed 7
fi

say "3/6 trainer: $DETECTOR per device on each device's first 400 readings, evaluated on the rest"
anomstream train --model "$DETECTOR" --per-device --train-records 400 --name demo

say "4/6 scorers: two members of one consumer group, exactly-once"
idle=(--idle-exit 20)
[ "$FOLLOW" = 1 ] && idle=()
anomstream score "${idle[@]}" >"$out/scorer-1.log" 2>&1 & s1=$!
anomstream score "${idle[@]}" >"$out/scorer-2.log" 2>&1 & s2=$!
trap 'kill $s1 $s2 2>/dev/null || true' EXIT

say "5/6 anomalies arriving live (anomstream tail)"
if [ "$FOLLOW" = 1 ]; then
  anomstream tail
  exit 0
fi
anomstream tail --max 15 --timeout 30 || true
wait $s1 $s2
trap - EXIT

say "6/6 summary"
anomstream tail --json --timeout 10 >"$out/anomalies.jsonl" 2>/dev/null
anomstream tail --incidents --json --timeout 10 >"$out/incidents.jsonl" 2>/dev/null
python -m anomstream.run_summary --anomalies "$out/anomalies.jsonl" --incidents "$out/incidents.jsonl" \
  --scorer-logs "$out"/scorer-*.log
