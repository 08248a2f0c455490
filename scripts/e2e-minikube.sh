#!/usr/bin/env bash
# Runs the fruit gather example on a real minikube, end to end: builds the two images
# into minikube, applies k8s/overlays/minikube, waits for etcd (auth on), MinIO and
# dagger, submits examples/fruit_gather.yaml through a port-forward, and checks its
# result. For people who have minikube and kubectl; CI cannot run it (no cluster there).
#
#   make install && scripts/e2e-minikube.sh       (MINIKUBE_PROFILE=... to pick a profile)
#
# It leaves the deployment running; `kubectl delete -k k8s/overlays/minikube` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."

services_image="donut-dagger/donut:0.1.0"
job_image="donut-dagger/fruit-job:0.1.0"
namespace=donut
local_port=${DONUT_E2E_PORT:-17000}
donut=${VENV:-.venv}/bin/donut
profile=(--profile "${MINIKUBE_PROFILE:-minikube}")

for tool in minikube kubectl; do
  command -v "$tool" >/dev/null || { echo "$tool is needed: install it first" >&2; exit 1; }
done
[ -x "$donut" ] || { echo "no donut CLI at $donut: run make install first" >&2; exit 1; }

minikube "${profile[@]}" status >/dev/null 2>&1 || minikube "${profile[@]}" start --cpus 2 --memory 4g
kubectl config use-context "${MINIKUBE_PROFILE:-minikube}" >/dev/null

echo "== building the images inside minikube"
minikube "${profile[@]}" image build -t "$services_image" .
minikube "${profile[@]}" image build -t "$job_image" -f examples/job-image/Dockerfile .

echo "== deploying k8s/overlays/minikube"
kubectl apply -k k8s/overlays/minikube
kubectl -n "$namespace" rollout status statefulset/etcd --timeout=300s
kubectl -n "$namespace" wait --for=condition=complete job/etcd-auth --timeout=300s
kubectl -n "$namespace" rollout status deployment/minio --timeout=300s
kubectl -n "$namespace" rollout status deployment/dagger --timeout=300s

echo "== signing in with the admin token donut up wrote in its pod"
token=$(kubectl -n "$namespace" exec deployment/dagger -c donut -- \
  python -c 'import json; print(json.load(open("/var/lib/donut/home/client.json"))["token"])')
export DONUT_ENDPOINT=127.0.0.1:$local_port DONUT_TOKEN=$token

kubectl -n "$namespace" port-forward service/dagger "$local_port:7000" >/dev/null &
forward=$!
trap 'kill "$forward" 2>/dev/null || true' EXIT
for _ in $(seq 60); do "$donut" list >/dev/null 2>&1 && break; sleep 1; done
"$donut" list >/dev/null
"$donut" cluster   # the dagger pods, each a replica under its pod name

echo "== running the fruit gather example as Kubernetes Jobs"
id=$("$donut" submit examples/fruit_gather.yaml --name fruit-gather-minikube --wait --json |
  "${VENV:-.venv}/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["id"])')
"$donut" status "$id"
kubectl -n "$namespace" get jobs -l "donut/workflow=$id"
echo
echo "dragonfruit's log:"
log=$("$donut" logs "$id" dragonfruit)
echo "$log"
grep -q "total 10" <<<"$log" || { echo "FAILED: dragonfruit did not add the fruit up to 10" >&2; exit 1; }
"$donut" results "$id"
echo
echo "OK: workflow $id ran on minikube. The GUI: kubectl -n $namespace port-forward service/gateway 7080:80,"
echo "then DONUT_ENDPOINT=$DONUT_ENDPOINT DONUT_TOKEN=... $donut ui --url http://127.0.0.1:7080"
