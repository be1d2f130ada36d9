"""GPU check: what the CPU CI cannot run, on one CUDA device, with figures written to JSON.

1. loss     the fused GRPO loss (Triton, r1hpc.algo.grpo_loss impl="triton") against the fp32
            reference (r1hpc.algo.grpo_token_loss_reference, evaluated in row chunks so that it fits)
            at real shapes: loss, gradient, time of forward+backward.
2. sampler  the CUDA sampler (r1hpc._C) against the torch reference (r1hpc.rollout.sampling):
            chi-square of the draws against the truncated distribution, log-prob/entropy errors,
            token agreement with the CPU build of the same contract, time per call at [256, 151936].
3. grpo     real GRPO steps (rollout, log-probs, updates: r1hpc.train.grpo.GRPOTrainer) on the MoE
            of configs/fp8_moe_*.yaml from random weights, in bf16 (also with grpo.shared_prefix on local
            layers: the layout moved to the device with each micro-batch; and with rollout.engine=dynamic,
            megatron's engine with flash-attn's paged kernels, where flash-attn is installed) and in each
            FP8 recipe this GPU and Transformer Engine support: tokens/s and peak memory.

    python benchmarks/gpu_check.py                 # everything, real shapes
    python benchmarks/gpu_check.py --quick         # smaller shapes and steps
    python benchmarks/gpu_check.py --only sampler  # one part
Writes benchmarks/results/gpu_check_<device>.json (the device named inside); exits 1 when a check
fails, 2 (with a message, writing nothing) on a machine without CUDA.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# chi-square 0.1% critical values by degrees of freedom
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32, 8: 26.12, 9: 27.88}
SAMPLER_SETTINGS = [dict(temperature=1.0, top_k=0, top_p=1.0), dict(temperature=0.6, top_k=0, top_p=0.95),
                    dict(temperature=1.0, top_k=50, top_p=0.95), dict(temperature=0.0, top_k=0, top_p=1.0)]


def _time_ms(fn, iters: int = 10, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


# ----------------------------------------------------------------------------- 1. fused GRPO loss
def check_loss(quick: bool) -> dict:
    """Fused kernel vs reference; the reference runs on row chunks (the loss is a sum of per-token
    terms, so chunked values and gradients are exact) because an fp32 [16k, 152k] graph does not fit."""
    from r1hpc.algo import GRPOLossParams, aggregation_weights, grpo_loss, grpo_token_loss_reference

    params = GRPOLossParams(temperature=0.9, eps_low=0.2, eps_high=0.28, beta=0.001, kl_kind="k3", impl="triton")
    t, v = (2048, 32768) if quick else (16384, 151936)
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(t, v, device="cuda", generator=g) * 3).to(torch.bfloat16)
    target = torch.randint(0, v, (t,), device="cuda", generator=g)
    with torch.no_grad():
        logp = torch.cat([torch.log_softmax(c.float() / params.temperature, -1).gather(-1, tc[:, None]).squeeze(-1)
                          for c, tc in zip(logits.split(2048), target.split(2048))])
    old, ref = logp + 0.3 * torch.randn(t, device="cuda", generator=g), logp + 0.3 * torch.randn(t, device="cuda", generator=g)
    mask = torch.rand(t // 512, 512, device="cuda", generator=g) < 0.9
    adv = torch.randn(t // 512, device="cuda", generator=g).repeat_interleave(512)
    weights = aggregation_weights(mask, "token-mean").flatten()

    x = logits.detach().requires_grad_()
    fused, _ = grpo_loss(x, target, old, adv, weights, params, ref_logp=ref)
    fused.backward()
    ref_loss, max_grad_err, max_grad = 0.0, 0.0, 0.0
    for rows in torch.arange(t, device="cuda").split(2048):
        xc = logits[rows].detach().requires_grad_()
        tok = grpo_token_loss_reference(xc, target[rows], old[rows], ref[rows], adv[rows], params)
        part = (tok["loss"] * weights[rows]).sum()
        part.backward()
        ref_loss += float(part)
        max_grad_err = max(max_grad_err, float((x.grad[rows].float() - xc.grad.float()).abs().max()))
        max_grad = max(max_grad, float(xc.grad.float().abs().max()))
    rel_loss = abs(float(fused) - ref_loss) / max(abs(ref_loss), 1e-12)

    def fused_fwd_bwd():
        x.grad = None
        grpo_loss(x, target, old, adv, weights, params, ref_logp=ref)[0].backward()

    torch.cuda.reset_peak_memory_stats()
    ms = _time_ms(fused_fwd_bwd)
    # tolerances: both sides compute in fp32 from the same bf16 logits; the gradient is returned
    # in bf16, whose rounding (2^-8 relative) bounds the difference
    ok = rel_loss < 1e-4 and max_grad_err <= 2 ** -7 * max_grad
    return {"ok": ok, "T": t, "V": v, "dtype": "bfloat16", "loss_fused": float(fused), "loss_reference": ref_loss,
            "loss_rel_err": rel_loss, "grad_max_abs_err": max_grad_err, "grad_max_abs": max_grad,
            "fused_fwd_bwd_ms": ms, "fused_peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30,
            "tolerance": "loss rel < 1e-4; grad max abs err <= 2^-7 * max |grad|"}


# ----------------------------------------------------------------------------- 2. sampler
def check_sampler(quick: bool) -> dict:
    import r1hpc._C  # noqa: F401 - fail here, clearly, when the CUDA extension was not built
    from r1hpc.rollout.native import sample_tokens_native
    from r1hpc.rollout.sampling import sample_tokens, truncated_probs

    out: dict = {"distribution": [], "reference_errors": [], "cpu_agreement": [], "speed": []}
    ok = True
    # distribution: one row drawn N times (one request id per row) against the truncated softmax
    row = torch.tensor([2.0, 1.5, 1.2, 1.0, 0.6, 0.3, 0.0, -0.4, -1.0, -2.5])
    n = 100_000 if quick else 1_000_000
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for s in SAMPLER_SETTINGS[:3] + [dict(temperature=1.3, top_k=6, top_p=0.8)]:
            x = row.to(dtype).cuda().expand(n, -1)
            tok, _, _ = sample_tokens_native(x, seed=3, request_ids=torch.arange(n), step=0, **s)
            probs = truncated_probs(row.to(dtype)[None].float(), temperature=s["temperature"], top_k=s["top_k"],
                                    top_p=s["top_p"])[0]
            counts = torch.bincount(tok.cpu(), minlength=len(row)).double()
            support = probs > 0
            expected = probs[support].double() * n
            chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
            dof = int(support.sum()) - 1
            passed = bool(counts[~support].sum() == 0) and (dof == 0 or chi2 < CHI2_999[dof])
            ok &= passed
            out["distribution"].append({"dtype": str(dtype)[6:], **s, "draws": n, "chi2": chi2, "dof": dof,
                                        "outside_support": int(counts[~support].sum()), "ok": passed})
    # log-prob / entropy against the fp32 reference, and the same draws as the CPU build
    b, v = (64, 32000) if quick else (256, 151936)
    g = torch.Generator(device="cuda").manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        logits = (torch.randn(b, v, device="cuda", generator=g) * 3).to(dtype)
        ids = torch.arange(1000, 1000 + b)
        for s in SAMPLER_SETTINGS:
            tok, logp, ent = sample_tokens_native(logits, seed=17, request_ids=ids, step=5, **s)
            t_cpu, lp_cpu, ent_cpu = sample_tokens_native(logits.cpu(), seed=17, request_ids=ids, step=5, **s)
            t = max(s["temperature"], 0) or 1.0
            ref_all = torch.log_softmax(logits.float() / t, -1)
            ref_ent = -(ref_all.exp() * ref_all).nan_to_num().sum(-1)
            err_logp = float((logp - ref_all.gather(1, tok[:, None]).squeeze(1)).abs().max())
            err_ent = float((ent - ref_ent).abs().max())
            passed = err_logp < 1e-4 and err_ent < 1e-4
            ok &= passed
            out["reference_errors"].append({"dtype": str(dtype)[6:], **s, "B": b, "V": v, "logp_max_abs_err": err_logp,
                                            "entropy_max_abs_err": err_ent, "ok": passed})
            same = float((tok.cpu() == t_cpu).float().mean())
            out["cpu_agreement"].append({"dtype": str(dtype)[6:], **s, "same_token_share": same,
                                         "logp_max_abs_diff": float((logp.cpu() - lp_cpu).abs().max()),
                                         "entropy_max_abs_diff": float((ent.cpu() - ent_cpu).abs().max())})
            ok &= same >= 0.99  # equal but for float exp/log last-bit differences at a decision boundary
        # speed: the compiled sampler against the torch reference on the same logits
        for s in SAMPLER_SETTINGS:
            gen = torch.Generator(device="cuda").manual_seed(0)
            native_ms = _time_ms(lambda: sample_tokens_native(logits, seed=1, request_ids=ids, step=0, **s))
            torch_ms = _time_ms(lambda: sample_tokens(logits, generator=gen, **s))
            out["speed"].append({"dtype": str(dtype)[6:], **s, "B": b, "V": v, "native_ms": native_ms,
                                 "torch_reference_ms": torch_ms, "speedup": torch_ms / native_ms})
    out["ok"] = bool(ok)
    return out


# ----------------------------------------------------------------------------- 3. GRPO steps
def check_grpo(quick: bool) -> dict:
    """GRPO steps on the fp8_moe recipe's MoE (random weights; rewards from the response shape so
    that every step updates): bf16, bf16 with grpo.shared_prefix, then every FP8 recipe this machine
    supports."""
    from r1hpc.config import ConfigError
    from r1hpc.model.provider import check_fp8_support, fp8_environment
    from r1hpc.rollout.engines import check_dynamic_supported
    from r1hpc.run_config import load_run_config

    runs, ok = [], True
    te_version, capability = fp8_environment()
    variants = [("bf16", "delayed", ["model.fp8=null", "model.transformer_impl=auto"]),  # local layers without TE
                # one forward per prompt: needs local layers (Transformer Engine's causal attention ignores masks)
                ("bf16-shared-prefix", "delayed", ["model.fp8=null", "model.transformer_impl=local",
                                                   "grpo.shared_prefix=true"]),
                # rollouts on megatron's dynamic engine (continuous batching over 256-token KV blocks)
                ("bf16-dynamic-rollout", "delayed", ["model.fp8=null", "model.transformer_impl=auto",
                                                     "rollout.engine=dynamic"]),
                *((recipe, recipe, []) for recipe in ("delayed", "tensorwise", "blockwise"))]
    for name, recipe, overrides in variants:
        cfg_path = ROOT / "configs" / f"fp8_moe_{recipe}.yaml"
        if quick:
            overrides += ["rollout.prompts_per_step=16", "rollout.group_size=8", "rollout.max_new_tokens=128",
                          "algo.max_response_len=128"]
        cfg = load_run_config(str(cfg_path), overrides)
        try:
            check_fp8_support(cfg.model, te_version, capability)
        except ConfigError as e:  # never recorded as passed: a run that did not happen says why
            status = "not run: Transformer Engine unavailable" if te_version is None else "not run: unsupported here"
            runs.append({"precision": name, "status": status, "skipped": str(e)})
            continue
        if cfg.rollout.engine == "dynamic":
            try:
                check_dynamic_supported()
            except ConfigError as e:
                runs.append({"precision": name, "status": "not run: flash-attn unavailable", "skipped": str(e)})
                continue
        try:
            runs.append({"precision": name, **_grpo_steps(cfg, steps=2 if quick else 3)})
        except Exception:  # noqa: BLE001 - report and go on with the other precisions
            runs.append({"precision": name, "error": traceback.format_exc()[-3000:]})
            ok = False
        torch.cuda.empty_cache()
    return {"ok": ok, "transformer_engine": te_version, "runs": runs}


def _grpo_steps(cfg, steps: int) -> dict:
    from r1hpc.data.corpus import build_corpus
    from r1hpc.data.mix import stream
    from r1hpc.data.templates import render_prompt
    from r1hpc.data.tokenizer import build_tokenizer
    from r1hpc.distributed import destroy_distributed, init_distributed
    from r1hpc.train.engine import Engine
    from r1hpc.train.grpo import GRPOTrainer
    from r1hpc.rewards.shape import ResponseShapeScorer

    tok = build_tokenizer(cfg.data.tokenizer, build_corpus(cfg.data.mix, cfg.data.corpus, cfg.data.template))
    model_cfg = dataclasses.replace(cfg.model, vocab_size=tok.vocab_size)
    init_distributed(cfg.parallel, model_cfg, seed=cfg.run.seed)
    try:
        policy = Engine(model_cfg, cfg.parallel, cfg.grpo.optimizer())
        trainer = GRPOTrainer(policy, None, tokenizer=tok, scorer=ResponseShapeScorer(), algo=cfg.algo,
                              rollout=cfg.rollout, grpo=cfg.grpo,
                              render=lambda q: render_prompt(q, cfg.data.template),
                              problems=stream(cfg.data.mix, "train", seed=0), seed=cfg.run.seed)
        trainer.train_step()  # warm-up: allocator, kernels, FP8 scales
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        per_step = [trainer.train_step() for _ in range(steps)]
        torch.cuda.synchronize()
        keys = ("perf/tokens_per_s", "timing/step_s", "timing/rollout_reward_s", "timing/logprob_s",
                "timing/train_s", "perf/response_tokens", "actor/updates")
        params = sum(p.numel() for p in policy.module.parameters())
        return {"parameters": params, "steps": [{k: m.get(k) for k in keys} for m in per_step],
                "tokens_per_s": statistics.mean(m["perf/tokens_per_s"] for m in per_step),
                "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30,
                "rollout": {"prompts": cfg.rollout.prompts_per_step, "group": cfg.rollout.group_size,
                            "max_new_tokens": cfg.rollout.max_new_tokens, "sampler": cfg.rollout.sampler}}
    finally:
        destroy_distributed()


# ----------------------------------------------------------------------------- driver
CHECKS = {"loss": check_loss, "sampler": check_sampler, "grpo": check_grpo}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller shapes and fewer steps")
    p.add_argument("--only", nargs="+", choices=sorted(CHECKS), help="run these checks only")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/gpu_check_<device>.json)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda}); nothing was run. Run it on a GPU node.",
              file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    report = {"benchmark": "gpu_check", "device": device, "capability": f"{major}.{minor}",
              "torch": torch.__version__, "cuda": torch.version.cuda, "quick": args.quick, "checks": {}}
    for name in args.only or list(CHECKS):
        start = time.perf_counter()
        try:
            result = CHECKS[name](args.quick)
        except Exception:  # noqa: BLE001 - one failing check must not hide the others
            result = {"ok": False, "error": traceback.format_exc()[-3000:]}
        result["seconds"] = time.perf_counter() - start
        report["checks"][name] = result
        print(f"[gpu_check] {name}: {'ok' if result['ok'] else 'FAILED'} ({result['seconds']:.0f} s)", flush=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", device).strip("_").lower()
    out = args.out or RESULTS / f"gpu_check_{slug}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out}")
    return 0 if all(c["ok"] for c in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
