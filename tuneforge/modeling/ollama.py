"""An Ollama `Modelfile` for an exported GGUF: the chat template in Ollama's Go template
language, the end-of-turn stops, the training data's system prompt, the sampling defaults.

A Jinja chat template cannot be run by Ollama, so it is recognised, not converted: each
`ChatFormat` (ChatML, Llama 3) says how a turn of each role is wrapped, and is accepted only
when rendering probe conversations with the model's own template (as training renders them)
gives exactly what the format's wrappers give. The Go template is written from the same
wrappers, so what is checked is what Ollama gets.

Example:
    >>> fmt, default_system = chat_format(tokenizer)  # checked before the GGUF is written
    >>> write_modelfile("runs/bank-v1", export, fmt, default_system)
    (PosixPath('bank-v1.Modelfile'), 'ollama create bank-v1 -f bank-v1.Modelfile')
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.modeling.gguf import GGUFError


class ModelfileError(GGUFError):
    """A model whose chat cannot be written as a Modelfile; one line, for the command line."""


@dataclass(frozen=True)
class ChatFormat:
    """How a chat template wraps each turn: (prefix, suffix) per role."""

    name: str
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """The prompt text these wrappers give (what the Go template renders)."""
        out = []
        for m in messages:
            prefix, suffix = getattr(self, m["role"])
            out.append(prefix + m["content"] + suffix)
        if add_generation_prompt:
            out.append(self.assistant[0])
        return "".join(out)

    def go_template(self) -> str:
        """Ollama's TEMPLATE: the system prompt, then each message wrapped as `render` does;
        a last assistant message is left open (Ollama continues it), else the assistant
        header follows. Literal text is written as Go string constants, so the `{{-` that
        trims the template's own line breaks never eats a newline of the format."""
        s, u, a = (
            tuple(_go_text(x) for x in pair) for pair in (self.system, self.user, self.assistant)
        )
        return (
            f"{{{{- if .System }}}}{s[0]}{{{{ .System }}}}{s[1]}{{{{ end }}}}\n"
            "{{- range $i, $_ := .Messages }}\n"
            "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
            f'{{{{- if eq .Role "user" }}}}{u[0]}{{{{ .Content }}}}{u[1]}\n'
            f'{{{{- else if eq .Role "assistant" }}}}{a[0]}{{{{ .Content }}}}'
            f"{{{{ if not $last }}}}{a[1]}{{{{ end }}}}\n"
            "{{- end }}\n"
            f'{{{{- if and (ne .Role "assistant") $last }}}}{a[0]}{{{{ end }}}}\n'
            "{{- end }}"
        )


def _go_text(text: str) -> str:
    """`text` as a Go template action printing a string constant (JSON's escapes are Go's)."""
    return "{{ " + json.dumps(text) + " }}" if text else ""


