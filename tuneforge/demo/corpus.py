"""A broad, generated corpus for pretraining the demo's base model.

A fine-tune needs a pretrained model to transfer from, and the demo may not download one. So
the project pretrains its own small GPT on conversations and prose from many everyday domains
(geography, arithmetic, cooking, animals, weather, devices, travel, general banking, words,
units, small talk). Every generator is deterministic given its seed.

The corpus knows banks in general ("contact your bank") but not Northwind Bank's own answers:
those are what the demo's fine-tune has to teach, so the base model starts out wrong on the
hold-out set and the fine-tune can be seen to help. Held-out general text (a different seed)
measures how much general skill a fine-tune forgets.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

SYSTEM = "You are a helpful assistant."

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "Japan": "Tokyo", "Canada": "Ottawa", "Egypt": "Cairo",
    "Kenya": "Nairobi", "Peru": "Lima", "Chile": "Santiago", "Norway": "Oslo",
    "Sweden": "Stockholm", "Poland": "Warsaw", "Greece": "Athens", "Ireland": "Dublin",
    "Austria": "Vienna", "Hungary": "Budapest", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "Mexico": "Mexico City", "Argentina": "Buenos Aires", "Australia": "Canberra",
    "India": "New Delhi", "China": "Beijing", "Turkey": "Ankara", "Morocco": "Rabat",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Belgium": "Brussels",
}  # fmt: skip

FOODS = {
    "eggs": 9, "pasta": 10, "rice": 18, "potatoes": 20, "broccoli": 4, "carrots": 8,
    "green beans": 5, "corn": 6, "lentils": 25, "quinoa": 15, "spinach": 2, "peas": 3,
}  # fmt: skip

ANIMALS = {
    "cow": ("moo", "grass"), "dog": ("woof", "meat and dog food"), "cat": ("meow", "fish and meat"),
    "sheep": ("baa", "grass"), "duck": ("quack", "seeds and small insects"),
    "horse": ("neigh", "hay and oats"), "owl": ("hoot", "mice"), "lion": ("roar", "meat"),
    "frog": ("croak", "insects"), "pig": ("oink", "almost anything"), "bee": ("buzz", "nectar"),
}  # fmt: skip

MIXES = {
    ("blue", "yellow"): "green", ("red", "yellow"): "orange", ("red", "blue"): "purple",
    ("red", "white"): "pink", ("black", "white"): "grey", ("blue", "white"): "light blue",
}  # fmt: skip

WEATHER = {
    "rainy": "Take a raincoat and waterproof shoes.",
    "sunny": "Wear light clothes, sunglasses and sunscreen.",
    "cold": "Wear a warm coat, a hat and gloves.",
    "windy": "Wear a jacket that closes well and leave the umbrella at home.",
    "snowy": "Wear boots, a thick coat and gloves.",
    "hot": "Wear shorts and a t-shirt and drink plenty of water.",
}

DEVICES = ["phone", "laptop", "tablet", "printer", "router", "headphones", "smartwatch", "camera"]
DEVICE_FIXES = {
    "won't turn on": "Charge your {d} for 15 minutes, then hold the power button for 10 seconds.",
    "is very slow": "Close the apps you don't use and restart your {d}.",
    "keeps disconnecting from wifi": "Forget the network on your {d}, then connect again.",
    "is overheating": "Turn your {d} off, let it cool down and keep it out of the sun.",
}

CITIES = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Amsterdam", "Lyon", "Milan"]

BANKING = {
    "How do I open a bank account?": "Most banks let you open an account online with an ID "
    "and proof of address.",
    "What is an overdraft?": "An overdraft lets you spend more than you have in your account, "
    "usually for a fee.",
    "What is a savings account?": "A savings account pays interest on money you keep in it.",
    "How does interest work?": "Interest is what a bank pays you for your savings, or what you "
    "pay for a loan, as a yearly percentage.",
    "What should I do if my card is lost?": "Contact your bank as soon as possible so they can "
    "block the card.",
    "What is a credit score?": "A credit score is a number that shows lenders how reliably you "
    "repay debt.",
    "How do I transfer money?": "You can transfer money in your bank's app or website with the "
    "receiver's account number.",
}

WORDS = {
    "river": "a large natural stream of water flowing to the sea",
    "library": "a place where books are kept for people to read or borrow",
    "planet": "a large body in space that moves around a star",
    "bicycle": "a vehicle with two wheels that you ride by pushing pedals",
    "volcano": "a mountain with a hole through which lava can erupt",
    "kitchen": "the room where food is cooked",
    "umbrella": "a folding cover that protects you from the rain",
    "desert": "a dry area of land with very little rain",
    "bridge": "a structure built to cross a river or a road",
    "orchestra": "a large group of musicians who play together",
}

UNITS = [("minutes", "hour", 60), ("seconds", "minute", 60), ("hours", "day", 24),
         ("days", "week", 7), ("months", "year", 12), ("centimeters", "meter", 100),
         ("grams", "kilogram", 1000), ("meters", "kilometer", 1000)]  # fmt: skip

SMALL_TALK = {
    "Hello!": "Hello! How can I help you today?",
    "Thank you!": "You're welcome! Is there anything else I can do for you?",
    "How are you?": "I'm doing well, thank you. How can I help?",
    "Good morning": "Good morning! What can I do for you?",
    "Goodbye": "Goodbye, have a nice day!",
    "Can you help me?": "Of course. What do you need help with?",
}


def _capitals(rng: random.Random) -> tuple[str, str, str]:
    country, city = rng.choice(list(CAPITALS.items()))
    ask = rng.choice(["What is the capital of {c}?", "Which city is the capital of {c}?",
                      "capital of {c}?", "Tell me the capital of {c}."]).format(c=country)  # fmt: skip
    fact = f"The capital of {country} is {city}."
    return ask, fact, fact


def _arithmetic(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    if rng.random() < 0.5:
        ask = rng.choice(["What is {a} plus {b}?", "How much is {a} + {b}?", "add {a} and {b}"])
        fact = f"{a} plus {b} is {a + b}."
    else:
        a, b = max(a, b), min(a, b)
        ask = rng.choice(["What is {a} minus {b}?", "How much is {a} - {b}?"])
        fact = f"{a} minus {b} is {a - b}."
    return ask.format(a=a, b=b), fact, fact


def _cooking(rng: random.Random) -> tuple[str, str, str]:
    food, minutes = rng.choice(list(FOODS.items()))
    ask = rng.choice(["How long should I boil {f}?", "How long do {f} need to cook?",
                      "cooking time for {f}?"]).format(f=food)  # fmt: skip
    return (
        ask,
        f"Boil {food} for about {minutes} minutes.",
        f"{food.capitalize()} cook in about {minutes} minutes.",
    )


def _animals(rng: random.Random) -> tuple[str, str, str]:
    animal, (sound, food) = rng.choice(list(ANIMALS.items()))
    if rng.random() < 0.5:
        return (
            f"What sound does a {animal} make?",
            f"A {animal} says {sound}.",
            f"The {animal} says {sound}.",
        )
    return f"What does a {animal} eat?", f"A {animal} eats {food}.", f"The {animal} eats {food}."


def _colors(rng: random.Random) -> tuple[str, str, str]:
    (c1, c2), mix = rng.choice(list(MIXES.items()))
    if rng.random() < 0.5:
        c1, c2 = c2, c1
    fact = f"Mixing {c1} and {c2} gives {mix}."
    return f"What do you get when you mix {c1} and {c2}?", fact, fact


def _weather(rng: random.Random) -> tuple[str, str, str]:
    kind, advice = rng.choice(list(WEATHER.items()))
    ask = rng.choice(["It is {w} today, what should I wear?", "What should I wear when it's {w}?",
                      "clothes for {w} weather?"]).format(w=kind)  # fmt: skip
    return ask, advice, f"When it is {kind}: {advice.lower()}"


def _devices(rng: random.Random) -> tuple[str, str, str]:
    device = rng.choice(DEVICES)
    problem, fix = rng.choice(list(DEVICE_FIXES.items()))
    fix = fix.format(d=device)
    return f"My {device} {problem}.", fix, f"If a {device} {problem}: {fix.lower()}"


def _travel(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.sample(CITIES, 2)
    hours = 2 + (sum(map(ord, "".join(sorted((a, b))))) % 9)
    fact = f"The train from {a} to {b} takes about {hours} hours."
    return f"How do I get from {a} to {b}?", f"You can take the train. {fact}", fact


def _banking(rng: random.Random) -> tuple[str, str, str]:
    ask, answer = rng.choice(list(BANKING.items()))
    return ask, answer, answer


def _words(rng: random.Random) -> tuple[str, str, str]:
    word, meaning = rng.choice(list(WORDS.items()))
    ask = rng.choice(["What is a {w}?", "What does {w} mean?", "define {w}"]).format(w=word)
    return ask, f"A {word} is {meaning}.", f"A {word} is {meaning}."


def _units(rng: random.Random) -> tuple[str, str, str]:
    small, big, factor = rng.choice(UNITS)
    n = rng.randint(1, 5)
    plural = big if n == 1 else big + "s"
    fact = f"There are {n * factor} {small} in {n} {plural}."
    return f"How many {small} are in {n} {plural}?", fact, fact


def _small_talk(rng: random.Random) -> tuple[str, str, str]:
    ask, answer = rng.choice(list(SMALL_TALK.items()))
    return ask, answer, answer


DOMAINS: list[Callable[[random.Random], tuple[str, str, str]]] = [
    _capitals, _arithmetic, _cooking, _animals, _colors, _weather, _devices, _travel,
    _banking, _words, _units, _small_talk,
]  # fmt: skip


def _facts(rng: random.Random) -> Iterator[tuple[str, str, str]]:
    while True:
        yield rng.choice(DOMAINS)(rng)


def conversations(n: int, seed: int = 0) -> list[dict]:
    """`n` OpenAI-chat examples across every domain; about one in five has a second turn."""
    rng = random.Random(seed)
    facts = _facts(rng)
    out = []
    for _ in range(n):
        ask, answer, _ = next(facts)
        messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.7 else []
        messages += [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]
        if rng.random() < 0.2:
            ask2, answer2, _ = next(facts)
            messages += [
                {"role": "user", "content": ask2},
                {"role": "assistant", "content": answer2},
            ]
        out.append({"messages": messages})
    return out


def paragraphs(n: int, seed: int = 0, sentences: int = 4) -> list[str]:
    """`n` short prose paragraphs of general facts (the general text a fine-tune may forget)."""
    rng = random.Random(seed)
    facts = _facts(rng)
    return [" ".join(next(facts)[2] for _ in range(sentences)) for _ in range(n)]


def pretraining_corpus(n: int = 6000, seed: int = 0) -> list[dict]:
    """Conversations and prose mixed 3:1, as training examples (`messages` or `text`)."""
    n_text = n // 4
    chats = conversations(n - n_text, seed)
    texts = [{"text": t} for t in paragraphs(n_text, seed + 1)]
    rng = random.Random(seed + 2)
    mixed = chats + texts
    rng.shuffle(mixed)
    return mixed
