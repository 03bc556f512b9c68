"""Uploads at real sizes with the official `openai` client against a real server: streamed
to disk, answered `uploaded` at once, validated in the background to `processed` / `error`.

The files are generated on disk and sent from an open file (httpx streams it), so neither the
test nor the server holds one as a single bytes object.
"""

from __future__ import annotations

import hashlib
import json
import resource
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from openai import OpenAI

from tests.server.conftest import (
    RunningServer,
    settings_for,
    start_server,
    stop_server,
    wait_for_file,
)

KEY = "sk-uploads"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def uploads(model_store, tmp_path_factory) -> Iterator[RunningServer]:
    """A server whose request body cap (64 KiB) is far below its upload cap (256 MiB)."""
    settings = settings_for(
        model_store,
        tmp_path_factory.mktemp("uploads-data"),
        api_keys=[KEY],
        max_body_bytes=64 * 1024,
        max_upload_bytes=256 * MiB,
    )
    running = start_server(settings)
    yield running
    stop_server(running)


@pytest.fixture
def client(uploads) -> Iterator[OpenAI]:
    with OpenAI(base_url=uploads.v1, api_key=KEY, max_retries=0, timeout=300) as c:
        yield c


def write_chat_jsonl(path: Path, size: int, line_bytes: int) -> str:
    """About `size` bytes of distinct chat examples, each about `line_bytes` long, written a
    line at a time. Returns the file's sha256."""
    digest = hashlib.sha256()
    filler = "lorem ipsum dolor sit amet " * (line_bytes // 27 + 1)
    written = i = 0
    with open(path, "wb") as f:
        while written < size:
            messages = [
                {"role": "user", "content": f"Question {i}: {filler[: line_bytes - 120]}"},
                {"role": "assistant", "content": f"Answer {i}."},
            ]
            line = (json.dumps({"messages": messages}) + "\n").encode()
            f.write(line)
            digest.update(line)
            written += len(line)
            i += 1
    return digest.hexdigest()


def test_10_mib_upload_is_accepted_stored_and_processed(client, tmp_path):
    path = tmp_path / "train.jsonl"
    sha = write_chat_jsonl(path, 10 * MiB, line_bytes=2000)
    with open(path, "rb") as fh:
        created = client.files.create(file=("train.jsonl", fh), purpose="fine-tune")
    assert created.status == "uploaded"  # answered before validation
    assert created.bytes == path.stat().st_size > 10 * MiB
    done = wait_for_file(client, created.id, timeout=120)
    assert done.status == "processed", done.status_details
    assert done.model_extra["report"]["examples_valid"] > 5000
    assert hashlib.sha256(client.files.content(created.id).content).hexdigest() == sha


def test_200_mib_upload_is_accepted_and_processed(client, tmp_path):
    path = tmp_path / "big.jsonl"
    write_chat_jsonl(path, 200 * MiB, line_bytes=MiB)  # few, long lines: seconds to check
    with open(path, "rb") as fh:
        created = client.files.create(file=("big.jsonl", fh), purpose="fine-tune")
    assert created.status == "uploaded" and created.bytes == path.stat().st_size
    done = wait_for_file(client, created.id, timeout=120)
    assert done.status == "processed", done.status_details
    assert done.model_extra["report"]["examples_valid"] == 201  # 1 MiB lines, up to 200 MiB


def test_bad_upload_ends_in_error_with_line_numbers(client, tmp_path):
    path = tmp_path / "bad.jsonl"
    write_chat_jsonl(path, 3 * MiB, line_bytes=1000)
    with open(path, "ab") as f:
        f.write(b'{"messages": [{"role": "user"\n')
    with open(path, "rb") as f:
        lines = sum(1 for _ in f)
    with open(path, "rb") as fh:
        created = client.files.create(file=("bad.jsonl", fh), purpose="fine-tune")
    assert created.status == "uploaded"
    done = wait_for_file(client, created.id, timeout=120)
    assert done.status == "error"
    assert done.status_details.startswith(f"line {lines}: invalid JSON")


def test_dictionary_encoded_parquet_is_refused_without_decoding_it(client, tmp_path):
    """43 KB of Parquet used to cost the server a GiB: now its decoded text is capped (the
    server's max_upload_bytes) and read one row at a time."""
    path = tmp_path / "bomb.parquet"
    n = 600
    prompts = pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int32()), pa.array(["x" * MiB]))
    pq.write_table(pa.table({"prompt": prompts, "completion": [" c"] * n}), path)
    assert path.stat().st_size < MiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the server runs here
    with open(path, "rb") as fh:
        created = client.files.create(file=("bomb.parquet", fh), purpose="fine-tune")
    done = wait_for_file(client, created.id, timeout=120)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert done.status == "error" and "[too_large]" in done.status_details
    assert "decodes to more than 268,435,456 bytes" in done.status_details
    assert grown < 200 * MiB  # the whole table would be 600 MiB, several times over
