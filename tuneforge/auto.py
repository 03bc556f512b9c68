"""The "auto" rules: epochs, batch size and learning rate picked from the dataset and method.

One dependency-free module (the lowest layer), so `data stats`, `train`, and the fine-tuning
API's hyperparameters all pick the same numbers.

Example:
    >>> auto_epochs(1000), auto_batch_size(1000), auto_lr("lora", width=4096)
    (3, 8, 0.0002)
"""

from __future__ import annotations

import math

# OpenAI's "auto" epochs: 3, unless the dataset is so small or so large that the number of
# examples seen should be pulled into [MIN_EXAMPLES_SEEN, MAX_EXAMPLES_SEEN].
DEFAULT_EPOCHS = 3
MIN_EXAMPLES_SEEN = 100
MAX_EXAMPLES_SEEN = 25_000
MAX_EPOCHS = 25


def auto_epochs(n_examples: int) -> int:
    """The epoch count OpenAI's "auto" picks for `n_examples` examples.

    3 by default; for tiny datasets more, so that n_examples * epochs >= 100 (at most 25); for
    huge ones fewer, so that n_examples * epochs <= 25,000 (at least 1).

    Example:
        >>> auto_epochs(10), auto_epochs(1000), auto_epochs(20000)
        (10, 3, 1)
    """
    n = max(1, n_examples)
    if n * DEFAULT_EPOCHS < MIN_EXAMPLES_SEEN:
        return min(MAX_EPOCHS, math.ceil(MIN_EXAMPLES_SEEN / n))
    if n * DEFAULT_EPOCHS > MAX_EXAMPLES_SEEN:
        return max(1, MAX_EXAMPLES_SEEN // n)
    return DEFAULT_EPOCHS


def auto_batch_size(n_examples: int) -> int:
    """About 0.2% of the examples rounded to a power of two, at least min(8, n/4), at most 256."""
    n = max(1, n_examples)
    target = 2 ** round(math.log2(max(1.0, n * 0.002)))
    return int(min(256, max(target, min(8, max(1, n // 4)))))


# The model width the reference LRs are for: 4,096, a 7B-class model, where 2e-4 for LoRA is
# the peers' common default. Narrower models take larger steps, up to MAX_WIDTH_FACTOR times.
# On SmolLM2-135M-Instruct (width 576), LoRA on the demo's 101 bank chats for 39 steps, asked
# 8 questions with 14 facts in their answers, general-prose perplexity against the base:
# 3x (6e-4) 3 facts, +2.1%; 4.5x (9e-4) 9 facts, +7.5%; 6x (1.2e-3) 12 facts, +12.8%.
REFERENCE_WIDTH = 4096
MAX_WIDTH_FACTOR = 4.5


# Preference tuning (task 'dpo') takes a tenth of supervised fine-tuning's step: see auto_lr.
DPO_LR_FACTOR = 0.1


def auto_lr(method: str, width: int | None = None, task: str = "causal_lm") -> float:
    """Peak learning rate per method, model width (hidden size; None: unknown) and task.

    Adapters and a lone head tolerate (and need) a larger step than the whole network: 2e-4
    for LoRA, 2e-5 for full fine-tuning at a width of 4,096. The step grows as the width
    shrinks (REFERENCE_WIDTH / width, at most 4.5x, never smaller): the update of a weight
    matrix moves its outputs in proportion to its width, the rule muP makes exact. A 135M
    model (width 576) gets 9e-4 for LoRA, where 2e-4 learns too little in a short run; the
    cap keeps the general knowledge of such a small model (see MAX_WIDTH_FACTOR).

    Preference tuning (task 'dpo') takes DPO_LR_FACTOR (a tenth) of that, for the same method
    and width: its loss pushes a reply's log-probability against a reference with no floor
    (the rejected reply's can fall without end), and its gradient is scaled by beta, so a
    supervised step size drives the policy far from the reference within a few steps and the
    chosen replies' likelihood falls with the rejected ones'. The peers' DPO settings sit a
    decade or more below their SFT ones: TRL's DPOConfig defaults to 1e-6, the alignment
    handbook's Zephyr-7B recipes use 5e-7 (full) and 5e-6 (QLoRA), and LoRA DPO runs commonly
    use 5e-6 to 5e-5. At width 576 this gives 9e-5 for LoRA and 9e-6 for full fine-tuning
    (the most any width gets), 2e-5 / 2e-6 at 4,096.

    Example:
        >>> auto_lr("lora"), auto_lr("lora", 576), auto_lr("lora", 2048), auto_lr("full", 8192)
        (0.0002, 0.0009000000000000001, 0.0004, 2e-05)
        >>> auto_lr("lora", 576, "dpo"), auto_lr("full", 576, "dpo"), auto_lr("full", 4096, "dpo")
        (9e-05, 9.000000000000002e-06, 2.0000000000000003e-06)
    """
    reference = 2e-5 if method == "full" else 2e-4
    if task == "dpo":
        reference *= DPO_LR_FACTOR
    if not width:
        return reference
    return reference * min(MAX_WIDTH_FACTOR, max(1.0, REFERENCE_WIDTH / width))
