"""Rank function of the device-discipline proof (tests/train/test_device_discipline.py): every kind of
step r1hpc runs, under the implicit-allocation and collective-device checks of tests/device_guard.py."""
from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
from functools import partial
from pathlib import Path

import torch

from tests.device_guard import CollectiveDevices, ImplicitAllocations, backend_device_type

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ci_r1zero.yaml"
TINY = ["data.corpus.size=200", "data.tokenizer.vocab_size=300", "data.tokenizer.train_examples=200",
        "pretrain.steps=1", "pretrain.batch_size=8", "pretrain.micro_batch_size=4", "model.max_seq_length=64",
        "rollout.group_size=2", "rollout.prompts_per_step=4", "rollout.max_new_tokens=8", "algo.beta=0.04",
        "algo.max_response_len=8", "grpo.mini_batches=2", "grpo.micro_batch_size=2", "eval.num_problems=4",
        "eval.samples_per_problem=1", "eval.max_new_tokens=8", "monitor.attention_every=1", "disagg.heartbeat_s=0.5",
        "disagg.max_poll_s=0.2", "disagg.wait_timeout_minutes=4"]


def all_steps(out_dir: str) -> dict:
    """Pretrain, SFT, GRPO (rollout, old and reference log-probs, two mini-batch updates, monitor
    metrics), evaluation, a disaggregated trainer step (batches from a real rollout-worker process)
    and the preemption/time-limit agreements, each checked. Returns per phase the implicit
    allocations and off-device collectives found, and how many collectives ran."""
    from r1hpc.checkpoint.preemption import PreemptionGuard
    from r1hpc.data.prompts import heldout_problems, training_problems
    from r1hpc.data.templates import render_prompt
    from r1hpc.distributed import destroy_distributed, init_distributed
    from r1hpc.eval.heldout import evaluate_pass_at_1
    from r1hpc.model.base import base_model_config, load_base, prepare_tokenizer
    from r1hpc.monitor.monitor import Monitor
    from r1hpc.run_config import load_run_config
    from r1hpc.train.engine import Engine
    from r1hpc.train.grpo import GRPOTrainer
    from r1hpc.train.pretrain import encode_corpus, pretrain
    from r1hpc.train.trainer import _agreed_stop
    from r1hpc.train.sft import SFTConfig, sft_step
    from r1hpc.rewards.shape import ResponseShapeScorer

    torch.set_num_threads(1)
    overrides = [*TINY, f"run.output_dir={out_dir}", f"pretrain.base_dir={out_dir}/base"]
    cfg = load_run_config(CONFIG, overrides)
    init_distributed(cfg.parallel, cfg.model, seed=cfg.run.seed)
    rank0 = torch.distributed.get_rank() == 0
    report: dict[str, dict] = {}

    @contextlib.contextmanager
    def checked(phase: str):
        alloc, coll = ImplicitAllocations(), CollectiveDevices(backend_device_type())
        with coll, alloc:
            yield
        report[phase] = {"implicit": alloc.found, "collectives": coll.calls, "off_device": coll.bad}

    base_dir = Path(out_dir) / "base"
    with checked("pretrain"):
        pretrain(cfg, cfg.parallel, base_dir, log=lambda *a: None)
    tok, corpus = prepare_tokenizer(cfg, base_dir)
    model_cfg = base_model_config(cfg, base_dir, tok)
    policy = Engine(model_cfg, cfg.parallel, cfg.grpo.optimizer())
    load_base(policy, base_dir)
    reference = Engine(model_cfg, cfg.parallel, cfg.grpo.optimizer(), trainable=False)
    load_base(reference, base_dir)

    dp_rank = torch.distributed.get_rank()
    seqs = encode_corpus(tok, corpus[:40], model_cfg.max_seq_length + 1)[:8][dp_rank::2]
    with checked("sft"):
        sft_step(policy, seqs, SFTConfig(batch_size=8, micro_batch_size=2), model_cfg.max_seq_length, tok.pad_id,
                 tok.vocab_size)

    render = partial(render_prompt, cfg=cfg.data.template, chat_template=tok.chat_template)
    scorer = ResponseShapeScorer()
    monitor = Monitor(cfg.monitor, tok, policy.module, Path(out_dir) / "run", writer=rank0, say=lambda *a: None)
    trainer = GRPOTrainer(policy, reference, tokenizer=tok, scorer=scorer, algo=cfg.algo, rollout=cfg.rollout,
                          grpo=dataclasses.replace(cfg.grpo, skip_zero_advantage_groups=False), render=render,
                          problems=training_problems(cfg.data, cfg.run.seed), seed=cfg.run.seed, monitor=monitor)
    with checked("grpo"):
        metrics = trainer.train_step()
    with checked("eval"):
        evaluate_pass_at_1(policy.module, tok, heldout_problems(cfg.data, 4), render, scorer, cfg.eval,
                           model_cfg.max_seq_length)
    with checked("disagg"):
        disagg = _disagg_step(overrides, policy, reference, tok, scorer, render)
    guard = PreemptionGuard()
    with checked("stop_agreement"):
        stop = guard.should_stop() or _agreed_stop(False)
    guard.uninstall()
    destroy_distributed()
    report["ran"] = {"updates": metrics["actor/updates"], "stop": stop, "disagg_updates": disagg["actor/updates"]}
    return report


def _disagg_step(overrides: list[str], policy, reference, tok, scorer, render) -> dict:
    """One GRPO step whose batch comes through the exchange from a `r1hpc rollout-worker` process
    (started by rank 0): weights published, orders posted, the batch read back and trained on."""
    from r1hpc.data.prompts import training_problems, training_stream
    from r1hpc.disagg.config import exchange_root
    from r1hpc.disagg.source import ExchangeSource
    from r1hpc.run_config import load_run_config
    from r1hpc.train.grpo import GRPOTrainer
    from tests.smollm2 import clean_env

    cfg = load_run_config(CONFIG, [*overrides, "disagg.enabled=true"])
    worker = None
    if torch.distributed.get_rank() == 0:
        exchange_root(cfg).parent.mkdir(parents=True, exist_ok=True)
        log = open(exchange_root(cfg).parent / "worker.log", "w")
        worker = subprocess.Popen([sys.executable, "-m", "r1hpc.cli", "rollout-worker", str(CONFIG), *overrides,
                                   "--worker-id", "w0"], env={**clean_env(), "OMP_NUM_THREADS": "1"},
                                  stdout=log, stderr=subprocess.STDOUT)
    problems = training_problems(cfg.data, cfg.run.seed)
    source = ExchangeSource(cfg.disagg, exchange_root(cfg), policy_module=policy.module,
                            make_stream=partial(training_stream, cfg.data, seed=cfg.run.seed),
                            prompts_per_step=cfg.rollout.prompts_per_step, group_size=cfg.rollout.group_size,
                            seed=cfg.run.seed, say=lambda *a: None)
    trainer = GRPOTrainer(policy, reference, tokenizer=tok, scorer=scorer, algo=cfg.algo, rollout=cfg.rollout,
                          grpo=dataclasses.replace(cfg.grpo, skip_zero_advantage_groups=False), render=render,
                          problems=problems, seed=cfg.run.seed, source=source)
    try:
        source.start(trainer.step, problems.drawn)
        metrics = trainer.train_step()
        source.finish(trainer.step)
    finally:
        source.close()
        if worker is not None:
            worker.wait(timeout=120)
    return metrics
