"""Accuracy curves of the MLP deployment protocol (domainbed_itl.deployment.mlp_protocol) on one
test env."""

import json
import os
import sys
import time

from domainbed_itl.deployment.candidates import baselines, learned_candidate
from domainbed_itl.deployment.mlp_protocol import MLPProtocol, Pool, make_task, train_and_score
from domainbed_itl.meta import data

dataset, test_env, max_steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
trials = [int(t) for t in sys.argv[4].split(",")]
specs = sys.argv[5:]
domains, classes = data.load_domains(dataset, "data", 0)
pool = Pool.of(domains, classes)
cands = baselines() + [learned_candidate(s) for s in specs]
only = os.environ.get("ONLY")
cands = [c for c in cands if not only or c.label in only.split(",")]
points = [p for p in (250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 64000) if p <= max_steps]
proto = MLPProtocol(steps=max_steps, lr=float(os.environ.get("LR", "0.01")),
                    batch_size=int(os.environ.get("BATCH", "32")))
print(proto, file=sys.stderr)
for trial in trials:
    task = make_task(pool, test_env, trial)
    for c in cands:
        t = time.perf_counter()
        scores = train_and_score(pool, task, c.loss_fn(), proto, points)
        curve = [(s.step, round(s.test_acc, 4), round(s.source_acc, 4), s.finite) for s in scores]
        print(json.dumps({"loss": c.label, "trial": trial,
                          "seconds": round(time.perf_counter() - t, 1), "curve": curve}),
              flush=True)
