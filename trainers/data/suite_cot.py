"""The nine chain-of-thought tasks of the synthetic suite.

They mirror the shape of the paper's CoT datasets (AQuA, CREAK, ECQA, e-SNLI, GSM8K, QASC,
QED, Sense-Making, StrategyQA): each example has a rationale whose steps derive the answer,
so the CoT formats' targets read "<steps> So the answer is X." Sizes follow the paper's
dataset sizes (the paper's Table 23 and section 2), scaled like the caps.
"""

from __future__ import annotations

import random

from trainers.data.suite_families import DOMAIN_NAMES, DOMAINS, Gen, num_options, options
from trainers.data.templates import Example

PAPER_COT_SIZES = {
    "aqua": 2715, "creak": 6910, "ecqa": 7110, "esnli": 36170, "gsm8k": 7470,
    "qasc": 1080, "qed": 5145, "sensemaking": 6070, "strategyqa": 2060,
}
_LETTERS = "ABCDE"
# Things ordered from smallest to largest, for the size-based common-sense tasks.
_SIZES = "ant mouse cat dog sheep horse car bus house tower mountain".split()


def aqua(r: random.Random) -> Example:
    price, n, fee = r.randint(2, 20), r.randint(2, 12), r.randint(0, 9)
    total = price * n + fee
    values = sorted({total, total + price, total - fee - 1, total + 2 * n, price * n})
    while len(values) < 5:
        values.append(values[-1] + 3)
    r.shuffle(values)  # the right answer's letter must not be predictable
    choices = [f"({_LETTERS[i]}) {v}" for i, v in enumerate(values)]
    letter = _LETTERS[values.index(total)]
    q = f"A pen costs ${price} and delivery costs ${fee}. What do {n} pens cost in total? " + " ".join(choices)
    why = f"{n} pens cost {n} * {price} = {price * n} dollars. Adding the delivery fee gives {price * n} + {fee} = {total} dollars, which is option ({letter})."
    return Example(q, f"({letter})", tuple(f"({c})" for c in _LETTERS), why)


def creak(r: random.Random) -> Example:
    n = r.randint(2, 200)
    kind = r.choice(("even", "prime", "square"))
    facts = {
        "even": (n % 2 == 0, f"{n} divided by 2 leaves remainder {n % 2}."),
        "prime": (n > 1 and all(n % d for d in range(2, int(n**0.5) + 1)), _prime_reason(n)),
        "square": (int(n**0.5) ** 2 == n, f"{int(n**0.5)} squared is {int(n**0.5) ** 2} and {int(n**0.5) + 1} squared is {(int(n**0.5) + 1) ** 2}."),
    }
    ok, why = facts[kind]
    return Example(f"Is the following claim true? \"{n} is {'an' if kind == 'even' else 'a'} {kind} number.\"",
                   "yes" if ok else "no", ("yes", "no"), f"{why} So the claim is {'true' if ok else 'false'}.")


def _prime_reason(n: int) -> str:
    for d in range(2, int(n**0.5) + 1):
        if n % d == 0:
            return f"{n} = {d} * {n // d}, so it has a divisor other than 1 and itself."
    return f"No number between 2 and {max(2, int(n**0.5))} divides {n}."


def ecqa(r: random.Random) -> Example:
    doms = r.sample(DOMAIN_NAMES, 4)
    picks = [r.choice(DOMAINS[d]) for d in doms]
    q = f"Which of these is one of the {doms[0]}?"
    why = f"{picks[0]} is one of the {doms[0]}, while " + ", ".join(f"{w} is one of the {d}" for w, d in zip(picks[1:], doms[1:])) + "."
    return Example(q, picks[0], options(r, picks[0], picks[1:]), why)


def esnli(r: random.Random) -> Example:
    red, blue = r.randint(0, 9), r.randint(0, 9)
    kind = r.choice(("more", "total", "color"))
    if kind == "more":
        hyp = "There are more red balls than blue balls."
        label = "entailment" if red > blue else "contradiction"
        why = f"There are {red} red and {blue} blue balls, and {red} is {'more' if red > blue else 'not more'} than {blue}."
    elif kind == "total":
        t = r.randint(0, 18)
        hyp = f"The box holds {t} balls."
        label = "entailment" if red + blue == t else "contradiction"
        why = f"The box holds {red} + {blue} = {red + blue} balls, {'which matches' if red + blue == t else 'not'} {t}."
    else:
        hyp = "Some of the balls are heavy."
        label = "neutral"
        why = "The premise only gives colours and counts; it says nothing about weight."
    q = f"Premise: A box has {red} red balls and {blue} blue balls.\nHypothesis: {hyp}\nDoes the premise entail the hypothesis?"
    return Example(q, label, ("entailment", "neutral", "contradiction"), why)


