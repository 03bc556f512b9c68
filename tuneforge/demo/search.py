"""The demo's second example: colloquial shopping queries to structured search filters.

The guide's search case: users type "cheap red sneakers under 50 bucks" or "blu dress sz M",
and the shop's search needs `{"category": "sneakers", "color": "red", "max_price": 50}`.
Queries are generated deterministically with slang, abbreviations and typos; the reply is
the JSON filter object (keys in a fixed order, absent filters left out). Evaluation scores
JSON validity and per-field accuracy.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tuneforge.fsutil import write_jsonl

SYSTEM = "Turn the shopping query into JSON search filters."

CATEGORIES = {
    "sneakers": ["sneakers", "trainers", "kicks", "sneekers", "runners"],
    "dress": ["dress", "dres", "frock"],
    "jacket": ["jacket", "jakcet", "coat", "puffer"],
    "jeans": ["jeans", "denims", "jeens"],
    "t-shirt": ["t-shirt", "tee", "tshirt", "top"],
    "backpack": ["backpack", "bag", "rucksack", "bakpack"],
    "watch": ["watch", "wristwatch", "watvh"],
    "headphones": ["headphones", "earbuds", "cans", "headphnes"],
}
COLORS = {
    "red": ["red", "rd", "scarlet"],
    "blue": ["blue", "blu", "navy"],
    "black": ["black", "blk", "blak"],
    "white": ["white", "wht", "whte"],
    "green": ["green", "gren", "olive"],
    "pink": ["pink", "pnk"],
}
SIZES = {"S": ["small", "sz S", "size s"], "M": ["medium", "sz M", "size m"],
         "L": ["large", "sz L", "size l"]}  # fmt: skip
SIZED = {"dress", "jacket", "jeans", "t-shirt"}
PRICE = ["under {p} bucks", "below {p}", "max {p} euros", "< {p}", "for less than {p}",
         "no more than {p} quid", "cheaper than {p}"]  # fmt: skip
LEADS = ["", "", "looking for ", "need ", "show me ", "any ", "i want ", "cheap ", "gimme "]
TAILS = ["", "", " pls", " plz", "!!", " asap", " thx", "?"]


def query_and_filters(rng: random.Random) -> tuple[str, dict]:
    """One colloquial query and the filters it means."""
    category = rng.choice(list(CATEGORIES))
    filters: dict = {"category": category}
    words = [rng.choice(CATEGORIES[category])]
    if rng.random() < 0.7:
        color = rng.choice(list(COLORS))
        filters["color"] = color
        words.insert(0, rng.choice(COLORS[color]))
    if category in SIZED and rng.random() < 0.5:
        size = rng.choice(list(SIZES))
        filters["size"] = size
        words.append(rng.choice(SIZES[size]))
    if rng.random() < 0.6:
        price = rng.choice([20, 30, 40, 50, 60, 75, 80, 100, 150, 200])
        filters["max_price"] = price
        words.append(rng.choice(PRICE).format(p=price))
    query = rng.choice(LEADS) + " ".join(words) + rng.choice(TAILS)
    return query, {
        k: filters[k] for k in ("category", "color", "size", "max_price") if k in filters
    }


def search_examples(n: int, seed: int = 0) -> list[dict]:
    """`n` chat examples: the query as the user message, the JSON filters as the reply."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        query, filters = query_and_filters(rng)
        out.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": query},
                    {"role": "assistant", "content": json.dumps(filters)},
                ]
            }
        )
    return out


def write_search_dataset(path: str | Path, n: int = 600, seed: int = 0) -> Path:
    """Write the shopping-query dataset as JSON Lines (clean: the point is the task)."""
    path = Path(path)
    write_jsonl(path, search_examples(n, seed))
    return path
