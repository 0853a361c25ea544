"""Accuracy curves of the MLP deployment protocol (domainbed_itl.meta.deploy) on one test env."""
import json, os, sys, time
import torch
from domainbed_itl.meta import data, deploy

dataset, test_env, max_steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
trials = [int(t) for t in sys.argv[4].split(",")]
specs = sys.argv[5:]
domains, classes = data.load_domains(dataset, "data", 0)
pool = deploy.Pool.of(domains, classes)
cands = deploy.baselines() + [deploy.learned_candidate(s) for s in specs]
only = os.environ.get("ONLY")
cands = [c for c in cands if not only or c.label in only.split(",")]
points = [p for p in (250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 64000) if p <= max_steps]
import os
proto = deploy.MLPProtocol(steps=max_steps, lr=float(os.environ.get("LR", "0.01")), batch_size=int(os.environ.get("BATCH", "32")))
print(proto, file=sys.stderr)
for trial in trials:
    task = deploy.make_task(pool, test_env, trial)
    for c in cands:
        t = time.perf_counter()
        scores = deploy.train_and_score(pool, task, c.loss_fn(), proto, points)
        print(json.dumps({"loss": c.label, "trial": trial, "seconds": round(time.perf_counter() - t, 1),
                          "curve": [(s.step, round(s.test_acc, 4), round(s.source_acc, 4), s.finite) for s in scores]}), flush=True)
