# aten ops a GSM8K ablation train step dispatches on CPU (a proxy for GPU kernel launches), by part
import sys, tempfile, time, collections
import torch
from launch.suites import get_suite, expand, get_grid
from latentbridge.train import Trainer
torch.set_num_threads(1)
name, compile_frozen = sys.argv[1], sys.argv[2]
suite = expand(get_suite("ablations"), [get_grid("direction"), get_grid("task")])
cfg = suite.configs({"data.val_size": "8", "eval.num_questions": "8", "eval.test_questions": "8", "train.compile_frozen": compile_frozen, "dtype": "float32"})[name]
t = Trainer(cfg, tempfile.mkdtemp())
t.step = 1000
for i in range(3):
    t0 = time.perf_counter(); t.train_step(); print("step", round(time.perf_counter() - t0, 2), flush=True)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as p:
    t.train_step()
ev = p.key_averages()
print(name, "compile_frozen", compile_frozen, "aten ops", sum(e.count for e in ev if e.key.startswith("aten::")))
rows = sorted(((e.count, e.key) for e in ev if not e.key.startswith("aten::")), reverse=True)[:15]
for c, k in rows: print(c, k)
rows = sorted(((e.count, e.key) for e in ev if e.key.startswith("aten::")), reverse=True)[:25]
for c, k in rows: print(c, k)
