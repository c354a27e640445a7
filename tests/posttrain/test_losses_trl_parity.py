"""Our post-training losses against TRL 1.16 on identical inputs (TRL is a test-only dependency).

Each test builds the real TRL trainer around one tiny random HF ``Olmo2ForCausalLM`` whose tokenizer is
the dolma2 tokenizer with our ``CHAT_TEMPLATE``, lets TRL tokenise, collate and compute its loss with
its own code (``SFTTrainer.compute_loss``, ``DPOTrainer._compute_loss``,
``GRPOTrainer._generate_and_score_completions`` + ``_compute_loss``), and computes ours from the same
model's logits. Tolerance: fp32, atol = rtol = 1e-5 (observed differences are ~1e-7: TRL's fused LM
head and our log-softmax sum in different orders).

Mapping (see losses.py): SFT "mean" = TRL's per-token mean, "sum" = TRL with num_items_in_batch=1;
DPO "dpo" = ``loss_type="sigmoid"``, "dpo_norm" = ``"sigmoid_norm"``; GRPO normalization "token" =
``"bnpo"``, "sequence" = ``"grpo"``, "token" + ``num_tokens`` = ``"dapo"``; advantages with
``unbiased=True, eps=1e-4`` = TRL's group scaling. TRL 1.16 has no PPO trainer, so GAE and the value
loss are checked against the textbook recursion at the end of this file instead.
"""

from __future__ import annotations

import warnings

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from transformers import AutoTokenizer, Olmo2Config, Olmo2ForCausalLM  # noqa: E402

from olmo2.chat import encode_chat, encode_prompt, write_hf_chat_files  # noqa: E402
from olmo2.posttrain.data import SFTExample, collate  # noqa: E402
from olmo2.posttrain.losses import (  # noqa: E402
    dpo_loss,
    gae,
    group_advantages,
    grpo_loss,
    kl_penalty,
    ppo_token_rewards,
    sequence_logprobs,
    sft_loss,
    token_logprobs,
    value_loss,
    whiten,
)
from olmo2.tokenizer import load_tokenizer  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-5)
# transformers' deprecation notices triggered by TRL's own config defaults, not by this code
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def user(text):
    return {"role": "user", "content": text}


