"""`ServerSettings`: every knob of `tuneforge serve`, in one typed model.

The CLI, the environment (`TUNEFORGE_*` variables) and tests all build one `ServerSettings`;
nothing else in the server reads the environment. A pydantic-settings `BaseSettings`: every
field reads `TUNEFORGE_<FIELD>` (lists comma-separated), and values passed in (CLI flags) win.

Example:
    >>> settings = ServerSettings.from_env(model_dir="models", api_keys=["sk-local"])
    >>> app = create_app(settings)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tuneforge.data.io import ReadLimits
from tuneforge.inference.quantize import KINDS as QUANTIZE_KINDS
from tuneforge.jobs.limits import JobLimits
from tuneforge.modeling.dtype import DTYPE_NAMES

ENV_PREFIX = "TUNEFORGE_"
_JOB = JobLimits()  # the defaults of the job caps below (tuneforge.jobs.limits owns them)
# A list read from the environment as comma-separated names, not as JSON.
CommaList = Annotated[list[str], NoDecode]


class ServerSettings(BaseSettings):
    """Configuration of the OpenAI-compatible server: inference and fine-tuning jobs."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_assignment=True
    )

    # -- where models and data live -------------------------------------------------------------
    model_dir: Path = Field(
        Path("models"),
        description="The model store: every model folder (base models, merged fine-tunes, LoRA "
        "adapters) under it, up to two levels deep, is served under its relative path as id. "
        "Model ids never resolve outside this folder.",
    )
    base_model: str | None = Field(
        None,
        description="Id (folder under model_dir), folder path or Hub id of the base model kept "
        "in memory; adapters are applied on it. Default: the only full model in model_dir.",
    )
    data_dir: Path = Field(
        Path("tuneforge-data"),
        description="Where the server keeps its own state (uploaded files, job store, outputs).",
    )

    database_url: str | None = Field(
        None,
        description="Job store database URL (default: SQLite in data_dir); a PostgreSQL URL "
        "lets many workers share one queue.",
    )

    # -- fine-tuning jobs (tuneforge.server.jobs) ----------------------------------------------
    worker: bool = Field(
        False,
        description="Run a job worker in the server process (`tuneforge serve` turns it on "
        "unless --no-worker).",
    )
    worker_lease_s: float = Field(
        30.0, gt=0, description="Job lease: a worker silent this long is presumed dead."
    )
    max_upload_bytes: int = Field(
        512 * 1024 * 1024, ge=1024, description="Largest file accepted by POST /v1/files (413)."
    )
    max_upload_rows: int = Field(
        ReadLimits.max_rows,
        ge=1,
        description="Most rows of an uploaded Parquet file, read from its footer before any "
        "decoding (the file ends `error` above it; decoded text is capped at max_upload_bytes).",
    )
    upload_validation_workers: int = Field(
        2,
        ge=1,
        description="Uploads validated at once, in background threads of the server (an upload "
        "answers `uploaded` at once and moves to `processed` or `error`).",
    )

    # -- what one job may cost, and per-organization quotas (tuneforge.jobs.limits) ----------
    job_max_steps: int = Field(
        _JOB.max_steps, ge=1, description="Largest optim.max_steps of a job."
    )
    job_max_epochs: int = Field(
        _JOB.max_epochs, ge=1, description="Largest n_epochs / optim.epochs."
    )
    job_max_batch_size: int = Field(
        _JOB.max_batch_size,
        ge=1,
        description="Largest batch_size, optim.grad_accum and eval.batch_size.",
    )
    job_max_length: int = Field(
        _JOB.max_length, ge=8, description="Largest data.max_length (tokens per sequence)."
    )
    job_max_lora_r: int = Field(_JOB.max_lora_r, ge=1, description="Largest lora.r.")
    job_max_keep_last: int = Field(
        _JOB.max_keep_last, ge=1, description="Largest checkpoint.keep_last."
    )
    job_max_wall_s: float = Field(
        _JOB.max_wall_s,
        gt=0,
        description="Wall-clock limit of one run of a job, in seconds: past it the worker "
        "stops training and the job fails (code wall_clock_limit_exceeded).",
    )
    org_max_active_jobs: int = Field(
        _JOB.max_active_jobs,
        ge=1,
        description="Jobs an organization may have validating, queued or running (429).",
    )
    org_max_file_bytes: int = Field(
        _JOB.max_file_bytes, ge=0, description="Bytes of files an organization may store (429)."
    )

    # -- who may call ------------------------------------------------------------------------
    api_keys: CommaList = Field(
        default_factory=list,
        description="Accepted API keys, all of organization 'default' (env TUNEFORGE_API_KEYS: "
        "comma-separated).",
    )
    api_keys_file: Path | None = Field(
        None, description='JSON file mapping key -> organization: {"sk-...": "org-a"}.'
    )
    admin_keys: CommaList = Field(
        default_factory=list,
        description="Operator keys (organization 'default'): besides what any key may do, they "
        "may delete model folders of model_dir over HTTP, which no other key can (env "
        "TUNEFORGE_ADMIN_KEYS: comma-separated).",
    )

    # -- engine ---------------------------------------------------------------------------------
    dtype: str = Field(
        "auto",
        description="auto, fp32, bf16 or fp16. auto: bf16 where the device runs it fast (CUDA "
        "with bf16; a CPU whose measured probe finds bf16 clearly faster), else fp32.",
    )
    quantize: str = Field(
        "none",
        description="none, int8 or int4: decode steps on a CPU read a quantized copy of the "
        "weights (int4: groups of 32 with a scale and zero point, GGUF Q4_1's layout; the output "
        "head in int8). Prompts keep the full weights.",
    )
    device: str | None = Field(None, description="torch device (default: cuda if available).")
    max_batch_size: int = Field(16, ge=1, description="Sequences decoded together per step.")
    max_queue: int = Field(64, ge=0, description="Requests waiting for a slot before 429.")
    max_adapters: int = Field(8, ge=1, description="LoRA adapters kept loaded (LRU eviction).")
    max_full_models: int = Field(
        1, ge=0, description="Merged full fine-tunes kept loaded besides the base (LRU)."
    )
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads.")

    # -- request limits --------------------------------------------------------------------------
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="Request body cap (413).")
    max_tokens_cap: int = Field(4096, ge=1, description="Largest max_tokens accepted.")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when none is given.")
    max_n: int = Field(8, ge=1, description="Largest n accepted.")
    max_stop: int = Field(4, ge=0, description="Most stop sequences per request.")
    max_stop_chars: int = Field(64, ge=1, description="Longest stop sequence.")
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Longest prompt (default: the model's context length)."
    )
    max_prompt_chars: int | None = Field(
        None,
        ge=1,
        description="Longest prompt text in characters, refused (400) before it is tokenized. "
        "Default: the prompt token limit times the longest token of the vocabulary, which no "
        "prompt that fits can exceed.",
    )
    max_logprobs: int = Field(20, ge=0, description="Largest top_logprobs accepted.")
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with 429.")

    # -- network ----------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind.")
    allow_public_without_keys: bool = Field(
        False,
        description="Start on a non-loopback host with no API key configured (refused "
        "otherwise: anyone who can reach the port could use and change the server).",
    )
    allowed_hosts: CommaList = Field(
        default_factory=list,
        description="Extra names the server answers to in the Host header (env "
        "TUNEFORGE_ALLOWED_HOSTS: comma-separated). A server bound to loopback answers only "
        "localhost, 127.0.0.1, [::1] and these (421 otherwise), so a web page cannot reach it "
        "by DNS rebinding; on other hosts, when set, only these names are answered.",
    )
    trust_remote_code: bool = Field(False, description="Run model code from the Hub (off).")

    @field_validator("dtype", "quantize")
    @classmethod
    def _check_choice(cls, value: str, info: ValidationInfo) -> str:
        choices = {"dtype": DTYPE_NAMES, "quantize": QUANTIZE_KINDS}[str(info.field_name)]
        if value not in choices:
            raise ValueError(f"{info.field_name} must be one of {', '.join(choices)}")
        return value

    @field_validator("api_keys", "admin_keys", "allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @classmethod
    def from_env(cls, **overrides: Any) -> ServerSettings:
        """Settings from `TUNEFORGE_<FIELD>` variables, then `overrides` (None means unset)."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})

    def job_limits(self) -> JobLimits:
        """The caps and quotas above, as the job store and worker take them."""
        return JobLimits(
            max_steps=self.job_max_steps,
            max_epochs=self.job_max_epochs,
            max_batch_size=self.job_max_batch_size,
            max_length=self.job_max_length,
            max_lora_r=self.job_max_lora_r,
            max_keep_last=self.job_max_keep_last,
            max_wall_s=self.job_max_wall_s,
            max_active_jobs=self.org_max_active_jobs,
            max_file_bytes=self.org_max_file_bytes,
        )

    def upload_limits(self) -> ReadLimits:
        """What validating an upload accepts before refusing the file."""
        return ReadLimits(max_rows=self.max_upload_rows, max_bytes=self.max_upload_bytes)

    def key_table(self) -> dict[str, str]:
        """Every accepted API key -> its organization id (empty: auth is off)."""
        table = dict.fromkeys([*self.api_keys, *self.admin_keys], "default")
        if self.api_keys_file is not None:
            mapping = json.loads(Path(self.api_keys_file).read_text())
            if not isinstance(mapping, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
            ):
                raise ValueError(f"{self.api_keys_file}: expected a JSON object key -> org id")
            table.update(mapping)
        return table
