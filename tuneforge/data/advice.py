"""Prompt-completion advice: the conventions OpenAI's legacy `prepare_data` tool checked."""

from __future__ import annotations

from tuneforge.data.io import Problem
from tuneforge.data.problems import problem, show

# A shared prefix shorter than this (once stripped) is a coincidence, not boilerplate.
_MIN_XFIX = 2


class PromptCompletionAdvice:
    """The conventions OpenAI's legacy `prepare_data` tool advised for prompt-completion data,
    gathered one example at a time: the common prefix of many texts is that of the least and
    the greatest of them, so only those (and their reversals, for suffixes) are kept."""

    def __init__(self) -> None:
        self.n = self.no_space = 0
        self.bounds: dict[str, list[str]] = {}

    def _note(self, name: str, text: str) -> None:
        bounds = self.bounds.get(name)
        if bounds is None:
            self.bounds[name] = [text, text]
        elif text < bounds[0]:
            bounds[0] = text
        elif text > bounds[1]:
            bounds[1] = text

    def add(self, example: dict) -> None:
        prompt, completion = example["prompt"], example["completion"]
        self.n += 1
        self.no_space += not completion[:1].isspace()
        self._note("prompt", prompt)
        self._note("prompt_reversed", prompt[::-1])
        self._note("completion", completion)
        self._note("completion_reversed", completion[::-1])

    def _prefix(self, name: str) -> str:
        return _common_prefix(self.bounds.get(name, []))

    @property
    def prompt_suffix(self) -> str:
        return self._prefix("prompt_reversed")[::-1]

    def problems(self, inside: int) -> list[Problem]:
        """The advice, given how many prompts hold the separator before their end."""
        out = []
        suffix = self.prompt_suffix
        if not suffix:
            out.append(
                problem("no_prompt_separator", "the prompts do not end with a common separator")
            )
        elif inside:
            out.append(
                problem(
                    "separator_in_prompt",
                    f"the separator {show(suffix)} that ends every prompt also appears inside "
                    f"{inside} of them",
                )
            )
        prefix = self._prefix("prompt")
        if len(prefix.strip()) >= _MIN_XFIX:
            out.append(problem("common_prompt_prefix", f"every prompt starts with {show(prefix)}"))
        if self.no_space:
            out.append(
                problem(
                    "completion_no_leading_space",
                    f"{self.no_space} of {self.n} completions do not start with a whitespace "
                    "character",
                )
            )
        if not self._prefix("completion_reversed"):
            out.append(
                problem(
                    "no_stop_sequence",
                    "the completions do not end with a common stop sequence (the tokenizer's "
                    "end-of-text token is added in training either way)",
                )
            )
        prefix = self._prefix("completion")
        if len(prefix.strip()) >= _MIN_XFIX:
            out.append(
                problem("common_completion_prefix", f"every completion starts with {show(prefix)}")
            )
        return out


def prompt_completion_advice(examples: list[dict]) -> list[Problem]:
    """`PromptCompletionAdvice` over a list of valid prompt-completion examples."""
    advice = PromptCompletionAdvice()
    for e in examples:
        advice.add(e)
    suffix = advice.prompt_suffix
    inside = sum(1 for e in examples if suffix in e["prompt"][: -len(suffix)]) if suffix else 0
    return advice.problems(inside)


def _common_prefix(texts: list[str]) -> str:
    """The longest string every text starts with ("" for no texts)."""
    if not texts:
        return ""
    low, high = min(texts), max(texts)  # the texts sorted between them share their prefix
    n = 0
    for a, b in zip(low, high, strict=False):
        if a != b:
            break
        n += 1
    return low[:n]


def _common_suffix(texts: list[str]) -> str:
    reversed_prefix = _common_prefix([t[::-1] for t in texts])
    return reversed_prefix[::-1]
