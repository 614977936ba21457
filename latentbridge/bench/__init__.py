"""Speed at the reference scale: `python -m latentbridge.bench` (see `__main__`).

shapes: reference model configs with random weights; hardware: measured ceilings;
generation_bench: plain `generate` vs the static decoder; train_step_bench: one training
step and its model FLOP utilisation; methods: per-method accuracy, latency and KV bytes.
"""
