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

# intent -> (ways a customer asks, the answers the bank wants given: its own facts, worded a
# few ways as different agents would)
INTENTS: dict[str, tuple[list[str], list[str]]] = {
    "lost_card": (
        [
            "I lost my card",
            "my debit card is gone, what do I do",
            "I can't find my credit card anywhere",
            "someone stole my wallet with my card",
            "card lost yesterday, help",
            "what do I do if my card is lost",
        ],
        [
            "I'm sorry to hear that. I have frozen your card now. A new card will arrive in 5 working days.",
            "I have frozen your card so nobody can use it. Your new card will arrive in 5 working days.",
            "Don't worry, your card is frozen now. We will post a new card, it arrives in 5 working days.",
        ],
    ),
    "balance": (
        [
            "what is my balance",
            "how much money do I have",
            "can you tell me my account balance",
            "check my balance please",
            "how much is left on my account",
            "what's on my account right now",
        ],
        [
            "You can see your balance in the app under Accounts. I can't read it out in chat for your safety.",
            "Your balance is in the Northwind app under Accounts. For your safety I can't share it in chat.",
            "Please open the app and tap Accounts to see your balance. I can't show it here for your safety.",
        ],
    ),
    "reset_password": (
        [
            "I forgot my password",
            "how do I reset my password",
            "I can't log in to online banking",
            "my password doesn't work anymore",
            "locked out of the app",
            "the app says my password is wrong",
        ],
        [
            "Tap 'Forgot password' on the login screen. We will send a reset link to your registered email.",
            "On the login screen tap 'Forgot password' and we will email you a reset link.",
            "No problem: choose 'Forgot password' when you log in, and a reset link goes to your registered email.",
        ],
    ),
    "opening_hours": (
        [
            "when are you open",
            "what are the branch opening hours",
            "is the branch open on saturday",
            "what time does the bank close",
            "opening times please",
            "can I visit a branch on the weekend",
        ],
        [
            "Our branches are open Monday to Friday 9:00-17:00 and Saturday 9:00-12:00.",
            "Northwind branches open Monday to Friday from 9:00 to 17:00, and Saturday from 9:00 to 12:00.",
            "You can visit us Monday to Friday 9:00-17:00 and on Saturday mornings 9:00-12:00. We are closed on Sunday.",
        ],
    ),
    "transfer_limit": (
        [
            "what is the daily transfer limit",
            "how much can I send per day",
            "is there a limit on transfers",
            "can I transfer 20000 today",
            "max amount for a bank transfer",
            "why was my big transfer refused",
        ],
        [
            "The daily transfer limit is 10,000 euros. You can raise it in the app under Limits.",
            "You can send up to 10,000 euros a day. To raise the limit, go to Limits in the app.",
            "Transfers are limited to 10,000 euros per day. The app lets you raise it under Limits.",
        ],
    ),
    "dispute": (
        [
            "there is a charge I don't recognise",
            "I want to dispute a payment",
            "someone charged my card twice",
            "unknown transaction on my statement",
            "I was charged for something I didn't buy",
            "how do I get my money back for a wrong payment",
        ],
        [
            "I can help with that. Open the payment in the app and tap 'Dispute'. We answer within 10 days.",
            "Please open the payment in the app and tap 'Dispute'. Our team will answer within 10 days.",
            "You can dispute it yourself: tap the payment in the app, then 'Dispute'. You will hear from us within 10 days.",
        ],
    ),
    "fees": (
        [
            "how much does the account cost",
            "what are your monthly fees",
            "do you charge for the debit card",
            "are there fees for withdrawals abroad",
            "is the current account free",
            "what does it cost to take cash out abroad",
        ],
        [
            "The current account costs 4 euros a month. Withdrawals abroad cost 2 euros each.",
            "Our current account is 4 euros a month, and each withdrawal abroad costs 2 euros.",
            "It's 4 euros a month for the current account. Cash withdrawals abroad are 2 euros each.",
        ],
    ),
    "address_change": (
        [
            "I moved, how do I change my address",
            "update my address please",
            "I have a new home address",
            "how can I change my postal address",
            "change address on my account",
            "where do I put my new address",
        ],
        [
            "You can change your address in the app under Profile. Bring proof of address to a branch if asked.",
            "Go to Profile in the app to change your address. We may ask for proof of address at a branch.",
            "Your address can be updated in the app under Profile; if we ask, bring proof of address to a branch.",
        ],
    ),
}

# How customers open and close a message, and how agents greet and sign off.
OPENERS = [
    "",
    "Hi, ",
    "Hello, ",
    "Good morning, ",
    "Hey, ",
    "Quick question: ",
    "Sorry to bother you, ",
]
CLOSERS = ["", "?", " please", ", thanks", " asap", "!", ". Thank you"]
GREETINGS = ["", "Hello! ", "Thanks for reaching out. ", "Hi there. "]
SIGN_OFFS = ["", " Is there anything else I can help with?", " Have a good day!"]

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


def _ask(rng: random.Random, asks: list[str]) -> str:
    ask = rng.choice(OPENERS) + rng.choice(asks) + rng.choice(CLOSERS)
    return ask[0].upper() + ask[1:]


def _answer(rng: random.Random, answers: list[str]) -> str:
    return rng.choice(GREETINGS) + rng.choice(answers) + rng.choice(SIGN_OFFS)


def clean_examples(n: int, seed: int = 0) -> list[dict]:
    """`n` good conversations (some with a second turn), drawn from the intents."""
    rng = random.Random(seed)
    names = list(INTENTS)
    out = []
    for _ in range(n):
        asks, answers = INTENTS[rng.choice(names)]
        example = _chat(_ask(rng, asks), _answer(rng, answers))
        if rng.random() < 0.2:  # a follow-up turn
            asks2, answers2 = INTENTS[rng.choice(names)]
            example["messages"] += [
                {"role": "user", "content": "Also, " + rng.choice(asks2)},
                {"role": "assistant", "content": rng.choice(answers2)},
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
