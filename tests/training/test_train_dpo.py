"""Preference tuning (task 'dpo'): the loss against a hand computation, the cached reference,
and real runs on a tiny model (LoRA, full with gradual unfreezing, accumulation, resume,
continuing an SFT fine-tune)."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
import torch.nn.functional as F
from pref_data import write_preference_jsonl
from rich.console import Console
from train_data import make_config, run_recipe, write_chat_jsonl

from tuneforge.auto import auto_lr
from tuneforge.modeling.load import load_model_and_tokenizer
from tuneforge.tokenize import IGNORE_INDEX, encode, encode_preference
from tuneforge.training.config import ConfigError
from tuneforge.training.dpo import (
    PreferenceLoss,
    PreferencePair,
    collate_pairs,
    read_preferences,
    sequence_logps,
)
from tuneforge.training.lineage import lineage
from tuneforge.training.loop import FinetuneRecipe
from tuneforge.training.metrics import read_metrics

DPO = {"task": "dpo", "optim.batch_size": 4, "optim.lr": 3e-3}


def _pairs(tiny_model_dir, tmp_path, n=4):
    _, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), "fp32")
    path = write_preference_jsonl(tmp_path / "pairs.jsonl", n)
    return read_preferences(path, tokenizer, 512, "drop").examples, tokenizer


def _direct_logps(model, enc) -> torch.Tensor:
    """log pi(reply | prompt) the textbook way: full logits, log-softmax, trained labels."""
    ids = torch.tensor([enc.input_ids])
    logp = model(input_ids=ids).logits.float().log_softmax(-1)[0, :-1]  # (T-1, V)
    total = torch.zeros(())
    for t, label in enumerate(enc.labels[1:]):
        if label != IGNORE_INDEX:
            total = total + logp[t, label]
    return total


def test_preference_pairs_are_masked_exactly_as_sft_masks_the_chat(tiny_model_dir, tmp_path):
    _, tokenizer = _pairs(tiny_model_dir, tmp_path, 2)
    example = {
        "input": {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello, how can I help?"},
                {"role": "user", "content": "My balance?"},
            ]
        },
        "preferred_output": [{"role": "assistant", "content": "120 dollars."}],
        "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
    }
    chosen, rejected = encode_preference(example, tokenizer)
    for enc, reply in ((chosen, "120 dollars."), (rejected, "Go away.")):
        msgs = example["input"]["messages"] + [{"role": "assistant", "content": reply}]
        sft = encode({"messages": msgs}, tokenizer, train_on="last_assistant")
        assert enc.input_ids == sft.input_ids and enc.labels == sft.labels
        trained = tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX])
        assert trained.startswith(reply) and "Hello" not in trained
    with pytest.raises(ValueError, match=r"preference tuning .* not chat examples"):
        encode_preference({"messages": [{"role": "user", "content": "x"}]}, tokenizer)
    with pytest.raises(ValueError, match="cannot be trained by supervised fine-tuning"):
        encode(example, tokenizer)


@pytest.mark.parametrize("sft_weight", [0.0, 0.7])
def test_dpo_loss_and_gradient_match_a_direct_computation(tiny_model_dir, tmp_path, sft_weight):
    pairs, tokenizer = _pairs(tiny_model_dir, tmp_path, 3)
    model, _ = load_model_and_tokenizer(str(tiny_model_dir), "fp32")
    # A reference that differs from the policy, so the sigmoid is away from 1/2.
    for k, p in enumerate(pairs):
        p.ref_chosen, p.ref_rejected = -40.0 - 3 * k, -55.0 + 5 * k
    beta, eps = 0.3, 0.1
    objective = PreferenceLoss(model, beta, label_smoothing=eps, sft_weight=sft_weight)
    loss_sum, n, correct, sums = objective(collate_pairs(pairs, tokenizer.pad_token_id))
    loss_sum.backward()
    got = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    want = torch.zeros(())
    wins = 0
    for p in pairs:
        z = beta * (
            (_direct_logps(model, p.chosen) - p.ref_chosen)
            - (_direct_logps(model, p.rejected) - p.ref_rejected)
        )
        want = want - (1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
        # SFT-regularised: the preferred reply's mean per-token negative log-likelihood.
        n_chosen = sum(label != IGNORE_INDEX for label in p.chosen.labels[1:])
        want = want - sft_weight * _direct_logps(model, p.chosen) / n_chosen
        wins += int(z.item() > 0)
    want.backward()
    assert int(n) == 3 and int(correct) == wins
    assert loss_sum.item() == pytest.approx(want.item(), rel=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    metrics = PreferenceLoss.metrics(sums, "valid")
    assert metrics["valid_loss"] == pytest.approx(want.item() / 3, rel=1e-5)


def test_gradient_vanishes_as_beta_goes_to_zero(tiny_model_dir, tmp_path):
    pairs, tokenizer = _pairs(tiny_model_dir, tmp_path, 4)
    model, _ = load_model_and_tokenizer(str(tiny_model_dir), "fp32")
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    with torch.no_grad():  # policy == reference: the start of every DPO run
        ref = sequence_logps(model, batch).double()
    batch["ref_chosen"], batch["ref_rejected"] = ref[:4], ref[4:]
    norms = {}
    for beta in (0.1, 1e-3, 1e-6):
        model.zero_grad()
        loss, *_ = PreferenceLoss(model, beta)(batch)
        assert loss.item() == pytest.approx(4 * math.log(2), rel=1e-6)
        loss.backward()
        norms[beta] = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters())).item()
    # At policy == reference, d loss / d theta = -beta / 2 * d z / d theta: linear in beta.
    assert norms[0.1] > 0
    assert norms[1e-3] == pytest.approx(norms[0.1] * 1e-2, rel=1e-3)
    assert norms[1e-6] < 1e-4 * norms[0.1]


def _capture_reference(recipe, event, data):
    if event == "start":
        recipe.ref_at_start = [(p.ref_chosen, p.ref_rejected) for p in recipe.train_set.examples]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_raises_reward_accuracy_with_a_fixed_reference(method, tiny_model_dir, tmp_path):
    train = write_preference_jsonl(tmp_path / "train.jsonl", 16)
    valid = write_preference_jsonl(tmp_path / "valid.jsonl", 8, seed=1)
    overrides = {**DPO, "method": method, "data.valid": str(valid), "eval.eval_every": 4}
    overrides["optim.lr"] = 3e-3 if method == "lora" else 1e-3
    cfg = make_config(tiny_model_dir, train, tmp_path / "out", **overrides)
    assert cfg.dpo.beta == "auto"
    recipe = FinetuneRecipe(cfg, Console(file=io.StringIO()), callback=_capture_reference)
    try:
        recipe.setup()
        assert recipe.cfg.dpo.beta == 0.1  # "auto"
        result = recipe.train()
    finally:
        recipe.cleanup()
    records = read_metrics(tmp_path / "out")
    # Step 1 starts at the reference: every reward 0, loss log 2, no pair ranked right.
    assert records[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert records[0]["train_reward_accuracy"] == 0.0
    assert result.metrics["full_valid_reward_accuracy"] == 1.0
    assert result.metrics["full_valid_reward_margin"] > 0.3
    assert result.metrics["full_valid_loss"] < math.log(2) - 0.1
    assert result.metrics["full_valid_chosen_logps"] > result.metrics["full_valid_rejected_logps"]
    for key in ("train_reward_margin", "train_chosen_logps", "train_rejected_logps"):
        assert all(key in r for r in records)
    # The reference was computed once, from the starting model, and never moved.
    now = [(p.ref_chosen, p.ref_rejected) for p in recipe.train_set.examples]
    assert now == recipe.ref_at_start
    start, _ = load_model_and_tokenizer(str(tiny_model_dir), "fp32")
    direct = _direct_logps(start, recipe.train_set.examples[0].chosen).item()
    assert recipe.ref_at_start[0][0] == pytest.approx(direct, rel=1e-5)
    manifest = (tmp_path / "out" / "tuneforge.json").read_text()
    assert '"task": "dpo"' in manifest and '"beta": 0.1' in manifest


def test_gradual_unfreezing_and_frozen_blocks_train_dpo(tiny_deep_dir, tmp_path):
    train = write_preference_jsonl(tmp_path / "train.jsonl", 8)
    over = {**DPO, "method": "full", "freeze.blocks": 1, "unfreeze.every": 1}
    cfg = make_config(
        tiny_deep_dir, train, tmp_path / "out", **{**over, "optim.batch_size": 2, "optim.lr": 1e-3}
    )
    recipe = run_recipe(cfg)
    records = read_metrics(tmp_path / "out")
    trainable = [r["trainable_params"] for r in records]
    assert trainable == sorted(trainable) and trainable[-1] > trainable[0]
    assert records[-1]["train_reward_margin"] > 0
    frozen = recipe.model.model.layers[0].mlp.up_proj.weight
    start, _ = load_model_and_tokenizer(str(tiny_deep_dir), "fp32")
    torch.testing.assert_close(frozen, start.model.layers[0].mlp.up_proj.weight, rtol=0, atol=0)


def test_dpo_gradient_accumulation_equals_one_big_batch(tiny_model_dir, tmp_path):
    train = write_preference_jsonl(tmp_path / "train.jsonl", 8)
    runs = []
    for accum in (1, 4):
        out = tmp_path / f"accum{accum}"
        over = {**DPO, "method": "full", "optim.batch_size": 8, "optim.grad_accum": accum}
        cfg = make_config(
            tiny_model_dir, train, out, **{**over, "optim.epochs": 2, "optim.lr": 1e-4}
        )
        runs.append((run_recipe(cfg), read_metrics(out)))
    (big, big_m), (acc, acc_m) = runs
    assert len(big_m) == len(acc_m) == 2
    for a, b in zip(big_m, acc_m, strict=True):
        for key in ("train_loss", "train_reward_margin", "train_chosen_logps", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    for (name, p), q in zip(big.model.named_parameters(), acc.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


def test_stopped_dpo_run_resumes_on_the_same_curve(tiny_model_dir, tmp_path):
    train = write_preference_jsonl(tmp_path / "train.jsonl", 8)
    over = {**DPO, "optim.batch_size": 2, "checkpoint.save_every": 2, "lora.dropout": 0.1}
    ref = tmp_path / "ref"
    run_recipe(make_config(tiny_model_dir, train, ref, **over))

    out = tmp_path / "run"

    def stop_at_1(recipe, event, data):
        if event == "step" and data["step"] == 1:
            recipe.request_stop()

    recipe = FinetuneRecipe(
        make_config(tiny_model_dir, train, out, **over), Console(file=io.StringIO()), stop_at_1
    )
    try:
        recipe.setup()
        assert recipe.train().status == "stopped"
    finally:
        recipe.cleanup()
    resumed = run_recipe(
        make_config(tiny_model_dir, train, out, **over, **{"checkpoint.resume": "auto"})
    )
    assert resumed.resume_from is not None
    got, want = read_metrics(out), read_metrics(ref)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3, 4]
    for g, w in zip(got, want, strict=True):
        for key in ("train_loss", "train_reward_margin", "grad_norm"):
            assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-6), (g["step"], key)


def test_dpo_continues_an_sft_fine_tune_with_lineage(tiny_model_dir, tmp_path):
    sft = tmp_path / "sft"
    chat = write_chat_jsonl(tmp_path / "chat.jsonl", 8)
    run_recipe(make_config(tiny_model_dir, chat, sft, **{"optim.max_steps": 2}))
    train = write_preference_jsonl(tmp_path / "train.jsonl", 8)
    over = {**DPO, "parent.model": str(sft), "optim.max_steps": 2, "optim.lr": "auto"}
    cfg = make_config(tiny_model_dir, train, tmp_path / "dpo", **over)
    log = io.StringIO()
    recipe = FinetuneRecipe(cfg, Console(file=log, width=200))
    try:
        recipe.setup()
        recipe.train()
    finally:
        recipe.cleanup()
    assert lineage(tmp_path / "dpo")[-2:] == [str(sft), str(tmp_path / "dpo")]
    # "auto" is DPO's own LR (a tenth of SFT's rule at this width), not the SFT parent's 1e-3
    # x parent.lr_factor: the parent's step size was for another objective.
    assert recipe.cfg.optim.lr == auto_lr("lora", 64, "dpo") == pytest.approx(9e-5)
    assert "lr=9e-05" in log.getvalue()
    # The reference is the SFT fine-tune (its adapter on), not the bare base.
    from peft import PeftModel

    base, _ = load_model_and_tokenizer(str(tiny_model_dir), "fp32")
    parent = PeftModel.from_pretrained(base, str(sft))
    first = recipe.train_set.examples[0]
    assert first.ref_chosen == pytest.approx(_direct_logps(parent, first.chosen).item(), rel=1e-5)
    with parent.disable_adapter():
        assert first.ref_chosen != pytest.approx(_direct_logps(parent, first.chosen).item())


def test_dpo_config_problems_and_data_mismatch(tiny_model_dir, tmp_path):
    train = write_preference_jsonl(tmp_path / "train.jsonl", 4)
    with pytest.raises(ConfigError) as err:
        make_config(tiny_model_dir, train, tmp_path / "o", task="dpo", **{"data.packing": True})
    assert "does not support data.packing" in str(err.value)
    with pytest.raises(ConfigError, match=r"dpo\.beta: must be > 0"):
        make_config(tiny_model_dir, train, tmp_path / "o", task="dpo", **{"dpo.beta": 0.0})
    chat = write_chat_jsonl(tmp_path / "chat.jsonl", 4)
    with pytest.raises(ValueError, match=r"chat\.jsonl:1: preference tuning .* not chat examples"):
        run_recipe(make_config(tiny_model_dir, chat, tmp_path / "a", task="dpo"))
    with pytest.raises(ValueError, match="cannot be trained by supervised fine-tuning"):
        run_recipe(make_config(tiny_model_dir, train, tmp_path / "b"))


def test_collate_pairs_stacks_chosen_then_rejected(tiny_model_dir, tmp_path):
    pairs, tokenizer = _pairs(tiny_model_dir, tmp_path, 3)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 6 and batch["input_ids"].shape[1] % 8 == 0
    for k, p in enumerate(pairs):
        assert batch["input_ids"][k, : len(p.chosen)].tolist() == p.chosen.input_ids
        assert batch["input_ids"][3 + k, : len(p.rejected)].tolist() == p.rejected.input_ids
    assert isinstance(pairs[0], PreferencePair) and len(pairs[0]) == max(
        len(pairs[0].chosen), len(pairs[0].rejected)
    )


def _stop_at(step):
    def callback(recipe, event, data):
        if event == "step" and data["step"] == step:
            recipe.request_stop()

    return callback


def test_dpo_early_stopping_follows_reward_accuracy_and_resumes_exactly(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from tuneforge.training import checkpoint as ckpt

    train = write_preference_jsonl(tmp_path / "train.jsonl", 16)
    valid = write_preference_jsonl(tmp_path / "valid.jsonl", 8, seed=1)
    over = {
        **DPO,
        "data.valid": str(valid),
        "optim.epochs": 4,
        "eval.eval_every": 1,
        "early_stop.patience": 2,
        "early_stop.metric": "valid_reward_accuracy",
    }
    ref = tmp_path / "ref"
    result = run_recipe(make_config(tiny_model_dir, train, ref, **over)).result
    records = read_metrics(ref)
    accuracy = {r["step"]: r["valid_reward_accuracy"] for r in records}
    loss = {r["step"]: r["valid_loss"] for r in records}
    # The separable set is ranked right from the first step on, while the loss keeps falling:
    # following the loss would go on; following the reward accuracy stops two evaluations
    # after its first best, and exports that evaluation's weights.
    assert list(accuracy.values()) == [1.0, 1.0, 1.0]
    assert loss[3] < loss[2] < loss[1]
    assert result.stop_reason == "early_stopping" and result.step == 3
    manifest = json.loads((ref / "tuneforge.json").read_text())["metrics"]
    assert manifest["exported_step"] == manifest["best_step"] == 1
    assert manifest["best_valid_reward_accuracy"] == 1.0
    assert manifest["best_valid_loss"] == pytest.approx(loss[1])
    adapter = "adapter_model.safetensors"
    best = ckpt.best_checkpoint(ref / "checkpoints", higher=True)
    assert ckpt.read_state(best).step == 1
    exported, kept, last = (
        load_file(f / adapter) for f in (ref, best, ref / "checkpoints" / "step-000003")
    )
    assert all(torch.equal(exported[n], kept[n]) for n in kept)
    assert not all(torch.equal(exported[n], last[n]) for n in last)
    events = read_metrics(ref, "events.jsonl")
    assert [e["kind"] for e in events] == ["early_stopping"]
    assert "valid_reward_accuracy did not improve" in events[0]["message"]

    # Stopped after step 2 (one evaluation without improvement), the resumed run keeps the
    # best value and the count: it stops at step 3 and exports step 1, as the uninterrupted run.
    out = tmp_path / "run"
    first = FinetuneRecipe(
        make_config(tiny_model_dir, train, out, **over), Console(file=io.StringIO()), _stop_at(2)
    )
    try:
        first.setup()
        assert first.train().status == "stopped"
    finally:
        first.cleanup()
    saved = ckpt.read_state(ckpt.latest_checkpoint(out / "checkpoints"))
    assert (saved.step, saved.evals_without_improvement, saved.early_stop_best) == (2, 1, 1.0)
    assert saved.metric == "valid_reward_accuracy"
    resume = {**over, "checkpoint.resume": "auto"}
    resumed = run_recipe(make_config(tiny_model_dir, train, out, **resume)).result
    assert (resumed.stop_reason, resumed.step) == ("early_stopping", 3)
    assert resumed.metrics["exported_step"] == 1
    for key in ("valid_reward_accuracy", "valid_loss", "train_loss"):
        got = [r[key] for r in read_metrics(out)]
        assert got == pytest.approx([r[key] for r in records], rel=1e-5), key
    again = load_file(out / adapter)
    for name in exported:
        torch.testing.assert_close(again[name], exported[name], rtol=1e-5, atol=1e-6)
    # Resuming with another metric would misread the saved best value and count.
    with pytest.raises(
        ValueError, match=r"resume it with early_stop\.metric valid_reward_accuracy"
    ):
        run_recipe(
            make_config(tiny_model_dir, train, out, **{**resume, "early_stop.metric": "valid_loss"})
        )


def test_early_stopping_metric_must_be_one_the_task_reports(tiny_model_dir, tmp_path):
    chat = write_chat_jsonl(tmp_path / "chat.jsonl", 4)
    with pytest.raises(ConfigError) as err:
        make_config(
            tiny_model_dir, chat, tmp_path / "o", **{"early_stop.metric": "valid_reward_accuracy"}
        )
    assert (
        "early_stop: metric 'valid_reward_accuracy' is not reported by task 'causal_lm' "
        "(it reports: valid_loss, valid_mean_token_accuracy)"
    ) in str(err.value)
    with pytest.raises(ConfigError, match="not reported by task 'dpo'"):
        make_config(
            tiny_model_dir,
            chat,
            tmp_path / "o",
            task="dpo",
            **{"early_stop.metric": "valid_accuracy"},
        )
    cfg = make_config(
        tiny_model_dir,
        chat,
        tmp_path / "o",
        task="dpo",
        **{"early_stop.metric": "valid_reward_margin"},
    )
    assert cfg.early_stop.metric == "valid_reward_margin"