CHATML = ChatFormat(
    "ChatML",
    system=("<|im_start|>system\n", "<|im_end|>\n"),
    user=("<|im_start|>user\n", "<|im_end|>\n"),
    assistant=("<|im_start|>assistant\n", "<|im_end|>\n"),
)
LLAMA3 = ChatFormat(
    "Llama 3",
    system=("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
    user=("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
    assistant=("<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
)
FORMATS = (CHATML, LLAMA3)

_S, _U, _A, _U2 = "Be brief.", "Where is Paris?", "In France.", "And Rome?"
_PROBES: list[tuple[list[dict[str, str]], bool]] = [
    ([{"role": "system", "content": _S}, {"role": "user", "content": _U}], True),
    (
        [
            {"role": "system", "content": _S},
            {"role": "user", "content": _U},
            {"role": "assistant", "content": _A},
            {"role": "user", "content": _U2},
        ],
        True,
    ),
    (
        [
            {"role": "system", "content": _S},
            {"role": "user", "content": _U},
            {"role": "assistant", "content": _A},
        ],
        False,
    ),
]


def _rendered(tokenizer: Any, messages: list[dict[str, str]], gen: bool) -> str:
    from tuneforge.modeling.gguf_export import adds_token

    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    bos = tokenizer.bos_token
    # Where tokenizing adds BOS, the GGUF says so (add_bos) and llama.cpp / Ollama add it
    # themselves: the template's own BOS is not part of the TEMPLATE.
    if bos and text.startswith(bos) and adds_token(tokenizer, tokenizer.bos_token_id, True):
        return text[len(bos) :]
    return text


def chat_format(tokenizer: Any) -> tuple[ChatFormat, str | None]:
    """The format of the tokenizer's chat template, and the system prompt the template puts
    in when a conversation has none (SmolLM2's, say), or None.

    Raises:
        ModelfileError: the template is none of `FORMATS`.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ModelfileError("the model has no chat template to write as Ollama's TEMPLATE")
    for fmt in FORMATS:
        try:
            if all(_rendered(tokenizer, m, gen) == fmt.render(m, gen) for m, gen in _PROBES):
                return fmt, _default_system(tokenizer, fmt)
        except Exception:  # a template that raises on a probe is not this format
            continue
    names = ", ".join(f.name for f in FORMATS)
    raise ModelfileError(
        f"the chat template is not one TuneForge can write in Ollama's template language "
        f"({names}); the GGUF still carries it for llama.cpp"
    )


def _default_system(tokenizer: Any, fmt: ChatFormat) -> str | None:
    user = [{"role": "user", "content": _U}]
    text = _rendered(tokenizer, user, True)
    if text == fmt.render(user, True):
        return None
    prefix, suffix = fmt.system
    rest = fmt.render(user, True)
    if text.startswith(prefix) and text.endswith(rest):
        inner = text[len(prefix) : len(text) - len(rest)]
        if inner.endswith(suffix):
            return inner[: len(inner) - len(suffix)]
    raise ModelfileError("the chat template adds text to a conversation without a system prompt")


def constant_system_prompt(source: str | Path) -> str | None:
    """The system prompt every training example began with, when there was exactly one
    (read from the training file `tuneforge.json` records); None otherwise, or when that
    file is no longer there."""
    from tuneforge.data.io import DatasetError, read_dataset
    from tuneforge.modeling.folder import read_folder

    manifest = read_folder(source).manifest
    path = manifest.train_data if manifest is not None else None
    if path is None or not path.is_file():
        return None
    try:
        examples = [ex for _, ex in read_dataset(path).examples()]
    except DatasetError:
        return None
    systems = set()
    for ex in examples:
        messages = ex.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
            return None
        first = messages[0]
        if first.get("role") != "system" or not isinstance(first.get("content"), str):
            return None
        systems.add(first["content"])
    return systems.pop() if len(systems) == 1 else None


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise ModelfileError(f'the {what} contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def modelfile(
    gguf_file: str,
    fmt: ChatFormat,
    stops: list[str],
    system: str | None,
    sampling: dict[str, float],
) -> str:
    """The Modelfile's text: FROM the GGUF (a path relative to the Modelfile), TEMPLATE,
    SYSTEM, a PARAMETER stop per end-of-turn token, and the sampling defaults."""
    lines = [f"FROM ./{gguf_file}", f"TEMPLATE {_quoted(fmt.go_template(), 'template')}"]
    if system is not None:
        lines.append(f"SYSTEM {_quoted(system, 'system prompt')}")
    for stop in stops:
        lines.append(f'PARAMETER stop "{stop}"')
    for key in ("temperature", "top_p", "top_k"):
        if key in sampling:
            value = sampling[key]
            lines.append(f"PARAMETER {key} {int(value) if key == 'top_k' else value:g}")
    return "\n".join(lines) + "\n"


def ollama_name(path: str | Path) -> str:
    """A model name `ollama create` accepts, from the GGUF's file name."""
    name = re.sub(r"[^a-z0-9._-]+", "-", Path(path).stem.lower()).strip("-._")
    return name or "tuneforge-model"


def write_modelfile(
    source: str | Path, export: Any, fmt: ChatFormat, default_system: str | None
) -> tuple[Path, str]:
    """Write `<gguf stem>.Modelfile` next to the exported GGUF (atomically); return its path
    and the `ollama create` command that makes a model of it. `fmt` and `default_system` are
    `chat_format`'s answer for the model's tokenizer."""
    import shlex

    from tuneforge.fsutil import atomic_write

    system = constant_system_prompt(source)
    text = modelfile(
        export.path.name, fmt, export.stop_tokens, system or default_system, export.sampling
    )
    path = export.path.with_name(f"{export.path.stem}.Modelfile")
    with atomic_write(path) as f:
        f.write(text)
    command = f"ollama create {ollama_name(export.path)} -f {shlex.quote(str(path))}"
    return path, command
