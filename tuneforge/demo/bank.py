"""The demo's bundled dataset: customer-support conversations for a bank, deliberately dirty.

Generated deterministically from a seed, so every run of the demo sees the same file. Most
lines are good OpenAI chat examples; the rest carry the problems real support logs have:
exact and near duplicates, empty replies, a broken JSON line, over-long examples, blocklisted
biased phrases, and personal data (emails, card numbers, phone numbers).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tuneforge.fsutil import atomic_write

SYSTEM = "You are Ava, the support assistant of Northwind Bank. Answer briefly and politely."

# intent -> (ways a customer asks, the answer the bank wants given)
INTENTS: dict[str, tuple[list[str], str]] = {
    "lost_card": (
        [
            "I lost my card",
            "my debit card is gone, what do I do",
            "I can't find my credit card anywhere",
            "someone stole my wallet with my card",
            "card lost yesterday, help",
        ],
        "I'm sorry to hear that. I have frozen your card now. A new card will arrive in 5 working days.",
    ),
    "balance": (
        [
            "what is my balance",
            "how much money do I have",
            "can you tell me my account balance",
            "check my balance please",
            "how much is left on my account",
        ],
        "You can see your balance in the app under Accounts. I can't read it out in chat for your safety.",
    ),
    "reset_password": (
        [
            "I forgot my password",
            "how do I reset my password",
            "I can't log in to online banking",
            "my password doesn't work anymore",
            "locked out of the app",
        ],
        "Tap 'Forgot password' on the login screen. We will send a reset link to your registered email.",
    ),
    "opening_hours": (
        [
            "when are you open",
            "what are the branch opening hours",
            "is the branch open on saturday",
            "what time does the bank close",
            "opening times please",
        ],
        "Our branches are open Monday to Friday 9:00-17:00 and Saturday 9:00-12:00.",
    ),
    "transfer_limit": (
        [
            "what is the daily transfer limit",
            "how much can I send per day",
            "is there a limit on transfers",
            "can I transfer 20000 today",
            "max amount for a bank transfer",
        ],
        "The daily transfer limit is 10,000 euros. You can raise it in the app under Limits.",
    ),
    "dispute": (
        [
            "there is a charge I don't recognise",
            "I want to dispute a payment",
            "someone charged my card twice",
            "unknown transaction on my statement",
            "I was charged for something I didn't buy",
        ],
        "I can help with that. Open the payment in the app and tap 'Dispute'. We answer within 10 days.",
    ),
    "fees": (
        [
            "how much does the account cost",
            "what are your monthly fees",
            "do you charge for the debit card",
            "are there fees for withdrawals abroad",
            "is the current account free",
        ],
        "The current account costs 4 euros a month. Withdrawals abroad cost 2 euros each.",
    ),
    "address_change": (
        [
            "I moved, how do I change my address",
            "update my address please",
            "I have a new home address",
            "how can I change my postal address",
            "change address on my account",
        ],
        "You can change your address in the app under Profile. Bring proof of address to a branch if asked.",
    ),
}

BLOCKLISTED = [
    "people like you never pay back",
    "typical of your kind",
]

FIRST = ["Anna", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas"]
CARDS = ["4111 1111 1111 1111", "5500 0000 0000 0004", "4012 8888 8888 1881"]


def _chat(user: str, assistant: str, *, system: bool = True) -> dict:
    messages = [{"role": "system", "content": SYSTEM}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages}


def clean_examples(n: int, seed: int = 0) -> list[dict]:
    """`n` good conversations (some with a second turn), drawn from the intents."""
    rng = random.Random(seed)
    names = list(INTENTS)
    out = []
    for _ in range(n):
        intent = rng.choice(names)
        asks, answer = INTENTS[intent]
        ask = rng.choice(asks)
        ask = rng.choice([ask, ask.capitalize(), ask + "?", ask + ", thanks", "Hi, " + ask])
        example = _chat(ask, answer)
        if rng.random() < 0.2:  # a follow-up turn
            other = rng.choice(names)
            asks2, answer2 = INTENTS[other]
            example["messages"] += [
                {"role": "user", "content": "Also, " + rng.choice(asks2)},
                {"role": "assistant", "content": answer2},
            ]
        out.append(example)
    return out


def dirty_lines(n: int = 400, seed: int = 0) -> list[str]:
    """The bundled file's lines: `n` conversations plus every kind of dirt, shuffled."""
    rng = random.Random(seed)
    good = clean_examples(n, seed)
    lines = [json.dumps(e, ensure_ascii=False) for e in good]
    dirt: list[str] = []
    dirt += [json.dumps(e) for e in rng.sample(good, 12)]  # exact duplicates
    for e in rng.sample(good, 12):  # near duplicates: same answer, a word changed in the ask
        near = json.loads(json.dumps(e))
        near["messages"][1]["content"] += " please"
        dirt.append(json.dumps(near))
    for ask in ("hello?", "is anyone there", "test"):  # empty replies
        dirt.append(json.dumps(_chat(ask, "")))
    dirt.append('{"messages": [{"role": "user", "content": "where is my card"}, {"role": "assis')
    long_reply = " ".join(["I understand your concern and I am looking into it."] * 60)
    dirt += [json.dumps(_chat("why is my transfer late", long_reply)) for _ in range(3)]
    for phrase in BLOCKLISTED:
        dirt.append(json.dumps(_chat("can I get a loan", f"No. {phrase.capitalize()}.")))
    for i in range(8):  # personal data the model must not memorise
        name = FIRST[i % len(FIRST)]
        email = f"{name.lower()}.{i}@example.com"
        dirt.append(
            json.dumps(
                _chat(
                    f"My card {CARDS[i % len(CARDS)]} was blocked, write to {email}",
                    f"Thanks {name}, I have unblocked your card. A confirmation goes to {email}.",
                )
            )
        )
    dirt.append(json.dumps({"messages": [{"role": "user", "content": "no reply here"}]}))
    lines += dirt
    rng.shuffle(lines)
    return lines


def write_bank_dataset(path: str | Path, n: int = 400, seed: int = 0) -> Path:
    """Write the dirty bank-support dataset to `path` (JSON Lines) and return the path."""
    path = Path(path)
    with atomic_write(path) as f:
        f.write("\n".join(dirty_lines(n, seed)) + "\n")
    return path


def write_blocklist(path: str | Path) -> Path:
    """Write the demo's blocklist of biased phrases."""
    path = Path(path)
    with atomic_write(path) as f:
        f.write("# phrases no support reply may contain\n" + "\n".join(BLOCKLISTED) + "\n")
    return path
