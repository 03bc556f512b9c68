"""`tuneforge data clean`: each rule on small hand-written inputs, the accounting, atomicity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasketch import MinHash
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.data import clean as clean_module
from tuneforge.data.blocklist import Blocklist
from tuneforge.data.clean import CleanOptions, clean, rejects_path
from tuneforge.data.dedupe import NearDuplicateIndex, lsh_params
from tuneforge.data.fixes import normalize_text
from tuneforge.data.pii import luhn_ok, redact_pii
from tuneforge.tokenize.measure import token_measure


def chat(user: str, reply: str, **extra) -> dict:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
        **extra,
    }


def write_lines(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def run(tmp_path, rows, **options):
    src = write_lines(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    report = clean(src, out, CleanOptions(**options))
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    rejected = [json.loads(line) for line in rejects_path(out).read_text().splitlines()]
    assert report.kept + report.rejected == report.read == len(kept) + len(rejected)
    return report, kept, rejected


def test_fixes_are_applied_and_listed(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "User", "content": "  Hi   there \r\n"},
                {"role": "Assistant", "content": "Hello!", "weight": 1.0},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "cafe\u0301?"},
                {"role": "assistant", "content": "Yes\x00.", "id": 7},
            ]
        },
        {"prompt": " What is 2+2? ", "completion": " 4 "},
    ]
    report, kept, rejected = run(tmp_path, rows[:2], near_dedupe=False)
    assert rejected == []
    assert kept[0]["messages"] == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!", "weight": 1},
    ]
    assert type(kept[0]["messages"][1]["weight"]) is int
    assert kept[1]["messages"] == [
        {"role": "user", "content": "café?"},
        {"role": "assistant", "content": "Yes."},
    ]
    assert report.fixes == {
        "role_case": 1,
        "weight": 1,
        "whitespace": 1,
        "line_endings": 1,
        "unicode_nfc": 1,
        "control_characters": 1,
        "message_keys": 1,
    }
    assert report.fix_lines["role_case"] == [1] and report.fix_lines["unicode_nfc"] == [2]
    _, kept, _ = run(tmp_path, [rows[2]] * 1)
    assert kept == [{"prompt": "What is 2+2?", "completion": "4"}]


def test_file_level_fixes_bom_and_top_level_array(tmp_path):
    src = tmp_path / "array.json"
    src.write_bytes(
        b"\xef\xbb\xbf" + json.dumps([chat("a b c", "d e f"), chat("g h i", "j k l")]).encode()
    )
    report = clean(src, tmp_path / "out.jsonl")
    assert report.fixes["bom"] == 1 and report.fixes["top_level_array"] == 1
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [chat("a b c", "d e f"), chat("g h i", "j k l")]


def test_code_blocks_are_left_alone():
    text = "Run this:\n```python\nx  =  1   \n\tif x:  pass\n```\nthen   done  "
    new, fixes = normalize_text(text)
    assert new == "Run this:\n```python\nx  =  1   \n\tif x:  pass\n```\nthen done"
    assert fixes == {"whitespace"}
    assert normalize_text("    indented  code\nprose  here")[0] == "    indented  code\nprose here"
    assert normalize_text("plain text") == ("plain text", set())


def test_unfixable_lines_are_rejected_with_the_validator_code(tmp_path):
    rows = [
        chat("ok", "fine"),
        '{"messages": [{"role": "user", "content": "cut',
        {"messages": [{"role": "user", "content": "no reply"}]},
        chat("empty", "   "),
        {"prompt": "p", "completion": ""},
        "",
    ]
    _, kept, rejected = run(tmp_path, rows)
    assert kept == [chat("ok", "fine")]
    by_line = {r["line"]: r["code"] for r in rejected}
    assert by_line == {
        2: "invalid_json",
        3: "example_missing_assistant_message",
        4: "empty_content",
        5: "missing_messages_list",  # a prompt-completion line in a chat file
        6: "blank_line",
    }
    assert rejected[0]["raw"] == rows[1]


def test_non_utf8_line_is_rejected(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(json.dumps(chat("a", "b")).encode() + b"\n" + b'{"text": "caf\xe9"}\n')
    report = clean(src, tmp_path / "out.jsonl")
    assert report.rejections == {"non_utf8": 1} and report.kept == 1


def test_exact_and_near_duplicates_name_the_first_line(tmp_path):
    long_reply = "You can reset your password from the login page by tapping the forgot password link and following the steps in the email we send you"
    rows = [
        chat("How do I reset my password?", long_reply),
        chat(
            "Where is the nearest branch?",
            "The nearest branch is on Main Street, open nine to five.",
        ),
        chat("how do I reset my  password?", long_reply),  # same after case and space folding
        chat("How do I reset my password please?", long_reply),  # one word added
        chat("What are your fees?", "The account costs four euros a month."),
    ]
    _, kept, rejected = run(tmp_path, rows)
    assert [r["line"] for r in rejected] == [3, 4]
    assert (
        rejected[0]["code"] == "duplicate" and rejected[0]["reason"] == "exact duplicate of line 1"
    )
    assert (
        rejected[1]["code"] == "near_duplicate"
        and "near duplicate of line 1" in rejected[1]["reason"]
    )
    assert len(kept) == 3
    _, kept, _ = run(tmp_path, rows, near_dedupe=False)
    assert len(kept) == 4
    _, kept, _ = run(tmp_path, rows, near_dedupe=False, dedupe=False)
    assert len(kept) == 5


def test_near_duplicate_index_matches_datasketch_and_confirms_exactly():
    index = NearDuplicateIndex(threshold=0.8)
    words = " ".join(f"w{i}" for i in range(40))
    a, b, c, d = index.signatures([words, words + " extra", "completely different text here", None])
    assert d is None
    m = MinHash(num_perm=64, seed=1, hashfunc=lambda x: x)
    m.update_batch(a.shingles.tolist())
    assert np.array_equal(m.hashvalues, a.hashvalues)
    index.add(1, a)
    line, similarity = index.query(b)
    assert line == 1 and similarity == pytest.approx(39 / 40)
    assert index.query(c) is None
    b_, r = lsh_params(0.9, 64)
    assert b_ * r <= 64 and 1 - (1 - 0.9**r) ** b_ >= 0.98


def test_blocklist_phrases_and_regexes(tmp_path):
    blocklist = Blocklist.from_lines(
        ["# biased phrases", "typical of your kind", "", r"re:\bidiots?\b"]
    )
    assert len(blocklist) == 2
    assert blocklist.find("That is TYPICAL  of\nyour kind.") == "typical of your kind"
    assert blocklist.find("atypical of your kindness") is None  # whole words only
    assert blocklist.find("You idiots") == r"re:\bidiots?\b"
    rows = [
        chat("loan?", "No. Typical of your kind."),
        chat("hi", "hello"),
        chat("you idiot", "please be kind"),
    ]
    _, kept, rejected = run(tmp_path, rows, blocklist=blocklist)
    assert kept == [chat("hi", "hello")]
    assert [r["code"] for r in rejected] == ["blocklisted", "blocklisted"]
    assert "typical of your kind" in rejected[0]["reason"]
    with pytest.raises(ValueError, match="invalid regex"):
        Blocklist.from_lines(["re:(unclosed"])


def test_pii_each_type_redacted_and_luhn_invalid_left_alone(tmp_path):
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    cases = {
        "write to ann.lee@example.co.uk": ("write to [EMAIL]", "EMAIL"),
        "call +44 20 7946 0958 now": ("call [PHONE] now", "PHONE"),
        "or (555) 123-4567": ("or [PHONE]", "PHONE"),
        "card 4111 1111 1111 1111": ("card [CARD_NUMBER]", "CARD_NUMBER"),
        "card 4012888888881881.": ("card [CARD_NUMBER].", "CARD_NUMBER"),
        "IBAN GB82 WEST 1234 5698 7654 32": ("IBAN [ACCOUNT_NUMBER]", "ACCOUNT_NUMBER"),
        "account number: 12345678": ("account number: [ACCOUNT_NUMBER]", "ACCOUNT_NUMBER"),
    }
    for text, (expected, kind) in cases.items():
        assert redact_pii(text) == (expected, {kind: 1}), text
    for untouched in (
        "card 4111 1111 1111 1112",
        "on 2024-01-15 we paid 10,000",
        "IBAN GB82WEST12345698765433",
    ):
        assert redact_pii(untouched) == (untouched, {}), untouched
    rows = [
        chat("I'm bob@example.com, card 5500 0000 0000 0004", "Thanks, I wrote to bob@example.com.")
    ]
    report, kept, _ = run(tmp_path, rows, redact_pii=True)
    assert report.redactions == {"EMAIL": 2, "CARD_NUMBER": 1}
    assert kept[0]["messages"][0]["content"] == "I'm [EMAIL], card [CARD_NUMBER]"


def test_too_long_drop_and_truncate(tmp_path):
    short = chat("hi", "hello")
    long_turns = {"messages": [
        {"role": "user", "content": "first question"}, {"role": "assistant", "content": "short answer"},
        {"role": "user", "content": "second " * 100}, {"role": "assistant", "content": "long " * 200},
    ]}  # fmt: skip
    long_single = chat("q", "word " * 400)
    report, kept, rejected = run(tmp_path, [short, long_turns, long_single], max_tokens=50)
    assert kept == [short] and [r["code"] for r in rejected] == ["too_long", "too_long"]
    assert report.token_count == "estimate" and "more than the limit of 50" in rejected[0]["reason"]
    report, kept, rejected = run(
        tmp_path, [short, long_turns, long_single], max_tokens=50, too_long="truncate"
    )
    assert kept == [short, {"messages": long_turns["messages"][:2]}]
    assert [r["line"] for r in rejected] == [3] and report.fixes["truncated"] == 1
    _, kept, _ = run(
        tmp_path, [{"text": "alpha beta gamma " * 100}], max_tokens=20, too_long="truncate"
    )
    assert kept[0]["text"].startswith("alpha beta gamma") and len(kept[0]["text"]) <= 80
    assert kept[0]["text"].split()[-1] in ("alpha", "beta", "gamma")


def test_too_long_with_a_real_tokenizer(tmp_path, tiny_tokenizer):
    import copy

    from tuneforge.tokenize.encode import encode
    from tuneforge.tokenize.templates import ensure_chat_template

    tokenizer = copy.deepcopy(tiny_tokenizer)
    ensure_chat_template(tokenizer)
    rows = [
        chat("hello", "Hello! How can I help you?"),
        chat("hello", "The quick brown fox. " * 20),
    ]
    limit = len(encode(rows[0], tokenizer)) + 5
    report, kept, rejected = run(tmp_path, rows, max_tokens=limit, measure=token_measure(tokenizer))
    assert kept == [rows[0]] and rejected[0]["line"] == 2 and report.token_count == "tokenizer"


def test_an_exception_mid_write_leaves_no_output(tmp_path, monkeypatch):
    src = write_lines(
        tmp_path / "in.jsonl", [chat(f"question {i}", f"answer number {i}") for i in range(50)]
    )
    out = tmp_path / "out.jsonl"
    calls = {"n": 0}
    real = clean_module._json_line

    def failing(obj):
        calls["n"] += 1
        if calls["n"] == 20:  # half-way through the kept examples
            raise OSError("disk full")
        return real(obj)

    monkeypatch.setattr(clean_module, "_json_line", failing)
    with pytest.raises(OSError, match="disk full"):
        clean(src, out)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == [tmp_path / "in.jsonl"]  # no output, no temp file left


def test_cli_json_summary_adds_up(tmp_path):
    src = write_lines(tmp_path / "in.jsonl", [chat("a b", "c d"), chat("a b", "c d"), "{broken"])
    blocklist = tmp_path / "block.txt"
    blocklist.write_text("never mind\n")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        app, ["data", "clean", src, "-o", str(out), "--json", "--blocklist", str(blocklist)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["read"], summary["kept"], summary["rejected"]) == (3, 1, 2)
    assert summary["balanced"] and summary["rejections"] == {"duplicate": 1, "invalid_json": 1}
    result = CliRunner().invoke(app, ["data", "clean", src, "-o", str(out)])
    assert result.exit_code == 0 and "kept + rejected = read" in result.stdout
