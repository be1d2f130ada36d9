"""Our GRPO objective against TRL's, on identical inputs: TRL's GRPOTrainer computes its loss (its own
forward, log-softmax, clipped surrogate, k3 KL and aggregation) on a tiny transformers model, and
r1hpc.algo.grpo_loss gets the same model's logits and the same old/ref log-probs, advantages and
masks. Both losses and both gradients on the model's parameters are compared, for each TRL
loss_type against the r1hpc aggregation mode it corresponds to (docs/algorithms.md), with the batch
split into two micro-batches of unequal token counts, as one optimizer step sees it. The advantages
come out of TRL's own generate-and-score step and are compared with r1hpc's estimators.
"""
import pytest
import torch

from r1hpc.algo import GRPOLossParams, aggregation_weights, grpo_loss
from r1hpc.algo.advantages import group_advantages
from r1hpc.algo.kl import kl_penalty

pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

VOCAB = [f"w{i}" for i in range(60)] + ["<pad>", "<eos>", "<unk>"]
PROMPT, COMPLETION, GROUP = 3, 6, 4  # tokens per prompt, max completion tokens, responses per prompt
TEMPERATURE, EPS_LOW, EPS_HIGH = 0.7, 0.2, 0.28

# TRL loss_type -> the r1hpc weights [B_mb, L] of one micro-batch whose sum over the step's
# micro-batches is TRL's loss (n_micro micro-batches, the step's tokens and sequences).
R1HPC_MODE = {
    "grpo": lambda m, n_micro, tokens, seqs: aggregation_weights(m, "seq-mean-token-mean", num_seqs=seqs),
    "dapo": lambda m, n_micro, tokens, seqs: aggregation_weights(m, "token-mean", num_tokens=tokens),
    "dr_grpo": lambda m, n_micro, tokens, seqs: aggregation_weights(m, "seq-mean-token-sum-norm", COMPLETION,
                                                                    num_seqs=seqs),
    # bnpo: the token mean of each micro-batch, averaged over micro-batches; r1hpc's token-mean with
    # the micro-batch's own token count, over the number of micro-batches (not a global token mean)
    "bnpo": lambda m, n_micro, tokens, seqs: aggregation_weights(m, "token-mean") / n_micro,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 1-layer Llama saved to disk (TRL loads its reference model from the policy's path) and a
    word-level tokenizer over the same 63 ids: enough for TRL's trainer."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                                     unk_token="<unk>")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                   pad_token_id=60, eos_token_id=61, bos_token_id=None)
    path = tmp_path_factory.mktemp("tiny_llama")
    transformers.LlamaForCausalLM(cfg).float().save_pretrained(path)
    prompts = datasets.Dataset.from_dict({"prompt": [" ".join(f"w{(7 * i + j) % 60}" for j in range(PROMPT))
                                                     for i in range(8)]})
    return str(path), tokenizer, prompts


def make_trainer(tiny, tmp_path, reward, **kw):
    model, tokenizer, prompts = tiny
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                      report_to=[], per_device_train_batch_size=GROUP, num_generations=GROUP,
                      max_completion_length=COMPLETION, temperature=TEMPERATURE, epsilon=EPS_LOW,
                      epsilon_high=EPS_HIGH, gradient_accumulation_steps=2, seed=0, **kw)
    return GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=prompts,
                       processing_class=tokenizer)


def constant_reward(prompts, completions, **kw):
    return [0.0] * len(completions)


def step_inputs(model, seed):
    """One step's batch as TRL's trainer holds it after generation: 8 responses (2 micro-batches of
    4) with completion lengths 1..6, off-policy old log-probs (ratios beyond both clip bounds),
    reference log-probs and advantages of both signs."""
    g = torch.Generator().manual_seed(seed)
    b = 2 * GROUP
    prompt_ids = torch.randint(0, 60, (b, PROMPT), generator=g)
    completion_ids = torch.randint(0, 60, (b, COMPLETION), generator=g)
    lengths = torch.tensor([6, 5, 6, 4, 1, 2, 3, 2])  # micro-batch token counts 21 and 8
    completion_mask = (torch.arange(COMPLETION)[None] < lengths[:, None]).long()
    with torch.no_grad():
        logp = completion_logp(model, prompt_ids, completion_ids)
    return {
        "prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids, "completion_mask": completion_mask,
        "old_per_token_logps": logp + 0.5 * torch.randn(b, COMPLETION, generator=g),
        "ref_per_token_logps": logp + 0.5 * torch.randn(b, COMPLETION, generator=g),
        "advantages": torch.randn(b, generator=g),
        "num_items_in_batch": completion_mask.sum(),
    }


def completion_logits(model, prompt_ids, completion_ids):
    """[B, L, V] logits that predict the completion tokens (one forward over prompt + completion)."""
    logits = model(input_ids=torch.cat([prompt_ids, completion_ids], 1), use_cache=False).logits
    return logits[:, PROMPT - 1:-1]


def completion_logp(model, prompt_ids, completion_ids):
    logits = completion_logits(model, prompt_ids, completion_ids) / TEMPERATURE
    return torch.log_softmax(logits.float(), -1).gather(2, completion_ids[..., None]).squeeze(-1)


def micro_batches(inputs):
    n = inputs["prompt_ids"].shape[0]
    return [{k: (v[i:i + GROUP] if k != "num_items_in_batch" else v) for k, v in inputs.items()}
            for i in range(0, n, GROUP)]


def loss_and_grads(model, losses):
    model.zero_grad(set_to_none=True)
    total = sum(losses)
    total.backward()
    return total.detach(), [p.grad.clone() for p in model.parameters()]


