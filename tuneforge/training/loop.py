"""The fine-tuning recipe: setup -> train -> cleanup.

(Just over 500 lines: one class kept whole, so that a run reads top to bottom in one file.)

One class reads top to bottom. `setup` builds everything in dependency order (processes,
model and tokenizer, data, resolved hyperparameters, model surgery for the method, optimizer
and schedule, resume, the output folder). `train` is the loop; it has no branch on the method
or the task: full fine-tuning, LoRA, head-only, frozen blocks and layer-wise LRs differ only in
the model surgery and the `TrainablePlan` made in setup; causal LM, classification and
preference tuning only in the objective (`CausalLMLoss` / `SequenceClassificationLoss` /
`PreferenceLoss`, whose reference log-probs are computed in setup). Gradual unfreezing swaps in
the next plan between steps (`_maybe_unfreeze`); everything else that happens between steps
(evaluation, the best evaluation, early stopping, stop requests, logging, checkpoints) is
`_after_step`.

The optimizer and schedule live in `tuneforge.training.optim`, the output folder (resume
target, final export, manifest, setup report) in `tuneforge.training.output`, the processes
and their collectives in `tuneforge.training.distributed`.

Run it with `run_training(cfg)`, or `torchrun --nproc-per-node N -m tuneforge train ...` for
data parallelism (DDP; gloo on CPU, NCCL on GPU). The global batch is the same for any number
of processes: each optimizer step splits `batch_size` items into `world_size * grad_accum`
micro-batches, and the loss is normalised by the trained tokens of the whole step.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from rich.console import Console

from tuneforge import memory
from tuneforge.modeling.attention import use_block_attention
from tuneforge.modeling.lean import lean_saves
from tuneforge.modeling.load import base_causal_lm, find_blocks
from tuneforge.modeling.trainable import LoraSpec, apply_lora, build_plan
from tuneforge.training import checkpoint as ckpt
from tuneforge.training import output
from tuneforge.training.build import (
    check_same_order,
    data_order,
    hold_bf16,
    load_start_model,
    make_plan,
    mix_in_replay,
    resolve_config,
    resolve_run_dtype,
    tokenize_data,
)
from tuneforge.training.classify import SequenceClassificationLoss, read_labels
from tuneforge.training.config import TrainConfig, higher_is_better, save_config
from tuneforge.training.data import TokenizedSet
from tuneforge.training.distributed import Processes, close_process_group
from tuneforge.training.dpo import PreferenceLoss, PreferencePair, compute_reference
from tuneforge.training.evaluate import evaluate_objective
from tuneforge.training.lineage import read_parent
from tuneforge.training.loss import CausalLMLoss
from tuneforge.training.metrics import MetricsWriter
from tuneforge.training.optim import (
    LRSchedule,
    build_optimizer,
    open_stage,
    warmup_factor,
    warmup_steps,
)
from tuneforge.training.output import TrainResult
from tuneforge.training.transfer import UnfreezeSchedule, improved, trainable_spec

# Called on every process as callback(recipe, event, data): "start" (setup done, before the
# first step; data {}), "step" (after each optimizer step; data is the step's metrics record),
# and the run's events ("unfreeze", "early_stopping"; data is the event's). A callback may call
# `recipe.request_stop()`: the run then ends after this step, with a checkpoint.
Callback = Callable[["FinetuneRecipe", str, dict[str, Any]], None]


class FinetuneRecipe:
    """A fine-tune (full, LoRA, head-only; frozen blocks, gradual unfreezing, layer-wise LRs;
    causal LM, classifier or DPO; fresh or continued), described entirely by a `TrainConfig`.

    Attributes, in the order `setup` makes them:
        out, resume_from: the output folder, and the checkpoint this run continues (or None).
        proc: this process's rank and device, and the collectives (`Processes`).
        dtype: the compute dtype model.dtype resolved to, and why (`DTypeChoice`).
        parent: the fine-tune this one continues (`Parent`), or None for a base model.
        labels: a classifier's labels (None for a causal LM).
        model, tokenizer: the starting model (after the method's surgery) and its tokenizer.
        train_set, valid_set: the tokenized data (valid_set None without validation data);
            replay: what was mixed in from the parent's data (None without replay).
        cfg: the config, its "auto" values resolved from the data.
        plan, total_steps: the batches of each epoch, and the run's length in steps.
        n_blocks, unfreeze: the model's transformer blocks, and gradual unfreezing's
            schedule (None without it).
        trainable, n_trainable: what trains now (`TrainablePlan`) and how many parameters.
        objective, loss_fn: the loss module, and the same under DDP when distributed.
        optimizer, schedule: AdamW and the per-step LR (`LRSchedule`).
        state: the progress (`TrainState`), saved in every checkpoint.
        higher_is_better: the direction of early_stop.metric, which picks the best evaluation.
        metrics: the metrics and events files (rank 0 only; None elsewhere).
        last_checkpoint: the newest checkpoint this run wrote.
        memory: this process's resident memory and peak so far at the end of each phase
            (`tuneforge.memory.snapshot`): "loaded", "ready", "trained", "evaluated", and
            "saved" in the manifest.
    """

    def __init__(
        self, cfg: TrainConfig, console: Console | None = None, callback: Callback | None = None
    ):
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.callback = callback
        self.metrics: MetricsWriter | None = None
        self.last_checkpoint: Path | None = None
        self._stop_requested = False
        self._old_handlers: dict[int, Any] = {}

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Everything a run needs, in dependency order, then the resume and the output folder."""
        # The output folder first: a fresh run into a used folder fails before anything loads.
        self.out = Path(self.cfg.output.dir)
        self.resume_from = output.resume_target(self.cfg, self.out, self.ckpt_root)
        self.prepare()
        self.proc.barrier()  # every process has inspected the output folder before anyone writes
        if self.resume_from is not None:
            self._resume(self.resume_from)
        if self.proc.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.resume_from is None and self.ckpt_root.exists():
                # A fresh run (output.overwrite): old checkpoints must not pass for this run's.
                shutil.rmtree(self.ckpt_root)
            save_config(self.cfg, self.out / "config.yaml")
            resume_step = self.state.step if self.resume_from is not None else None
            self.metrics = MetricsWriter(self.out, resume_step=resume_step)
            output.report_setup(self, self.console)
        self._install_signal_handlers()

    def prepare(self) -> None:
        """Processes, model, data, hyperparameters, trainable plan and optimizer; writes
        nothing. `setup` calls it; `lr_find` calls it alone (its sweep leaves the folder alone).
        """
        cfg = self.cfg
        # Processes first: everything else may depend on rank and device.
        self.proc = Processes.from_env()
        self.dtype = resolve_run_dtype(cfg.model.dtype, self.proc)
        # Same seed on every rank: identical head and adapter init, dropout streams.
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        # Continued fine-tuning starts from the parent's weights (or its base + adapter).
        self.parent = read_parent(cfg.parent.model) if cfg.parent.model else None
        classify = cfg.task == "classify"
        self.labels = (cfg.classify.labels or read_labels(cfg.data.train)) if classify else None
        self.model, self.tokenizer = load_start_model(
            cfg, self.parent, self.labels, self.proc.device, self.dtype.name
        )
        self.memory = {"loaded": memory.snapshot()}

        # Data before hyperparameters: "auto" values depend on the dataset size.
        def tokenize(path: Path) -> TokenizedSet:
            return tokenize_data(cfg, path, self.tokenizer, self.labels)

        self.train_set = tokenize(cfg.data.train)
        self.valid_set = tokenize(cfg.data.valid) if cfg.data.valid else None
        if not self.train_set.examples:
            raise ValueError(f"{cfg.data.train}: no trainable example left")
        self.replay = None
        if self.parent is not None and cfg.parent.replay > 0:
            self.replay = mix_in_replay(cfg, self.parent, self.train_set, tokenize)
        # The hidden size, which the "auto" LR scales with (configs map their own names to it).
        self.width: int | None = getattr(self.model.config, "hidden_size", None)
        self.cfg = cfg = resolve_config(
            cfg, self.train_set, self.parent, self.proc.world_size, self.width
        )
        self.plan, self.total_steps = make_plan(cfg, self.train_set, self.proc.world_size)

        # Model surgery: the only place where the method matters (an adapter parent already
        # carries its adapter).
        if cfg.method == "lora" and not hasattr(self.model, "peft_config"):
            lora, task_type = cfg.lora, "SEQ_CLS" if classify else "CAUSAL_LM"
            spec = LoraSpec(lora.r, lora.alpha, lora.dropout, lora.target_modules)
            self.model = apply_lora(self.model, spec, task_type)
        # What trains, in which group, at what LR: one plan from the config (freezing,
        # head-only, layer-wise LR) at the first stage of gradual unfreezing.
        self.n_blocks = len(find_blocks(self.model)[1])
        self.unfreeze = UnfreezeSchedule.from_config(cfg, self.n_blocks)
        start_blocks = self.unfreeze.unfrozen_blocks(0, 0) if self.unfreeze else None
        self.trainable = build_plan(
            self.model, trainable_spec(cfg, self.n_blocks, start_blocks)
        ).apply(self.model)
        self.n_trainable = self.trainable.counts(self.model)[0]
        if self.n_trainable == 0:
            raise ValueError("no parameter trains: check method, freeze and unfreeze settings")
        if self.dtype.name == "bf16":  # frozen weights in bf16 once, trained ones in fp32
            hold_bf16(self.model, cfg, self.trainable, self.n_blocks, self.unfreeze is not None)
        # Norms and MLPs keep less for backward, LoRA linears fuse their sum (`modeling.lean`).
        lean_saves(self.model)
        if self.dtype.name == "bf16":  # causal attention on the bf16 matmul units (CPU)
            use_block_attention(self.model)
        if cfg.model.gradient_checkpointing:
            base_causal_lm(self.model).gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        self.model.train()
        self.objective: CausalLMLoss | SequenceClassificationLoss | PreferenceLoss
        if classify:
            self.objective = SequenceClassificationLoss(self.model, len(self.labels or []))
        elif cfg.task == "dpo":
            assert isinstance(cfg.dpo.beta, float)
            self.objective = PreferenceLoss(
                self.model, cfg.dpo.beta, cfg.dpo.label_smoothing, cfg.dpo.sft_weight
            )
            # DPO's reference: the starting weights' log-probs of every pair, once, before
            # the first step (a resume recomputes them from the same start, before loading
            # the checkpoint's weights).
            sets = [self.train_set.examples] + ([self.valid_set.examples] if self.valid_set else [])
            compute_reference(
                self.model,
                cast(list[list[PreferencePair]], sets),
                self.tokenizer.pad_token_id,
                self.proc,
                self._autocast,
                cfg.eval.batch_size,
            )
        else:
            self.objective = CausalLMLoss(self.model)
        self.loss_fn = self.proc.wrap(self.objective)

        warmup = warmup_steps(cfg.optim.warmup, self.total_steps)
        factor = warmup_factor(warmup, self.total_steps, cfg.optim.schedule)
        self.optimizer, self.schedule = self.new_optimizer(factor)
        self.state = ckpt.TrainState(
            data_order=data_order(self.plan, cfg.seed, self.total_steps),
            unfrozen_blocks=start_blocks,
            metric=cfg.early_stop.metric,
        )
        self.higher_is_better = higher_is_better(cfg.early_stop.metric)
        self.memory["ready"] = memory.snapshot()

    def new_optimizer(self, factor: Callable[[int], float]) -> tuple[torch.optim.AdamW, LRSchedule]:
        """AdamW over the current trainable plan's groups (fresh state), and a schedule setting
        each group's LR to its base LR x `factor(step)`: the run's own, or lr_find's sweep."""
        o = self.cfg.optim
        groups = self.trainable.param_groups(self.model, o.lr)
        optimizer = build_optimizer(groups, o.lr, o.betas, o.eps)
        return optimizer, LRSchedule(optimizer, factor)

    def _resume(self, path: Path) -> None:
        """Continue from the checkpoint at `path`: weights, optimizer, schedule, RNG, progress."""
        saved = ckpt.read_state(path)
        check_same_order(path, saved.data_order, self.state.data_order)
        if saved.metric != self.state.metric:
            # Its best value and patience count are of another metric.
            raise ValueError(
                f"{path}: this run picked its best evaluation by {saved.metric}; resume it with "
                f"early_stop.metric {saved.metric} (this config asks for {self.state.metric})"
            )
        # Reopen the blocks open at the checkpoint, group by group in the original order, so
        # the optimizer's groups line up with its saved state.
        if saved.unfrozen_blocks != self.state.unfrozen_blocks:
            self._unfreeze_to(saved.unfrozen_blocks, log=False)
        self.state = ckpt.load_checkpoint(path, self.model, self.optimizer, self.schedule)

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, frame: Any) -> None:
            self.request_stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread
                self._old_handlers[sig] = signal.signal(sig, on_signal)

    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    @property
    def params(self) -> list[torch.nn.Parameter]:
        """The trained parameters (every optimizer group's)."""
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    @property
    def warmup_steps(self) -> int:
        return warmup_steps(self.cfg.optim.warmup, self.total_steps)

    def request_stop(self) -> None:
        """End the run after the current optimizer step, with a checkpoint (SIGINT/SIGTERM)."""
        self._stop_requested = True

    # ------------------------------------------------------------------ train
    def train(self) -> TrainResult:
        """The loop: an optimizer step per batch of the plan, then `_after_step`, until the
        last step, early stopping or a stop request; then the final evaluation and export."""
        state, plan = self.state, self.plan
        start_time = time.perf_counter() - state.elapsed
        progress = output.progress_bar(self.console, enabled=self.proc.is_main)
        bar = progress.add_task("train", total=self.total_steps, completed=state.step, info="")
        self._notify("start", {})
        stop_reason = None
        with progress:
            while state.step < self.total_steps and stop_reason is None:
                epoch, batches = state.epoch, plan.epoch_batches(state.epoch)
                # Until this epoch ends (state.epoch moves on after its last batch).
                while state.epoch == epoch and state.step < self.total_steps:
                    self._maybe_unfreeze()  # gradual unfreezing: open the next block if due
                    t0 = time.perf_counter()
                    stats = self.optimizer_step(batches[state.step_in_epoch])
                    step_tokens = stats.pop("step_tokens")
                    state.step += 1
                    state.step_in_epoch += 1
                    state.tokens += step_tokens
                    state.elapsed = time.perf_counter() - start_time
                    record = {
                        "step": state.step,
                        "epoch": state.epoch + state.step_in_epoch / len(batches),
                        **stats,
                        "trainable_params": self.n_trainable,
                        "tokens": state.tokens,
                        "tokens_per_s": step_tokens / (time.perf_counter() - t0),
                        "elapsed": state.elapsed,
                    }
                    stop_reason = self._after_step(record, len(batches))
                    info = (
                        f"loss {record['train_loss']:.4f}  lr {record['lr']:.2e}  "
                        f"{record['tokens_per_s']:,.0f} tok/s"
                    )
                    progress.update(bar, completed=state.step, info=info)
                    if stop_reason is not None:
                        break
        if stop_reason == "interrupted":
            if self.proc.is_main:
                self.console.print(
                    f"stopped at step {state.step}; continue with --resume auto "
                    f"(checkpoint {self.last_checkpoint})"
                )
            return TrainResult(
                "stopped",
                self.out,
                state.step,
                checkpoint=self.last_checkpoint,
                stop_reason="interrupted",
            )
        self.memory["trained"] = memory.snapshot()
        return self._finish(stop_reason or "completed")

    def _after_step(self, record: dict[str, Any], epoch_len: int) -> str | None:
        """Everything between two optimizer steps: evaluation, the best evaluation, early stopping,
        stop requests, the metrics record and the checkpoint. Returns why the run ends now
        ("early_stopping", "interrupted"), or None to go on."""
        cfg, state = self.cfg, self.state
        state.valid_loss = state.valid_metric = None
        every = cfg.eval.eval_every
        if self.valid_set is not None and every and state.step % every == 0:
            record.update(self.evaluate(cfg.eval.max_examples))
            state.valid_loss, state.valid_metric = record["valid_loss"], record[state.metric]
        # The best evaluation by early_stop.metric: its checkpoint is kept (and exported).
        new_best = state.valid_metric is not None and improved(
            state.valid_metric, state.best_valid_metric, 0.0, self.higher_is_better
        )
        if new_best:
            state.best_valid_metric = state.valid_metric
        stop_reason = "early_stopping" if self._patience_exhausted() else None
        self._notify("step", record)  # may request a stop
        if self.proc.agree(self._stop_requested):
            stop_reason = "interrupted"
        epoch_end = state.step_in_epoch == epoch_len
        save_every = cfg.checkpoint.save_every
        save = (
            epoch_end
            or stop_reason is not None
            or bool(save_every and state.step % save_every == 0)
            or (new_best and cfg.checkpoint.keep_best)
        )
        if epoch_end:  # the saved position points at the next epoch's start
            state.epoch, state.step_in_epoch = state.epoch + 1, 0
        # Log before checkpointing: a resume drops records past its checkpoint, so a kill in
        # between never loses a step's record.
        if self.metrics is not None:
            self.metrics.log(record)
        if save:
            self._checkpoint()
        return stop_reason

    def optimizer_step(
        self,
        batch: list[int],
        optimizer: torch.optim.Optimizer | None = None,
        schedule: LRSchedule | None = None,
    ) -> dict[str, Any]:
        """One optimizer step on `batch` (one batch of `plan.epoch_batches`): forward/backward
        this process's micro-batches, clip, update the weights, move the schedule on. An
        objective whose forward returns a fourth element (summable statistics: DPO's) adds its
        `metrics(..., "train")` to the result.

        Uses the run's optimizer and schedule unless given others (lr_find's sweep). Returns
        the step's train_loss, train_mean_token_accuracy, lr, grad_norm and step_tokens, its
        number of trained tokens (summed over processes).
        """
        optimizer = self.optimizer if optimizer is None else optimizer
        schedule = self.schedule if schedule is None else schedule
        proc = self.proc
        micro = [self._collate(items) for items in self.plan.micro_batches(batch, proc.rank)]
        # Normalise by the trained tokens (or examples) of the whole step, on all processes, so
        # accumulation and data parallelism equal one big batch.
        n_step = proc.all_sum(sum(self.objective.n_targets(b) for b in micro))
        n = max(1, int(n_step.item()))
        scale = proc.world_size / n  # DDP averages gradients over processes
        loss_sum = torch.zeros((), device=proc.device)
        correct = torch.zeros((), device=proc.device, dtype=torch.long)
        sums: dict[str, torch.Tensor] = {}  # an objective's own summed statistics (DPO's)
        for i, mb in enumerate(micro):
            mb = {k: v.to(proc.device, non_blocking=True) for k, v in mb.items()}
            with proc.no_sync(self.loss_fn, sync=i == len(micro) - 1):
                with self._autocast():  # forward only: backward runs in the forward's dtypes
                    part, _, hits, *extra = self.loss_fn(mb)
                (part * scale).backward()
            loss_sum += part.detach()
            correct += hits
            for k, v in (extra[0] if extra else {}).items():
                sums[k] = sums[k] + v if k in sums else v
        params = [p for g in optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(
            params, self.cfg.optim.max_grad_norm or float("inf")
        )
        group = optimizer.param_groups[0]
        lr = group["lr"] / group.get("lr_scale", 1.0)  # the base LR, whatever group 0's scale
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum, correct = proc.all_sum(loss_sum), proc.all_sum(correct)
        extra_metrics = (
            self.objective.metrics({k: proc.all_sum(v) for k, v in sums.items()}, "train")
            if sums
            else {}
        )
        return {
            "train_loss": loss_sum.item() / n,
            "train_mean_token_accuracy": correct.item() / n,
            **extra_metrics,
            "lr": lr,
            "grad_norm": grad_norm.item(),
            "step_tokens": int(n_step.item()),
        }

    def _collate(self, items: list[int]) -> dict[str, torch.Tensor]:
        """One micro-batch: packed rows, or the objective's padded batch of examples."""
        examples, pad_id = self.train_set.examples, self.tokenizer.pad_token_id
        if self.plan.packing:
            dtype = torch.bfloat16 if self.dtype.name == "bf16" else torch.float32
            return self.plan.collate(examples, items, pad_id, dtype)
        return self.objective.collate([examples[i] for i in items], pad_id)

    def _autocast(self) -> torch.autocast:
        bf16 = self.dtype.name == "bf16"
        return torch.autocast(self.proc.device.type, dtype=torch.bfloat16, enabled=bf16)

    def _maybe_unfreeze(self) -> None:
        if self.unfreeze is None:
            return
        due = self.unfreeze.unfrozen_blocks(self.state.step, self.state.epoch)
        if due != self.state.unfrozen_blocks:
            self._unfreeze_to(due)

    def _unfreeze_to(self, blocks: int, log: bool = True) -> None:
        """Open the top `blocks` blocks, one stage at a time, each joining the optimizer as new
        parameter groups (their LR from the layer decay, fresh AdamW state)."""
        while self.state.unfrozen_blocks < blocks:
            stage = self.state.unfrozen_blocks + 1
            self.trainable, opened = open_stage(
                self.model, self.cfg, self.n_blocks, stage, self.trainable, self.schedule
            )
            self.state.unfrozen_blocks = stage
            self.n_trainable = self.trainable.counts(self.model)[0]
            if log:
                what = f"block {self.n_blocks - stage}" if stage <= self.n_blocks else "embeddings"
                message = (
                    f"step {self.state.step}: unfroze {what} ({opened} tensors); "
                    f"{self.n_trainable:,} parameters train"
                )
                data = {"unfrozen_blocks": stage, "trainable_params": self.n_trainable}
                self._event("unfreeze", message, data)
        self.loss_fn = self.proc.wrap(self.objective)  # DDP registers the new parameters

    def _patience_exhausted(self) -> bool:
        """Early stopping: count evaluations without an improvement of min_delta (of
        early_stop.metric, in its better direction)."""
        es, state = self.cfg.early_stop, self.state
        if es.patience is None or state.valid_metric is None:
            return False
        if improved(state.valid_metric, state.early_stop_best, es.min_delta, self.higher_is_better):
            state.early_stop_best, state.evals_without_improvement = state.valid_metric, 0
            return False
        state.evals_without_improvement += 1
        return state.evals_without_improvement >= es.patience

    def _checkpoint(self) -> None:
        if self.proc.is_main:
            self.last_checkpoint = ckpt.save_checkpoint(
                self.ckpt_root,
                self.model,
                self.optimizer,
                self.schedule,
                self.state,
                self.tokenizer,
            )
            keep = self.cfg.checkpoint
            ckpt.prune_checkpoints(
                self.ckpt_root, keep.keep_last, keep.keep_best, self.higher_is_better
            )
        self.proc.barrier()

    def _event(self, kind: str, message: str, data: dict[str, Any]) -> None:
        """A run event: `events.jsonl` and the console (rank 0), and the callback."""
        if self.metrics is not None:
            self.metrics.event(self.state.step, kind, message, **data)
            self.console.print(message)
        self._notify(kind, data)

    def _notify(self, event: str, data: dict[str, Any]) -> None:
        if self.callback is not None:
            self.callback(self, event, data)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, max_examples: int | None = None, prefix: str = "valid") -> dict[str, Any]:
        """The objective's metrics on (the first `max_examples` of) the validation set, sharded
        over processes. Causal LM: loss, perplexity, token accuracy (OpenAI's names:
        valid_loss, valid_mean_token_accuracy); classify: loss, accuracy, macro-F1, confusion.
        """
        assert self.valid_set is not None
        return evaluate_objective(
            self.objective,
            self.model,
            self.valid_set.examples[:max_examples],
            self.cfg.eval.batch_size,
            self.tokenizer.pad_token_id,
            self.proc,
            self._autocast,
            prefix,
        )

    # ------------------------------------------------------------------ output
    def _finish(self, stop_reason: str) -> TrainResult:
        """The final metrics (best checkpoint, full validation), the early-stopping event, and
        the exported model folder."""
        cfg, state = self.cfg, self.state
        # Training is over and checkpointed: the optimizer state (2x the trained weights) is
        # not needed any more, and freeing it lowers the peak of the final evaluation and save.
        self.optimizer.state.clear()
        final: dict[str, Any] = {
            "step": state.step,
            "tokens": state.tokens,
            "stop_reason": stop_reason,
        }
        if self.metrics is not None:
            final.update({k: v for k, v in self.metrics.last.items() if k.startswith("train_")})
        # Export the best evaluation's weights, not the last step's, when early stopping asks.
        export_best = cfg.early_stop.patience is not None and cfg.early_stop.export_best
        metric = cfg.early_stop.metric
        final.update(output.load_best(self.ckpt_root, metric, self.model if export_best else None))
        if self.valid_set is not None:
            full = self.evaluate(None, prefix="full_valid")
            final.update(full)
            final.update({"valid" + k.removeprefix("full_valid"): v for k, v in full.items()})
        self.memory["evaluated"] = memory.snapshot()
        if stop_reason == "early_stopping":
            message = (
                f"early stopping at step {state.step}: {metric} did not improve by "
                f"{cfg.early_stop.min_delta:g} for {cfg.early_stop.patience} evaluations"
            )
            keys = ("best_step", "best_valid_loss", f"best_{metric}")
            self._event("early_stopping", message, {k: final[k] for k in keys if k in final})
        if self.proc.is_main:
            output.export_run(self, final)
        self.proc.barrier()
        return TrainResult(
            "completed", self.out, state.step, final, self.last_checkpoint, stop_reason
        )

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        """Restore the signal handlers, close the metrics files and the process group."""
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        if self.metrics is not None:
            self.metrics.close()
        close_process_group()


def run_training(
    cfg: TrainConfig, console: Console | None = None, callback: Callback | None = None
) -> TrainResult:
    """Run a whole fine-tune: setup, train, cleanup. `callback` (see `Callback`) hears of the
    start, every step and every event: a job follows its progress and can stop it there."""
    recipe = FinetuneRecipe(cfg, console, callback)
    try:
        recipe.setup()
        return recipe.train()
    finally:
        recipe.cleanup()
