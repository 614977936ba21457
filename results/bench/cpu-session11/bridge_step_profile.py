# profile one embedded-pair bridge train step on CPU: where does the step's time go, how many ops
import sys, tempfile, time

import torch
from launch.suites import get_suite
from latentbridge.train import Trainer
torch.set_num_threads(2)
name = sys.argv[1] if len(sys.argv) > 1 else "s2g-lm-nce-lr1e-3-2k"
cfg = get_suite("embedded-carry").configs({"data.synthetic_train_size": 200, "data.val_size": 8, "eval.num_questions": 8, "train.batch_size": 32})[name]
t = Trainer(cfg, tempfile.mkdtemp())
t.step = 1000
for i in range(2):
    t0 = time.perf_counter(); t.train_step(); print("step", time.perf_counter() - t0)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as p:
    t.train_step()
ev = p.key_averages()
print("aten ops", sum(e.count for e in ev if e.key.startswith("aten::")))
print(ev.table(sort_by="self_cpu_time_total", row_limit=25))
rows = sorted(((e.count, e.key) for e in ev), reverse=True)[:40]
for c, k in rows: print(c, k)
