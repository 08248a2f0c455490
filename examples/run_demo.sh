#!/usr/bin/env bash
# Starts the stack on the embedded default, runs the fruit gather example to its end,
# shows its jobs and results, and stops the stack.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${VENV:-.venv}/bin
data=${DONUT_DEMO_DIR:-$PWD/.donut-demo}
export DONUT_HOME="$data/home"
rm -f "$DONUT_HOME/client.json"
"$bin/donut" up --data-dir "$data/stack" --port 0 --http-port 0 &
up=$!
trap 'kill -TERM $up 2>/dev/null; wait $up 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$DONUT_HOME/client.json" ] && break; sleep 0.1; done
[ -s "$DONUT_HOME/client.json" ] || { echo "the stack did not start" >&2; exit 1; }
id=$("$bin/donut" submit examples/fruit_gather.yaml --name fruit-gather --wait --json | "$bin/python" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
"$bin/donut" status "$id"
echo
echo "dragonfruit's log:"
"$bin/donut" logs "$id" dragonfruit
echo
"$bin/donut" results "$id" --download "$data/results/$id"
echo
echo "results of workflow $id are in $data/results/$id (and in the stack: donut results $id)"
