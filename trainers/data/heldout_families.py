"""Generators of the held-out task families (see `trainers.data.heldout`).

Each generator turns a seeded `random.Random` and a wanted answer index into one `Item`,
formatting its question from the task's phrasings declared here (`P_MC`, `P_RE`, `P_QA`,
`P_AR`), which the disjointness test checks against every training task. The tasks draw on
the suite's skills: the vocabularies of `suite_families.DOMAINS`, classifying words into
those domains, counting and comparing letters, alphabetical order, addition and
multiplication, copying a span of the input.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from trainers.data.suite_families import DOMAIN_NAMES, DOMAINS

LETTERS = "ABCD"

# Words that belong to exactly one domain ("olive" is a colour and a food), so that
# "which of the following words is a food?" has one right option.
_COUNTS = Counter(w for ws in DOMAINS.values() for w in ws)
WORDS = {d: [w for w in ws if _COUNTS[w] == 1] for d, ws in DOMAINS.items()}
ALL_WORDS = sorted(w for ws in WORDS.values() for w in ws)
DOMAIN_OF = {w: d for d, ws in WORDS.items() for w in ws}
KIND = {"animals": "an animal", "colors": "a color", "foods": "a food", "cities": "a city", "tools": "a tool",
        "sports": "a sport", "plants": "a plant", "music": "a musical instrument", "vehicles": "a vehicle",
        "names": "a first name"}
PLURAL = {**{d: d for d in DOMAIN_NAMES}, "music": "musical instruments", "names": "first names"}
PEOPLE = [n.capitalize() for n in WORDS["names"]]


@dataclass(frozen=True)
class Item:
    """One held-out example. `answer` is the gold answer as the benchmark file states it
    (mc: the right option's text; reasoning: "(B)", "Yes", "True"; qa: the span; arith: the
    integer); `options` are mc's four options in A-D order or a reasoning subtask's option set."""

    task: str
    question: str
    answer: str
    options: tuple[str, ...] = ()
    rationale: str = ""  # the steps, without the final "So the answer is X." sentence
    context: str = ""  # qa: the passage
    answer_start: int = 0  # qa: where the answer span begins in the passage

    @property
    def letter(self) -> str:
        return LETTERS[self.options.index(self.answer)]


def _pick(r: random.Random, items: list, n: int, wanted: int, right) -> list:
    """`items` (n - 1 distractors) with `right` inserted at index `wanted`, distractors shuffled."""
    rest = list(items)
    r.shuffle(rest)
    return rest[:wanted] + [right] + rest[wanted: n - 1]


# ----------------------------------------------------------------------------------- mc

P_MC = {
    "word_categories": ("Which of the following words is {kind}?",),
    "word_length": ("Which of the following words has the most letters?",
                    "Which of the following words has the fewest letters?"),
    "addition": ("How much is {a} added to {b}?",),
    "alphabetical_order": ("Which of the following words would come first in a dictionary?",
                           "Which of the following words would come last in a dictionary?"),
    "letter_counting": ("In the spelling of '{w}', how many copies of '{c}' are there?",),
    "largest_number": ("Which of the following numbers has the greatest value?",
                       "Which of the following numbers has the smallest value?"),
}


def _mc(task: str, r: random.Random, wanted: int, question: str, right: str, wrong: list[str], end: str,
        say: Callable[[str], str] | None = None) -> Item:
    """An mc item; the rationale says `say(option)` for each option in A-D order, then `end`."""
    opts = tuple(_pick(r, wrong, 4, wanted, right))
    return Item(task, question, right, opts, " ".join([say(o) for o in opts] + [end]) if say else end)


def _word_categories(r: random.Random, wanted: int) -> Item:
    d, *others = r.sample(DOMAIN_NAMES, 4)
    right, wrong = r.choice(WORDS[d]), [r.choice(WORDS[o]) for o in others]
    q = P_MC["word_categories"][0].format(kind=KIND[d])
    return _mc("word_categories", r, wanted, q, right, wrong, f"Only {right} is {KIND[d]}.",
               lambda w: f"{w} is {KIND[DOMAIN_OF[w]]}.")


def _word_length(r: random.Random, wanted: int) -> Item:
    most = r.random() < 0.5
    while True:
        ws = r.sample(ALL_WORDS, 4)
        lens = sorted(map(len, ws))
        if (lens[3] > lens[2]) if most else (lens[0] < lens[1]):
            break
    right = (max if most else min)(ws, key=len)
    end = f"The {'longest' if most else 'shortest'} word is {right}."
    return _mc("word_length", r, wanted, P_MC["word_length"][0 if most else 1], right, [w for w in ws if w != right], end,
               lambda w: f"{w} has {len(w)} letters.")


def _addition(r: random.Random, wanted: int) -> Item:
    a, b = r.randint(10, 99), r.randint(10, 99)
    s = a + b
    wrong = [str(s + d) for d in r.sample([-10, -2, -1, 1, 2, 10, 11], 3)]
    return _mc("addition", r, wanted, P_MC["addition"][0].format(a=a, b=b), str(s), wrong, f"{a} + {b} = {s}.")


def _alphabetical_order(r: random.Random, wanted: int) -> Item:
    ws, first = r.sample(ALL_WORDS, 4), r.random() < 0.5
    right = min(ws) if first else max(ws)
    end = f"In alphabetical order the words are {', '.join(sorted(ws))}. The {'first' if first else 'last'} of them is {right}."
    q = P_MC["alphabetical_order"][0 if first else 1]
    return _mc("alphabetical_order", r, wanted, q, right, [w for w in ws if w != right], end)


def _letter_counting(r: random.Random, wanted: int) -> Item:
    # Half the words repeat the asked letter and some lack it, so the count is not always 1.
    kind = r.random()
    repeats = [x for x in ALL_WORDS if len(set(x)) < len(x)]
    w = r.choice(repeats if kind < 0.5 else ALL_WORDS)
    letters = sorted(set(w))
    pool = ([c for c in letters if w.count(c) > 1] if kind < 0.5 else
            [c for c in "abcdefghijklmnoprstuvwy" if c not in w] if kind > 0.85 else letters)
    c = r.choice(pool)
    n = w.count(c)
    wrong = [str(x) for x in (n + 1, n + 2, n - 1 if n > 1 else n + 3)]
    end = f"Spelled out, {w} is {'-'.join(w)}. The letter '{c}' occurs {n} {'time' if n == 1 else 'times'}."
    return _mc("letter_counting", r, wanted, P_MC["letter_counting"][0].format(c=c, w=w), str(n), wrong, end)


def _largest_number(r: random.Random, wanted: int) -> Item:
    xs, big = r.sample(range(10, 1000), 4), r.random() < 0.5
    right = max(xs) if big else min(xs)
    end = f"Sorted, the numbers are {', '.join(map(str, sorted(xs)))}, so the {'greatest' if big else 'smallest'} is {right}."
    q = P_MC["largest_number"][0 if big else 1]
    return _mc("largest_number", r, wanted, q, str(right), [str(x) for x in xs if x != right], end)


# ---------------------------------------------------------------------------- reasoning

P_RE = {
    "odd_one_out": ("Three of these words name things of one kind. Which word is the odd one out?",),
    "sorted_position": ("If the words {words} are put in alphabetical order, which of them lands in place {k}?",),
    "sum_parity": ("Add {a} and {b}. Is the result an even number?", "Add {a} and {b}. Is the result an odd number?"),
    "letter_total": ("Together, the words {w1} and {w2} contain {n} letters. True or False?",),
    "category_majority": ("Here is a list of words: {words}. Does the list contain more {p1} than {p2}?",),
    "largest_total": ("Which pair of numbers has the largest sum?",),
}
_ABCD, _ABC = tuple(f"({x})" for x in "ABCD"), tuple(f"({x})" for x in "ABC")
REASONING_OPTIONS: dict[str, tuple[str, ...]] = {
    "odd_one_out": _ABCD, "sorted_position": _ABCD, "sum_parity": ("Yes", "No"),
    "letter_total": ("True", "False"), "category_majority": ("Yes", "No"), "largest_total": _ABC,
}


def _with_options(question: str, opts: list[str]) -> str:
    return question + "\nOptions:\n" + "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(opts))


def _lettered(task: str, question: str, opts: list[str], wanted: int, steps: list[str]) -> Item:
    steps = steps + [f"{opts[wanted]} is option ({LETTERS[wanted]})."]
    return Item(task, _with_options(question, opts), f"({LETTERS[wanted]})", REASONING_OPTIONS[task], "\n".join(steps))


def _odd_one_out(r: random.Random, wanted: int) -> Item:
    d, o = r.sample(DOMAIN_NAMES, 2)
    odd = r.choice(WORDS[o])
    opts = _pick(r, r.sample(WORDS[d], 3), 4, wanted, odd)
    steps = [f"{w} is {KIND[DOMAIN_OF[w]]}." for w in opts] + [f"The other three are {PLURAL[d]}, so {odd} is the odd one out."]
    return _lettered("odd_one_out", P_RE["odd_one_out"][0], opts, wanted, steps)


def _sorted_position(r: random.Random, wanted: int) -> Item:
    ws, k = r.sample(ALL_WORDS, 4), r.randint(1, 4)
    ordered = sorted(ws)
    right = ordered[k - 1]
    opts = _pick(r, [w for w in ws if w != right], 4, wanted, right)
    q = P_RE["sorted_position"][0].format(words=", ".join(ws), k=k)
    steps = [f"In alphabetical order the words are {', '.join(ordered)}.", f"Place {k} holds {right}."]
    return _lettered("sorted_position", q, opts, wanted, steps)


def _sum_parity(r: random.Random, wanted: int) -> Item:
    while True:
        a, b, even_q = r.randint(10, 99), r.randint(10, 99), r.random() < 0.5
        s = a + b
        answer = "Yes" if (s % 2 == 0) == even_q else "No"
        if answer == REASONING_OPTIONS["sum_parity"][wanted]:
            break
    q = P_RE["sum_parity"][0 if even_q else 1].format(a=a, b=b)
    why = f"{a} + {b} = {s}.\n{s} divided by 2 leaves remainder {s % 2}, so {s} is {'even' if s % 2 == 0 else 'odd'}."
    return Item("sum_parity", q, answer, REASONING_OPTIONS["sum_parity"], why)


def _letter_total(r: random.Random, wanted: int) -> Item:
    w1, w2 = r.sample(ALL_WORDS, 2)
    t = len(w1) + len(w2)
    n = t if wanted == 0 else t + r.choice((-3, -2, -1, 1, 2, 3))
    holds = "equals" if n == t else "does not equal"
    why = f"{w1} has {len(w1)} letters.\n{w2} has {len(w2)} letters.\n{len(w1)} + {len(w2)} = {t}, which {holds} {n}."
    q = P_RE["letter_total"][0].format(w1=w1, w2=w2, n=n)
    return Item("letter_total", q, REASONING_OPTIONS["letter_total"][wanted], REASONING_OPTIONS["letter_total"], why)


def _category_majority(r: random.Random, wanted: int) -> Item:
    d1, d2, d3 = r.sample(DOMAIN_NAMES, 3)
    c1, c2 = r.sample(range(1, 5), 2)
    if (c1 > c2) != (wanted == 0):
        c1, c2 = c2, c1
    picks = {d1: r.sample(WORDS[d1], c1), d2: r.sample(WORDS[d2], c2)}
    ws = picks[d1] + picks[d2] + r.sample(WORDS[d3], r.randint(0, 1))
    r.shuffle(ws)
    q = P_RE["category_majority"][0].format(words=", ".join(ws), p1=PLURAL[d1], p2=PLURAL[d2])
    steps = [f"The {PLURAL[d]} in the list are {', '.join(w for w in ws if w in picks[d])}, that is {len(picks[d])}."
             for d in (d1, d2)]
    steps.append(f"{c1} is {'more' if c1 > c2 else 'not more'} than {c2}.")
    options = REASONING_OPTIONS["category_majority"]
    return Item("category_majority", q, options[wanted], options, "\n".join(steps))


def _largest_total(r: random.Random, wanted: int) -> Item:
    while True:
        pairs = [(r.randint(2, 60), r.randint(2, 60)) for _ in range(3)]
        sums = sorted(a + b for a, b in pairs)
        if sums[2] > sums[1]:
            break
    best = max(pairs, key=sum)
    opts = _pick(r, [p for p in pairs if p != best], 3, wanted, best)
    steps = [f"({LETTERS[i]}) {a} + {b} = {a + b}." for i, (a, b) in enumerate(opts)] + [f"The largest sum is {sum(best)}."]
    return _lettered("largest_total", P_RE["largest_total"][0], [f"{a} and {b}" for a, b in opts], wanted, steps)


# ----------------------------------------------------------------------------------- qa

# task -> (fact sentence, value pools, [(question, field asked)]); {n} is a person, {a} the
# article of {v}.
_CITIES = [c.capitalize() for c in WORDS["cities"]]
QA = {
    "pets": ("{n} owns a pet {v}.", {"v": WORDS["animals"]}, [("What kind of pet does {n} own?", "v")]),
    "instruments": ("{n} practises the {v} every evening.", {"v": WORDS["music"]}, [("Which instrument does {n} practise?", "v")]),
    "journeys": ("{n} travelled to {v} by {w}.", {"v": _CITIES, "w": WORDS["vehicles"]},
                 [("Where did {n} travel to?", "v"), ("How did {n} get to {v}?", "w")]),
    "gardens": ("{a} {v} grows in the garden of {n}.", {"v": WORDS["plants"]}, [("What grows in the garden of {n}?", "v")]),
    "hobbies": ("{n} took up {v} last summer.", {"v": WORDS["sports"]}, [("Which sport did {n} take up last summer?", "v")]),
}
P_QA = {t: (fact,) + tuple(q for q, _ in asks) for t, (fact, _, asks) in QA.items()}
# People per passage: each question's candidate spans are the asked field of every person in
# it, so rank classification picks one of this many (chance 100 / QA_CANDIDATES).
QA_CANDIDATES = 4


def _qa(task: str) -> Callable[[random.Random, int], Item]:
    fact, pools, asks = QA[task]

    def make(r: random.Random, wanted: int) -> Item:
        k = QA_CANDIDATES
        people = r.sample(PEOPLE, k)
        vals = [{f: v for f, v in zip(pools, col)} for col in zip(*(r.sample(p, k) for p in pools.values()))]
        for v in vals:
            v["a"] = "An" if v["v"][0] in "aeiou" else "A"  # the article some facts start with
        sentences = [fact.format(n=p, **v) for p, v in zip(people, vals)]
        i = r.randrange(k)
        question, field = r.choice(asks)
        answer = vals[i][field]
        start = len(" ".join(sentences[:i] + [""])) + fact.format(n=people[i], **{**vals[i], field: "\0"}).index("\0")
        context = " ".join(sentences)
        assert context[start: start + len(answer)] == answer
        options = tuple(v[field] for v in vals)
        return Item(task, question.format(n=people[i], **vals[i]), answer, options, "", context, start)
    return make


# -------------------------------------------------------------------------------- arith

def _plural(w: str) -> str:
    if w.endswith("y"):
        return w[:-1] + "ies"
    return w + ("es" if w.endswith(("o", "ch", "sh", "s", "x")) else "s")


_FRUIT = "apple carrot banana mango onion pepper lemon potato cherry melon".split()
_TREES = "oak pine maple fern tulip rose daisy willow orchid cedar".split()
P_AR = {
    "shopping": ("{n} buys {k} {fruits} for {p} coins each and one {other} for {q} coins. How many coins does {n} spend in all?",),
    "bus_ride": ("A {v} leaves the station with {a} passengers. At the first stop {b} passengers get off and {c} get on. "
                 "How many passengers are on the {v} now?",),
    "equal_shares": ("{n} has {t} {fruits} and shares them equally among {k} friends. How many {fruits} does each friend get?",),
    "garden_rows": ("A garden has {rows} rows with {c} {trees} in each row. {n} digs up {d} of them. How many {trees} are left?",),
    "ages": ("{n} is {d} years older than {m}. {m} is {a} years old. How old will {n} be in {y} years?",),
    "savings": ("{n} saves {s} coins every week. After {w} weeks {n} spends {x} coins on a {tool}. How many coins are left?",),
}


def _shopping(r: random.Random, wanted: int) -> Item:
    n, (f, g) = r.choice(PEOPLE), r.sample(_FRUIT, 2)
    k, p, q = r.randint(2, 12), r.randint(2, 25), r.randint(1, 30)
    why = f"{k} {_plural(f)} cost {k} * {p} = {k * p} coins. Adding the {g} gives {k * p} + {q} = {k * p + q} coins."
    return Item("shopping", P_AR["shopping"][0].format(n=n, k=k, fruits=_plural(f), p=p, other=g, q=q), str(k * p + q), (), why)


def _bus_ride(r: random.Random, wanted: int) -> Item:
    v = r.choice(["bus", "train", "tram", "ferry", "boat"])
    a = r.randint(10, 80)
    b, c = r.randint(1, a - 1), r.randint(1, 40)
    why = (f"After {b} get off, {a} - {b} = {a - b} passengers remain. "
           f"After {c} get on, {a - b} + {c} = {a - b + c} passengers are on the {v}.")
    return Item("bus_ride", P_AR["bus_ride"][0].format(v=v, a=a, b=b, c=c), str(a - b + c), (), why)


def _equal_shares(r: random.Random, wanted: int) -> Item:
    n, f, k, each = r.choice(PEOPLE), r.choice(_FRUIT), r.randint(2, 9), r.randint(2, 15)
    why = f"{k * each} {_plural(f)} shared among {k} friends gives {k * each} / {k} = {each} each."
    return Item("equal_shares", P_AR["equal_shares"][0].format(n=n, t=k * each, fruits=_plural(f), k=k), str(each), (), why)


def _garden_rows(r: random.Random, wanted: int) -> Item:
    n, t, rows, c = r.choice(PEOPLE), _plural(r.choice(_TREES)), r.randint(2, 12), r.randint(2, 12)
    d = r.randint(1, rows * c - 1)
    why = f"The garden has {rows} * {c} = {rows * c} {t}. After {d} are dug up, {rows * c} - {d} = {rows * c - d} are left."
    return Item("garden_rows", P_AR["garden_rows"][0].format(n=n, rows=rows, c=c, trees=t, d=d), str(rows * c - d), (), why)


def _ages(r: random.Random, wanted: int) -> Item:
    n, m = r.sample(PEOPLE, 2)
    d, a, y = r.randint(1, 30), r.randint(2, 60), r.randint(2, 20)
    why = f"{n} is {a} + {d} = {a + d} years old now. In {y} years {n} will be {a + d} + {y} = {a + d + y}."
    return Item("ages", P_AR["ages"][0].format(n=n, m=m, d=d, a=a, y=y), str(a + d + y), (), why)


def _savings(r: random.Random, wanted: int) -> Item:
    n, tool, s, w = r.choice(PEOPLE), r.choice(WORDS["tools"]), r.randint(2, 30), r.randint(2, 20)
    x = r.randint(1, s * w)
    why = f"In {w} weeks {n} saves {w} * {s} = {w * s} coins. After spending {x}, {w * s} - {x} = {w * s - x} coins are left."
    return Item("savings", P_AR["savings"][0].format(n=n, s=s, w=w, x=x, tool=tool), str(w * s - x), (), why)


# shape -> (task -> question phrasings, task -> generator)
FAMILIES = {
    "mc": (P_MC, {"word_categories": _word_categories, "word_length": _word_length, "addition": _addition,
                  "alphabetical_order": _alphabetical_order, "letter_counting": _letter_counting,
                  "largest_number": _largest_number}),
    "reasoning": (P_RE, {"odd_one_out": _odd_one_out, "sorted_position": _sorted_position, "sum_parity": _sum_parity,
                         "letter_total": _letter_total, "category_majority": _category_majority,
                         "largest_total": _largest_total}),
    "qa": (P_QA, {t: _qa(t) for t in QA}),
    "arith": (P_AR, {"shopping": _shopping, "bus_ride": _bus_ride, "equal_shares": _equal_shares,
                     "garden_rows": _garden_rows, "ages": _ages, "savings": _savings}),
}
