"""Throughput of N processes training a SmolLM2-135M-shaped model on one GPU, with and without MPS.

The ad-hoc probe of session 10: its code as it ran (this docstring's last four lines added after),
in one device call that carried it as an untracked folder:
    nvidia-smi --query-gpu=name,compute_mode --format=csv; ls -la /usr/bin/nvidia-cuda-mps*; python3 mps_probe.py
Its output is in output.txt beside it.
"""
import os, subprocess, sys, time, json

def worker(steps=40):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048)
    m = LlamaForCausalLM(cfg).cuda().to(torch.bfloat16)
    for p in m.parameters(): p.requires_grad_(False)
    soft = torch.nn.Parameter(torch.randn(32, 32, 576, device="cuda", dtype=torch.bfloat16))
    opt = torch.optim.AdamW([soft], lr=1e-3)
    ids = torch.randint(0, 49152, (32, 96), device="cuda")
    def step():
        emb = torch.cat([soft, m.get_input_embeddings()(ids)], 1)
        out = m(inputs_embeds=emb).logits[:, 32:-1].float()
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward(); opt.step(); opt.zero_grad()
    for _ in range(5): step()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(steps): step()
    torch.cuda.synchronize()
    print(json.dumps({"steps_per_s": steps / (time.perf_counter() - t)}), flush=True)

def run(n, env):
    procs = [subprocess.Popen([sys.executable, __file__, "worker"], env=env, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    rates = [json.loads(p.communicate()[0].strip().splitlines()[-1])["steps_per_s"] for p in procs]
    return sum(rates), rates

if __name__ == "__main__":
    if sys.argv[1:] == ["worker"]:
        worker(); sys.exit()
    env = dict(os.environ)
    for n in (1, 4):
        total, rates = run(n, env); print(f"no MPS, {n} procs: total {total:.1f} steps/s {[round(r,1) for r in rates]}", flush=True)
    mps = subprocess.run(["bash", "-c", "command -v nvidia-cuda-mps-control"], capture_output=True, text=True).stdout.strip()
    print("nvidia-cuda-mps-control:", mps or "absent", flush=True)
    if mps:
        d = "/tmp/mps"; os.makedirs(d + "/log", exist_ok=True)
        env.update(CUDA_MPS_PIPE_DIRECTORY=d, CUDA_MPS_LOG_DIRECTORY=d + "/log")
        print(subprocess.run([mps, "-d"], env=env, capture_output=True, text=True), flush=True)
        try:
            for n in (1, 4):
                total, rates = run(n, env); print(f"MPS, {n} procs: total {total:.1f} steps/s {[round(r,1) for r in rates]}", flush=True)
        finally:
            print(subprocess.run([mps], input="quit\n", env=env, capture_output=True, text=True), flush=True)
            print(open(d + "/log/control.log").read()[-1500:] if os.path.exists(d + "/log/control.log") else "no log")
