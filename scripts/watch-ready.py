#!/usr/bin/env python3
"""Follow the llmops resources of a namespace until every one is Ready.

Usage: watch-ready.py NAMESPACE [TIMEOUT_SECONDS]

Every few seconds it reads `kubectl get llmops -n NAMESPACE -o json` (kubectl
and its KUBECONFIG from the environment) and prints a line for each resource
whose state changed: Ready or not, and the progress its status reports (documents
and tokens, step and loss, gate and scores, replicas). It exits 0 once all are
Ready, 1 when one is Stalled or the time is up (printing `kubectl describe` of
those not Ready), 2 on bad usage.
"""

import json
import subprocess
import sys
import time


def condition(obj, type_):
    for c in obj.get("status", {}).get("conditions", []) or []:
        if c.get("type") == type_:
            return c
    return None


def progress(obj):
    """A short summary of what the status says, per kind."""
    kind = obj["kind"]
    status = obj.get("status", {}) or {}
    parts = []
    if kind == "Dataset":
        stats = status.get("stats") or {}
        if "documentsOut" in stats:
            tokens = sum(stats.get(k, 0) for k in ("trainTokens", "validationTokens", "testTokens"))
            parts.append(f"{stats['documentsOut']} docs, {tokens} tokens")
    elif kind in ("PretrainJob", "FineTune"):
        p = status.get("progress") or {}
        if "step" in p:
            parts.append(f"step {p['step']}/{p.get('totalSteps', '?')}")
        if p.get("trainLoss") is not None:
            parts.append(f"loss {p['trainLoss']:.3f}")
        if p.get("validationPerplexity") is not None:
            parts.append(f"val ppl {p['validationPerplexity']:.2f}")
        gate = status.get("gate")
        if gate:
            parts.append(("gate passed: " if gate.get("passed") else "gate failed: ") + gate.get("message", ""))
    elif kind == "ModelDeployment":
        replicas = status.get("replicas") or {}
        if replicas:
            parts.append(f"{replicas.get('ready', 0)}/{replicas.get('desired', '?')} replicas ready")
    return ", ".join(parts)


def line(obj):
    ready = condition(obj, "Ready") or {}
    state = {"True": "Ready", "False": "not ready"}.get(ready.get("status"), "pending")
    reason = ready.get("reason", "")
    name = f"{obj['kind'].lower()}/{obj['metadata']['name']}"
    summary = progress(obj)
    text = f"{name:<34} {state:<9} {reason:<22} {summary}"
    return text.rstrip()


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    namespace = sys.argv[1]
    timeout = float(sys.argv[2]) if len(sys.argv) == 3 else 1800
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    shown = {}
    while True:
        out = subprocess.run(
            ["kubectl", "get", "llmops", "-n", namespace, "-o", "json"],
            capture_output=True, text=True,
        )
        if out.returncode != 0:
            print(f"kubectl get llmops: {out.stderr.strip()}", file=sys.stderr)
            items = []
        else:
            items = json.loads(out.stdout).get("items", [])
        for obj in items:
            key = (obj["kind"], obj["metadata"]["name"])
            text = line(obj)
            if shown.get(key) != text:
                shown[key] = text
                print(f"[{time.monotonic() - started:5.0f}s] {text}", flush=True)
        not_ready = [o for o in items if (condition(o, "Ready") or {}).get("status") != "True"]
        stalled = [o for o in items if (condition(o, "Stalled") or {}).get("status") == "True"]
        if items and not not_ready:
            return 0
        if stalled or time.monotonic() >= deadline:
            why = "stalled" if stalled else f"not Ready after {timeout:.0f}s"
            for obj in stalled or not_ready:
                name = f"{obj['kind'].lower()}/{obj['metadata']['name']}"
                print(f"--- {name} {why}:", file=sys.stderr)
                subprocess.run(["kubectl", "describe", "-n", namespace, name], stdout=sys.stderr)
            return 1
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