def trl_step(trainer, inputs):
    """TRL's loss over the step's two micro-batches, as its training loop accumulates it."""
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2
    return loss_and_grads(trainer.model, [trainer.compute_loss(trainer.model, mb) for mb in micro_batches(inputs)])


def r1hpc_step(model, inputs, loss_type, beta):
    mask = inputs["completion_mask"]
    tokens, seqs = float(mask.sum()), float(mask.shape[0])
    losses = []
    for mb in micro_batches(inputs):
        logits = completion_logits(model, mb["prompt_ids"], mb["completion_ids"])
        weights = R1HPC_MODE[loss_type](mb["completion_mask"], 2, tokens, seqs)
        loss, _ = grpo_loss(logits.reshape(-1, logits.shape[-1]), mb["completion_ids"].flatten(),
                            mb["old_per_token_logps"].flatten(), mb["advantages"].repeat_interleave(COMPLETION),
                            weights.flatten(), GRPOLossParams(temperature=TEMPERATURE, eps_low=EPS_LOW,
                                                              eps_high=EPS_HIGH, beta=beta, kl_kind="k3",
                                                              impl="torch"),
                            ref_logp=mb["ref_per_token_logps"].flatten())
        losses.append(loss)
    return loss_and_grads(model, losses)


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", list(R1HPC_MODE))
def test_loss_and_gradient_match_trl(tiny, tmp_path, loss_type, beta):
    # TRL's default use_bias_correction_kl=True weights the KL by the ratio: the next test pins that
    trainer = make_trainer(tiny, tmp_path, constant_reward, loss_type=loss_type, beta=beta,
                           use_bias_correction_kl=False)
    model = trainer.model
    inputs = step_inputs(model, seed=1)
    ratio = torch.exp(completion_logp(model, inputs["prompt_ids"], inputs["completion_ids"]).detach()
                      - inputs["old_per_token_logps"])[inputs["completion_mask"].bool()]
    assert (ratio > 1 + EPS_HIGH).any() and (ratio < 1 - EPS_LOW).any()  # both clip bounds are active
    trl_loss, trl_grads = trl_step(trainer, inputs)
    our_loss, our_grads = r1hpc_step(model, inputs, loss_type, beta)
    # fp32 on both sides; the same formulas, summed in a different order
    torch.testing.assert_close(our_loss, trl_loss, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(our_grads, trl_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_trl_default_kl_is_ratio_weighted(tiny, tmp_path):
    """TRL's default (use_bias_correction_kl=True, DeepSeek-V3.2) adds beta * ratio * k3 where r1hpc
    (R1 eq. 2) adds beta * k3: the losses differ by exactly beta * sum(w * (ratio - 1) * k3)."""
    beta = 0.04
    trainer = make_trainer(tiny, tmp_path, constant_reward, loss_type="dapo", beta=beta)
    model = trainer.model
    inputs = step_inputs(model, seed=1)
    trl_loss, _ = trl_step(trainer, inputs)
    our_loss, _ = r1hpc_step(model, inputs, "dapo", beta)
    with torch.no_grad():
        logp = completion_logp(model, inputs["prompt_ids"], inputs["completion_ids"])
    ratio = torch.exp(logp - inputs["old_per_token_logps"])
    k3 = kl_penalty(logp, inputs["ref_per_token_logps"], "k3")
    mask = inputs["completion_mask"].float()
    gap = beta * ((ratio - 1) * k3 * mask).sum() / mask.sum()
    assert abs(float(gap)) > 1e-3
    torch.testing.assert_close(trl_loss - our_loss, gap, rtol=1e-4, atol=1e-6)


def test_bnpo_is_not_a_global_token_mean(tiny, tmp_path):
    """TRL's bnpo averages each micro-batch's token mean, so with unequal micro-batch token counts
    (21 and 8 here) it is not DAPO's (and r1hpc's) token mean over the step: pinned as a difference."""
    trainer = make_trainer(tiny, tmp_path, constant_reward, loss_type="bnpo", beta=0.0)
    inputs = step_inputs(trainer.model, seed=1)
    bnpo, _ = trl_step(trainer, inputs)
    token_mean, _ = r1hpc_step(trainer.model, inputs, "dapo", 0.0)
    assert abs(float(bnpo - token_mean)) > 1e-3


def recorded_rewards(seed):
    """A reward function returning fixed pseudo-random rewards (ties and an all-equal group
    included) and recording them, so TRL's advantages can be recomputed from the same rewards."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randint(0, 3, (2, GROUP), generator=g).float()
    table[1] = 1.0  # a group whose responses all score the same: advantage 0
    seen = []

    def reward(prompts, completions, **kw):
        out = table.flatten()[:len(completions)].tolist()
        seen.append(torch.tensor(out))
        return out

    return reward, seen


@pytest.mark.parametrize("scale_rewards,estimator", [("group", "grpo"), ("none", "drgrpo")])
def test_advantages_match_trl(tiny, tmp_path, scale_rewards, estimator):
    """TRL's scale_rewards='group' is our 'grpo' estimator (unbiased std; TRL's eps is 1e-4, ours a
    parameter) and 'none' our 'drgrpo'. ('batch', one std over the whole batch, has no r1hpc estimator.)"""
    reward, seen = recorded_rewards(seed=3)
    trainer = make_trainer(tiny, tmp_path, reward, loss_type="grpo", beta=0.0, scale_rewards=scale_rewards)
    batch = [{"prompt": p} for p in tiny[2]["prompt"][:2] for _ in range(GROUP)]
    with torch.no_grad():
        out = trainer._generate_and_score_completions(batch)
    rewards = seen[-1].view(-1, GROUP)
    ours = group_advantages(rewards, estimator, eps=1e-4).flatten()
    torch.testing.assert_close(ours, out["advantages"].float(), rtol=1e-6, atol=1e-6)
