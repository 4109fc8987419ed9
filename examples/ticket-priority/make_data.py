"""Generate the ticket-priority example's data: eval, train and canary files (general is shared).

Run `python examples/ticket-priority/make_data.py`; it rewrites the JSONL files next to this script,
byte for byte the same every time (fixed seed, no external data). Each ticket is urgent (a customer
is blocked or losing money now), normal (something is wrong but there is a way around it) or low (a
question, a wish, a thank-you). Urgency is carried by the situation rather than by keywords, so a
small head on a shallow encoder gets the obvious cases and the deeper one more of the rest.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20261129
HERE = Path(__file__).resolve().parent
LABELS = {
    "urgent": "the customer is blocked or losing money right now and needs help immediately",
    "normal": "something is wrong but the customer can work around it for now",
    "low": "a question, a suggestion or feedback with no time pressure",
}
PER_LABEL = {"eval": 100, "train": 100, "canary": 40}

THINGS = ["the checkout page", "the mobile app", "the login screen", "our shop's payment terminal", "the API",
          "the order export", "the invoice generator", "the admin dashboard", "the booking calendar",
          "the warehouse scanner app", "the card reader", "the customer portal"]
WHO = ["all of our customers", "every user in our team", "our whole store", "the entire night shift",
       "our three locations", "everyone at the front desk"]
OPENERS = ["", "Hello, ", "Hi team, ", "Good morning. ", "Hey, ", "Dear support, "]
CLOSERS = ["", " Thanks.", " Please advise.", " Regards, Ana", " Cheers.", " Thank you in advance."]

TEMPLATES: dict[str, list[str]] = {
    "urgent": [
        "{thing} is down and {who} cannot pay right now, we are losing sales every minute.",
        "since this morning {who} are locked out of {thing} and our shop cannot open.",
        "{thing} charged {who} twice in the last hour, people are calling us angry.",
        "we cannot process any orders at all because {thing} throws an error for {who}.",
        "someone changed our account password without us, we think we were hacked, please lock it now.",
        "{thing} stopped working during our biggest sale of the year and nothing goes through.",
        "payments from {who} are failing at {thing} and the queue is out the door.",
        "{thing} shows other customers' data to {who}, please take it down immediately.",
        "our launch is in one hour and {thing} returns 500 for {who}.",
        "{thing} keeps deleting orders as {who} submit them, we are losing them for good.",
    ],
    "normal": [
        "{thing} is slow today but it still works if we wait a bit.",
        "one of our invoices from {thing} has the wrong address, we fixed it by hand for now.",
        "the export from {thing} misses a column, we copy it over manually meanwhile.",
        "{thing} logs me out every few hours, annoying but I can log in again.",
        "a report in {thing} shows last week's totals, the other reports look fine.",
        "the dark mode of {thing} is broken, text is hard to read but we manage.",
        "{thing} sends the confirmation email twice to some of {who}.",
        "search in {thing} ignores accents, we find items by scrolling instead.",
        "the printer layout of {thing} cuts off the last line on long receipts.",
        "a few images in {thing} do not load on the first try, a refresh helps.",
    ],
    "low": [
        "could {thing} get a dark theme some day? just an idea.",
        "how do I change the logo shown in {thing}? no rush.",
        "just wanted to say {thing} has been great for {who}, thank you.",
        "is there a keyboard shortcut for search in {thing}?",
        "would it be possible to export {thing} data as a spreadsheet in a future version?",
        "what time zone does {thing} use for its daily summary?",
        "our team loves the new look of {thing}, keep it up.",
        "where can I read about planned features for {thing}?",
        "can {who} get a short training session on {thing} next month?",
        "a small suggestion: {thing} could remember the last filter I used.",
    ],
}


def render(rng: random.Random, label: str) -> str:
    body = rng.choice(TEMPLATES[label]).format(thing=rng.choice(THINGS), who=rng.choice(WHO))
    opener = rng.choice(OPENERS)
    text = opener + (body[0].upper() + body[1:] if not opener or opener.endswith(". ") else body)
    return text + rng.choice(CLOSERS)


def main(out: Path = HERE) -> dict[str, int]:
    rng = random.Random(SEED)
    seen: set[str] = set()
    counts = {}
    for split, per_label in PER_LABEL.items():
        rows = []
        for label in LABELS:
            made = 0
            while made < per_label:
                text = render(rng, label)
                if text.lower() in seen:
                    continue
                seen.add(text.lower())
                rows.append({"id": f"{split}-{len(rows) + 1:04d}", "text": text, "label": label})
                made += 1
        rng.shuffle(rows)
        for i, row in enumerate(rows, start=1):
            row["id"] = f"{split}-{i:04d}"
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        counts[split] = len(rows)
    return counts


if __name__ == "__main__":
    print(main())