def gsm8k(r: random.Random) -> Example:
    name = r.choice(DOMAINS["names"]).capitalize()
    a, bags, per, give = r.randint(1, 30), r.randint(2, 6), r.randint(2, 12), r.randint(1, 10)
    have = a + bags * per
    left = max(have - give, 0)
    q = f"{name} has {a} apples. {name} buys {bags} bags with {per} apples each, then gives away {give}. How many apples are left?"
    why = (f"The bags hold {bags} * {per} = {bags * per} apples. {name} then has {a} + {bags * per} = {have} apples. "
           f"After giving away {give}, {have} - {give} = {left} apples are left.")
    return Example(q, str(left), num_options(r, left), why)


def qasc(r: random.Random) -> Example:
    d1, d2 = r.sample(DOMAIN_NAMES, 2)
    x = r.choice(DOMAINS[d1])
    prop = r.choice(("useful", "famous", "rare", "colourful", "ancient"))
    q = f"Fact 1: {x} is one of the {d1}. Fact 2: all {d1} in this story are {prop}. What is {x}?"
    why = f"{x} is one of the {d1}, and all {d1} are {prop}, so {x} is {prop}."
    return Example(q, prop, options(r, prop, ["useful", "famous", "rare", "colourful", "ancient"]), why)


def qed(r: random.Random) -> Example:
    people = r.sample(DOMAINS["names"], 3)
    places = r.sample(DOMAINS["cities"], 3)
    sentences = [f"{p.capitalize()} lives in {c.capitalize()}." for p, c in zip(people, places)]
    i = r.randrange(3)
    q = " ".join(sentences) + f"\nQuestion: Who lives in {places[i].capitalize()}?"
    why = f"The passage says: \"{sentences[i]}\""
    ans = people[i].capitalize()
    return Example(q, ans, options(r, ans, [p.capitalize() for p in people]), why)


def sensemaking(r: random.Random) -> Example:
    i, j = sorted(r.sample(range(len(_SIZES)), 2))
    small, big = _SIZES[i], _SIZES[j]
    good, bad = f"The {big} is bigger than the {small}.", f"The {small} is bigger than the {big}."
    first_bad = r.random() < 0.5
    sents = (bad, good) if first_bad else (good, bad)
    q = f"Which sentence goes against common sense?\nSentence A: {sents[0]}\nSentence B: {sents[1]}"
    ans = "Sentence A" if first_bad else "Sentence B"
    why = f"A {small} is smaller than a {big}, so \"{bad}\" cannot be true."
    return Example(q, ans, ("Sentence A", "Sentence B"), why)


def strategyqa(r: random.Random) -> Example:
    n, m = r.randint(10, 9999), r.randint(5, 30)
    s = sum(map(int, str(n)))
    ok = s > m
    q = f"Is the sum of the digits of {n} greater than {m}?"
    why = f"The digits of {n} add up to {' + '.join(str(n))} = {s}. {s} is {'greater' if ok else 'not greater'} than {m}."
    return Example(q, "yes" if ok else "no", ("yes", "no"), why)


COT_TASKS: dict[str, tuple[Gen, tuple[str, ...]]] = {
    "aqua": (aqua, ("Solve the math word problem and pick the option.", "Answer the multiple-choice question.", "Work out the cost, then choose the matching option.")),
    "creak": (creak, ("Check the claim against what you know.", "Decide whether the claim is true.", "Is this statement correct? Answer yes or no.")),
    "ecqa": (ecqa, ("Use common sense to pick the answer.", "Pick the option that fits the question.", "Choose the best answer.")),
    "esnli": (esnli, ("Decide if the hypothesis follows from the premise.", "Natural language inference.", "Entailment, neutral or contradiction?")),
    "gsm8k": (gsm8k, ("Solve the grade-school math problem.", "Answer the word problem with a number.", "Solve step by step and give the final number.")),
    "qasc": (qasc, ("Combine the two facts to answer.", "Answer the question using both facts.", "Chain the facts together to answer.")),
    "qed": (qed, ("Answer the question from the passage.", "Find the answer in the text.", "Read the passage and answer the question.")),
    "sensemaking": (sensemaking, ("Find the sentence that makes no sense.", "Which statement is nonsensical?", "Pick the sentence that contradicts common sense.")),
    "strategyqa": (strategyqa, ("Answer the yes/no question by reasoning in steps.", "Reason, then answer yes or no.", "Think it through and answer the question.")),
}