def asst(text):
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tok, tmp_path_factory):
    """A 1-layer random Olmo2ForCausalLM over the full dolma2 vocabulary, with our HF tokenizer files."""
    out = tmp_path_factory.mktemp("tiny_olmo2")
    write_hf_chat_files(tok, out)
    torch.manual_seed(0)
    config = Olmo2Config(
        vocab_size=100352,
        hidden_size=16,
        num_attention_heads=2,
        num_hidden_layers=1,
        intermediate_size=32,
        eos_token_id=100257,
        pad_token_id=100277,
        bos_token_id=100257,
        initializer_range=0.2,  # peaked distributions, so log-probs and ratios are far from uniform
    )
    Olmo2ForCausalLM(config).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def hf_tok(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


def perturb(model, seed, scale=0.1):
    """Move the policy away from the reference (both start from the same checkpoint)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def logits_of(model, input_ids, attention_mask):
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


def trl_args(cls, model_dir, **kw):
    return cls(output_dir=f"{model_dir}/trl_out", report_to="none", use_cpu=True, bf16=False, **kw)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ----------------------------------------------------------------------------------------- SFT

SFT_CHATS = [
    [user("What is 2+2?"), asst("4")],
    [
        {"role": "system", "content": "Be brief."},
        user("Capital of France?"),
        asst("Paris."),
        user("And of Italy? 🇮🇹"),
        asst("Rome, of course."),
    ],
    [user("Write a haiku."), asst("Autumn moonlight—\na worm digs silently\ninto the chestnut.")],
]


def test_sft_assistant_mask_and_loss_match_trl(tok, model_dir, hf_tok):
    args = trl_args(trl.SFTConfig, model_dir, assistant_only_loss=True, max_length=None)
    dataset = datasets.Dataset.from_list([{"messages": m} for m in SFT_CHATS])
    trainer = quiet(
        trl.SFTTrainer, model=model_dir, args=args, train_dataset=dataset, processing_class=hf_tok
    )
    ours = [SFTExample.from_encoded(encode_chat(tok, m)) for m in SFT_CHATS]
    for row, ex in zip(trainer.train_dataset, ours, strict=True):
        assert row["input_ids"] == ex.input_ids
        assert row["labels"] == ex.labels  # TRL's assistant_only_loss mask = ours
    theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ours))])
    batch = collate(ours)
    assert torch.equal(theirs["input_ids"], batch.input_ids) and torch.equal(theirs["labels"], batch.labels)

    model = trainer.model.train()
    perturb(model, 1)
    logits = logits_of(model, theirs["input_ids"], theirs["attention_mask"])
    mean, n = sft_loss(logits, batch.labels, reduction="mean")
    total, _ = sft_loss(logits, batch.labels, reduction="sum")
    assert int(n) == batch.n_targets
    torch.testing.assert_close(mean, trainer.compute_loss(model, dict(theirs)), **TOL)
    trl_sum = trainer.compute_loss(model, dict(theirs), num_items_in_batch=torch.tensor(1))
    torch.testing.assert_close(total, trl_sum, **TOL)


# ----------------------------------------------------------------------------------------- DPO

PAIRS = [
    {"prompt": [user("What is 2+2?")], "chosen": [asst("4")], "rejected": [asst("It is five, obviously.")]},
    {
        "prompt": [{"role": "system", "content": "Be brief."}, user("Capital of France?")],
        "chosen": [asst("Paris.")],
        "rejected": [asst("Lyon, I think, or maybe Marseille.")],
    },
    {"prompt": [user("Say hi.")], "chosen": [asst("Hi! How can I help?")], "rejected": [asst("No.")]},
]


@pytest.mark.parametrize(
    "loss_type,ours_type,beta", [("sigmoid", "dpo", 0.1), ("sigmoid_norm", "dpo_norm", 5.0)]
)
def test_dpo_matches_trl(tok, model_dir, hf_tok, loss_type, ours_type, beta):
    args = trl_args(
        trl.DPOConfig, model_dir, beta=beta, loss_type=[loss_type], per_device_train_batch_size=len(PAIRS)
    )
    dataset = datasets.Dataset.from_list(PAIRS)
    trainer = quiet(
        trl.DPOTrainer, model=model_dir, args=args, train_dataset=dataset, processing_class=hf_tok
    )
    # TRL's tokenisation of each side = ours with train_on="last" (identical here to "all": single turn)
    chosen, rejected = [], []
    for row, pair in zip(trainer.train_dataset, PAIRS, strict=True):
        assert row["prompt_ids"] == encode_prompt(tok, pair["prompt"])
        for ids_key, resp, out in (
            ("chosen_ids", pair["chosen"], chosen),
            ("rejected_ids", pair["rejected"], rejected),
        ):
            enc = encode_chat(tok, pair["prompt"] + resp, train_on="last")
            assert row["prompt_ids"] + row[ids_key] == enc.input_ids
            assert len(row[ids_key]) == enc.n_targets  # the completion is exactly the trained tokens
            out.append(SFTExample.from_encoded(enc))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    ours = collate(chosen + rejected)
    assert torch.equal(batch["input_ids"], ours.input_ids)
    assert torch.equal(batch["completion_mask"].bool(), ours.labels != -100)

    model = trainer.model.train()
    perturb(model, 2)
    trl_loss = trainer._compute_loss(model, dict(batch), return_outputs=False)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    B = len(PAIRS)
    logps, n = sequence_logprobs(logits_of(model, batch["input_ids"], batch["attention_mask"]), ours.labels)
    with torch.no_grad():
        ref, _ = sequence_logprobs(
            logits_of(trainer.ref_model, batch["input_ids"], batch["attention_mask"]), ours.labels
        )
    out = dpo_loss(
        logps[:B],
        logps[B:],
        ref[:B],
        ref[B:],
        beta=beta,
        loss_type=ours_type,
        chosen_ntokens=n[:B],
        rejected_ntokens=n[B:],
    )
    torch.testing.assert_close(out.loss, trl_loss, **TOL)
    torch.testing.assert_close(logps[:B].mean().item(), metrics["logps/chosen"], **TOL)
    # TRL logs β·(Σ logπ − Σ logπ_ref) even for sigmoid_norm; ours are per-token means for dpo_norm
    scale = (n[:B], n[B:]) if ours_type == "dpo_norm" else (1, 1)
    torch.testing.assert_close(
        (out.chosen_rewards * scale[0]).mean().item(), metrics["rewards/chosen"], **TOL
    )
    torch.testing.assert_close(
        (out.rejected_rewards * scale[1]).mean().item(), metrics["rewards/rejected"], **TOL
    )
    if ours_type == "dpo":
        torch.testing.assert_close(out.margins.mean().item(), metrics["rewards/margins"], **TOL)
        assert out.accuracy.item() == metrics["rewards/accuracies"]

    # the gradients agree too (TRL's fused LM head has its own backward)
    trl_loss.backward()
    theirs = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    out.loss.backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, theirs[k], atol=1e-6, rtol=1e-4, msg=k)


# ---------------------------------------------------------------------------------------- GRPO

G = 4
QUESTIONS = ["What is 2+2?", "Name a colour.", "Say hi in French please."]
REWARDS = [10.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0, 10.0, 10.0, 0.0, 10.0]  # one group with zero spread


def test_grpo_advantages_and_losses_match_trl(tok, model_dir, hf_tok):
    g = torch.Generator().manual_seed(3)
    completions = [
        torch.randint(0, 100000, (int(torch.randint(2, 8, (1,), generator=g)),), generator=g).tolist()
        + [100257]
        for _ in REWARDS
    ]

    def rollout(prompts, trainer):  # TRL's hook for custom generation; prompts are tokenised by our chat code
        return {
            "prompt_ids": [encode_prompt(tok, p) for p in prompts],
            "completion_ids": completions[: len(prompts)],
            "logprobs": None,
        }

    def reward(prompts, completions, **kwargs):
        return REWARDS[: len(completions)]

    args = trl_args(
        trl.GRPOConfig,
        model_dir,
        per_device_train_batch_size=len(REWARDS),
        num_generations=G,
        beta=0.05,
        epsilon=0.1,
        loss_type="bnpo",
        max_completion_length=8,
        num_iterations=2,  # makes TRL compute the old policy's log-probs, so ratios are not all 1
    )
    prompts = [[user(q)] for q in QUESTIONS]
    dataset = datasets.Dataset.from_list([{"prompt": p} for p in prompts])
    trainer = quiet(
        trl.GRPOTrainer,
        model=model_dir,
        reward_funcs=reward,
        args=args,
        train_dataset=dataset,
        processing_class=hf_tok,
        rollout_func=rollout,
    )
    model = trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    out = quiet(trainer._generate_and_score_completions, [{"prompt": p} for p in prompts for _ in range(G)])

    ours_adv = group_advantages(torch.tensor(REWARDS), G, unbiased=True, eps=1e-4)
    torch.testing.assert_close(ours_adv, out["advantages"], **TOL)
    assert ours_adv[4:8].abs().max() == 0  # all-equal group: no signal

    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attn = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    C = out["completion_ids"].shape[1]
    labels = ids.masked_fill(attn == 0, -100)
    labels[:, :-C] = -100

    def completion_logps(m):
        logps, mask = token_logprobs(logits_of(m, ids, attn), labels)
        return logps[:, -C:], mask[:, -C:]

    with torch.no_grad():
        old, mask = completion_logps(model)
        ref, _ = completion_logps(trainer.ref_model)
    torch.testing.assert_close(old, out["old_per_token_logps"] * mask, **TOL)
    torch.testing.assert_close(ref, out["ref_per_token_logps"] * mask, **TOL)
    assert torch.equal(mask, out["completion_mask"].bool())

    perturb(model, 4)
    cases = [
        ("bnpo", "token", None, False),
        ("grpo", "sequence", None, False),
        ("dapo", "token", out["num_items_in_batch"], False),
        ("bnpo", "token", None, True),  # TRL's default KL importance weighting
    ]
    for trl_type, normalization, num_tokens, kl_ratio_weight in cases:
        trainer.loss_type = trl_type
        trainer.args.use_bias_correction_kl = kl_ratio_weight
        model.zero_grad()
        trl_loss = trainer._compute_loss(model, out)
        trl_loss.backward()
        theirs = {k: p.grad.clone() for k, p in model.named_parameters()}
        model.zero_grad()
        ours = grpo_loss(
            completion_logps(model)[0],
            ours_adv,
            mask,
            old_logps=old,
            ref_logps=ref,
            beta=0.05,
            clip_eps=0.1,
            normalization=normalization,
            num_tokens=num_tokens,
            kl_ratio_weight=kl_ratio_weight,
        )
        ours.loss.backward()
        case = f"{trl_type}, kl_ratio_weight={kl_ratio_weight}"
        torch.testing.assert_close(ours.loss, trl_loss, **TOL, msg=lambda m, case=case: f"{case}: {m}")
        for k, p in model.named_parameters():
            torch.testing.assert_close(
                p.grad, theirs[k], atol=1e-6, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}"
            )
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
        torch.testing.assert_close(ours.clip_frac.item(), metrics["clip_ratio/region_mean"], **TOL)
        if normalization == "token":
            torch.testing.assert_close(ours.kl.item(), metrics["kl"], **TOL)
    assert 0 < ours.clip_frac < 1  # the check above is not vacuous


def test_grpo_on_policy_and_validation():
    torch.manual_seed(0)
    logps = torch.randn(4, 5, requires_grad=True)
    adv, mask = torch.tensor([1.0, -1.0, 0.5, 0.0]), torch.ones(4, 5, dtype=torch.bool)
    out = grpo_loss(logps, adv, mask, beta=0.0)  # old = logps.detach(): ratio 1, loss = -mean(adv)
    torch.testing.assert_close(out.loss, -adv.mean())
    out.loss.backward()
    torch.testing.assert_close(logps.grad, -adv[:, None].expand(4, 5) / 20)
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(logps, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="normalization"):
        grpo_loss(logps, adv, mask, beta=0.0, normalization="batch")


def test_group_advantages_open_instruct_default():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    adv = group_advantages(r, 3)  # population std, eps 1e-8 (open-instruct grpo_fast)
    g = r.view(2, 3)
    expected = (g - g.mean(1, keepdim=True)) / (g.std(1, correction=0, keepdim=True) + 1e-8)
    torch.testing.assert_close(adv, expected.view(-1))
    torch.testing.assert_close(group_advantages(r, 3, scale=False), (g - g.mean(1, keepdim=True)).view(-1))
    with pytest.raises(ValueError, match="groups"):
        group_advantages(r, 4)


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -2.0, -0.1])
    d = logp - ref
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), d)
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), d**2 / 2)
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.exp(-d) - 1 + d)
    assert (kl_penalty(logp, ref, "k3") >= 0).all()


# ------------------------------------------------------------------------- PPO (no TRL counterpart)


def test_gae_matches_recursion():
    torch.manual_seed(0)
    rewards, values = torch.randn(2, 6), torch.randn(2, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    for b in range(2):
        n = int(mask[b].sum())
        a, expected = 0.0, [0.0] * 6
        for t in reversed(range(n)):
            nv = values[b, t + 1].item() if t + 1 < n else 0.0
            a = rewards[b, t].item() + gamma * nv - values[b, t].item() + gamma * lam * a
            expected[t] = a
        torch.testing.assert_close(adv[b], torch.tensor(expected))
    torch.testing.assert_close(ret, (adv + values) * mask)


def test_ppo_rewards_value_loss_whiten():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    logps, ref = torch.full((2, 4), -1.0), torch.full((2, 4), -1.5)
    r = ppo_token_rewards(torch.tensor([10.0, 0.0]), logps, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(r, torch.tensor([[-0.05, -0.05, 9.95, 0.0], [-0.05, -0.05, 0.0, 0.0]]))
    v, old, ret = (
        torch.tensor([[1.0, 2.0, 3.0, 9.0]]),
        torch.tensor([[1.0, 1.0, 1.0, 9.0]]),
        torch.zeros(1, 4),
    )
    m = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    loss, frac = value_loss(v, old, ret, m, clip_eps=0.5)
    # clipped values 1, 1.5, 1.5: max of squares 1, 4, 9 -> 0.5 * mean = 14/6
    torch.testing.assert_close(loss, torch.tensor(14 / 6))
    torch.testing.assert_close(frac, torch.tensor(0.0))
    w = whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), m)
    torch.testing.assert_close(w[0, :3].mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert w[0, 3] == 0
