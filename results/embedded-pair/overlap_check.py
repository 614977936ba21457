"""The study's synthetic test results with and without the test questions that were also in train.

Reads the rebuilt store's runs and their test JSONLs (the registry's records); for each synthetic
run with a test evaluation, each system's accuracy on all 500 test questions and on those not in
its train split (before session 20 the generator's train draws could repeat test questions)."""
import json, sys
from pathlib import Path
from mlflow.tracking import MlflowClient
from latentbridge.data.synthetic import synthetic_examples

c = MlflowClient()
rows = []
for exp in c.search_experiments():
    for r in c.search_runs([exp.experiment_id], max_results=1000):
        p = r.data.params
        if p.get("data.source") != "synthetic":
            continue
        f = Path(r.info.artifact_uri.replace("file://", "")) / "test" / "test_eval.jsonl"
        if not f.is_file():
            continue
        n, seed = int(p["data.synthetic_train_size"]), int(p.get("data.synthetic_seed", 7))
        train = {e.question for e in synthetic_examples(n, seed)}
        recs = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
        seen = [x["question"] in train for x in recs]
        out = {"suite": exp.name, "name": p.get("name"), "train": n, "test": len(recs), "in_train": sum(seen)}
        for system in ("bridged", "target", "source"):
            if system in recs[0]:
                ok = [bool(x[system]["correct"]) for x in recs]
                clean = [o for o, s in zip(ok, seen) if not s]
                dirty = [o for o, s in zip(ok, seen) if s]
                out[system] = (round(100 * sum(ok) / len(ok), 1), round(100 * sum(clean) / len(clean), 1),
                               f"{sum(dirty)}/{len(dirty)}")
        rows.append(out)
for o in sorted(rows, key=lambda o: (o["suite"], o["name"])):
    print(json.dumps(o))
