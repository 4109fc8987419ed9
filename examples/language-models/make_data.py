"""Generate the language-model examples' data (both tasks), and the general text they share.

Run `python examples/language-models/make_data.py`; it rewrites the JSONL files next to this script,
byte for byte the same every time (fixed seed, no external data).

* orders-*.jsonl (generation): a customer message mentioning a five-digit order number, somewhere,
  and the number as the target (`{"id", "input", "target"}`).
* reviews-*.jsonl (multiple choice): a short product review and whether it is positive or negative
  (`{"id", "input", "choices", "label"}`); about a third say what they mean indirectly.
* general.jsonl: plain English prose (perplexity: the general-capability guard of tuning).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 1129
HERE = Path(__file__).resolve().parent
CHOICES = ["positive", "negative"]
PER_LABEL = {"eval": 40, "train": 40, "canary": 30}
ORDERS = {"eval": 80, "train": 60, "canary": 60}
ORDER_TEMPLATES = [
    "Hi, my order {n} has not arrived yet.", "Order number {n}: the box was damaged.",
    "Can you cancel {n}? I ordered twice by mistake.", "I was charged twice for order {n}, please refund.",
    "Where is my parcel? It's order {n}.", "Hello, regarding {n}, the size is wrong.",
    "The invoice for order {n} shows the wrong address.", "Please change the delivery date of {n} to Friday.",
    "My order ({n}) came without the charger.", "Tracking for {n} says delivered but nothing is here.",
    "Good morning, I would like to return the shoes from order {n}.", "Is it too late to add a gift note to {n}?",
    "Two items are missing from {n}, the rest is fine.", "I moved last week; can {n} still be redirected?",
]
PRODUCTS = ["headphones", "blender", "backpack", "desk lamp", "coffee maker", "phone case", "running shoes",
            "tent", "keyboard", "water bottle", "vacuum cleaner", "jacket", "toaster", "monitor", "suitcase",
            "yoga mat", "kettle", "smartwatch", "office chair", "board game"]
POSITIVE = ["I love this {p}, it works perfectly.", "Great {p}, exactly as described and well made.",
            "The {p} is excellent value, I would buy it again.", "Best {p} I have owned, highly recommended.",
            "This {p} exceeded my expectations.", "Really happy with the {p}, it arrived fast and works great.",
            "I use the {p} every day and it still feels new.", "My whole family enjoys the {p}.",
            "I already ordered a second {p} as a gift.", "After a month the {p} is still my favourite purchase."]
NEGATIVE = ["The {p} broke after two days, very disappointed.", "Terrible {p}, it stopped working at once.",
            "Do not buy this {p}, it is cheap and flimsy.", "The {p} is a waste of money.",
            "Awful {p}, nothing like the pictures.", "I regret buying this {p}, it is poorly made.",
            "I sent the {p} back the next day.", "The {p} sits in a drawer now, I gave up on it.",
            "Customer service never answered about my {p}.", "Within a week the {p} was in the bin."]
OPENERS = ["", "Honestly, ", "Well, ", "To be fair, ", "Update: "]
GENERAL = [
    "The river winds slowly through the valley before it reaches the sea.",
    "Most birds build their nests in spring, when food is easy to find.",
    "The library opens at nine in the morning and closes at six in the evening.",
    "Bread is made from flour, water, salt and yeast, baked in a hot oven.",
    "In winter the days are short and the nights are long and cold.",
    "A good night's sleep helps the body recover and the mind stay sharp.",
    "The museum displays paintings from many centuries and countries.",
    "Trains connect the small towns of the region with the capital city.",
    "Children learn to read by listening to stories and practising every day.",
    "The farmer checks the weather before deciding when to harvest the wheat.",
    "Mountains are often covered in snow even during the summer months.",
    "A balanced diet includes vegetables, fruit, grains and some protein.",
    "The orchestra rehearsed for weeks before the opening concert.",
    "Old bridges of stone still carry traffic across the canal.",
    "Rain fell all afternoon, and the streets were shining in the evening light.",
    "Scientists measure the temperature of the ocean at many different depths.",
    "The market sells fresh fish, cheese and vegetables every Saturday.",
    "Writing a letter by hand takes longer than sending a message.",
    "The garden was full of roses, tulips and tall green hedges.",
    "He walked to the station, bought a ticket and waited for the train.",
]


def rows(rng: random.Random, split: str, used: set[str]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for label, templates in ((0, POSITIVE), (1, NEGATIVE)):
        made = 0
        while made < PER_LABEL[split]:
            text = rng.choice(OPENERS) + rng.choice(templates).format(p=rng.choice(PRODUCTS))
            text = text[0].upper() + text[1:]
            if text in used:
                continue
            used.add(text)
            out.append({"input": text, "choices": CHOICES, "label": label})
            made += 1
    rng.shuffle(out)
    return [{"id": f"{split}-{i:04d}", **row} for i, row in enumerate(out, start=1)]


def orders(rng: random.Random, split: str, used: set[str]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    while len(out) < ORDERS[split]:
        number = str(rng.randint(10000, 99999))
        if number in used:
            continue
        used.add(number)
        out.append({"id": f"{split}-{len(out) + 1:04d}", "input": rng.choice(ORDER_TEMPLATES).format(n=number),
                    "target": number})
    return out


def main(out: Path = HERE) -> dict[str, int]:
    rng = random.Random(SEED)
    used: set[str] = set()
    counts = {}
    for split in PER_LABEL:
        data = rows(rng, split, used)
        (out / f"reviews-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
        counts[f"reviews-{split}"] = len(data)
    for split in ORDERS:
        data = orders(rng, split, used)
        (out / f"orders-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
        counts[f"orders-{split}"] = len(data)
    general = [{"id": f"general-{i:04d}", "text": t} for i, t in enumerate(GENERAL, start=1)]
    (out / "general.jsonl").write_text("".join(json.dumps(r) + "\n" for r in general))
    counts["general"] = len(general)
    return counts


if __name__ == "__main__":
    print(main())
