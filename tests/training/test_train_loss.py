"""The chunked, trained-positions-only loss equals the standard full-logits masked CE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tuneforge.modeling.tiny import build_model
from tuneforge.modeling.trainable import LoraSpec, apply_lora
from tuneforge.tokenize import IGNORE_INDEX, Encoded, collate_packed
from tuneforge.training.loss import causal_lm_loss


def _batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, vocab, (3, 12), generator=g)
    labels = input_ids.clone()
    labels[:, :4] = IGNORE_INDEX  # prompt
    labels[1, 8:] = IGNORE_INDEX
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 9:] = 0  # right padding
    labels[2, 9:] = IGNORE_INDEX
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def _reference(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1].float()  # (B, T-1, V)
    targets = batch["labels"][:, 1:]
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    mask = targets != IGNORE_INDEX
    correct = ((logits.argmax(-1) == targets) & mask).sum()
    return loss_sum, correct


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("lora", [False, True])
def test_chunked_loss_matches_full_logits(tiny_tokenizer, arch, lora):
    # eval(): GPT-2 has dropout, and both computations must see the same network.
    model = build_model(tiny_tokenizer, arch=arch).eval()
    if lora:
        model = apply_lora(model, LoraSpec(r=4, dropout=0.0))
        # Non-zero B so the adapter changes the output and gets gradients through the body.
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    batch = _batch(len(tiny_tokenizer))
    params = [p for p in model.parameters() if p.requires_grad]

    ref_loss, ref_correct = _reference(model, batch)
    ref_grads = torch.autograd.grad(ref_loss, params)

    # chunk=5 forces several chunks over the 17 trained positions.
    loss, n, correct = causal_lm_loss(model, chunk=5, **batch)
    grads = torch.autograd.grad(loss, params)

    assert n.item() == (batch["labels"][:, 1:] != IGNORE_INDEX).sum().item() == 17
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert correct.item() == ref_correct.item()
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-6)


def test_masked_positions_are_not_trained(tiny_tokenizer):
    model = build_model(tiny_tokenizer, arch="llama")
    batch = _batch(len(tiny_tokenizer))
    loss, _, _ = causal_lm_loss(model, **batch)
    # Padding tokens (attention-masked, labels masked) may hold any id: the loss is unchanged.
    other = dict(batch, input_ids=batch["input_ids"].clone())
    other["input_ids"][2, 9:] = torch.tensor([5, 6, 7])
    loss2, _, _ = causal_lm_loss(model, **other)
    torch.testing.assert_close(loss, loss2)

    # All labels masked: zero loss, zero trained tokens and exactly zero gradients.
    none = dict(batch, labels=torch.full_like(batch["labels"], IGNORE_INDEX))
    loss0, n0, _ = causal_lm_loss(model, **none)
    loss0.backward()
    assert n0.item() == 0 and loss0.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_packed_batch_equals_separate_examples(tiny_tokenizer):
    """Packing with a block-causal mask gives the same loss as running examples one by one."""
    model = build_model(tiny_tokenizer, arch="llama")
    g = torch.Generator().manual_seed(1)
    encs = []
    for n in (7, 5, 9):
        ids = torch.randint(4, len(tiny_tokenizer), (n,), generator=g).tolist()
        encs.append(Encoded(ids, [IGNORE_INDEX] * 2 + ids[2:]))
    packed = collate_packed(encs, [[0, 1], [2]], seq_len=14, pad_id=tiny_tokenizer.pad_token_id)
    loss, n, _ = causal_lm_loss(model, **packed)
    total = torch.zeros(())
    count = 0
    for e in encs:
        ids = torch.tensor([e.input_ids])
        part, k, _ = causal_lm_loss(model, ids, torch.tensor([e.labels]))
        total, count = total + part, count + k.item()
    assert n.item() == count
    torch.testing.assert_close(loss, total, rtol=1e-5, atol=1e-5)
