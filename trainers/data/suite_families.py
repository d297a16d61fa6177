"""Task families of the synthetic suite: rule-based tasks whose answers are computable.

Each family enumerates its parameter grid as (task id, generator, instruction phrasings).
A generator turns a seeded `random.Random` into one `Example`; different parameters give
different rules (shift by 3 vs by 7, divisible by 4 vs by 9, ...), so tasks are distinct.
Every example carries options (the answer plus plausible distractors) for the *_opt formats.
"""

from __future__ import annotations

import itertools
import random
import string
from typing import Callable, Iterator

from trainers.data.templates import Example

Gen = Callable[[random.Random], Example]
Family = Iterator[tuple[str, Gen, tuple[str, ...]]]

DOMAINS = {
    "animals": "cat dog horse tiger zebra otter camel eagle shark whale mouse llama panda koala bison moose".split(),
    "colors": "red blue green yellow purple orange violet indigo amber teal maroon olive silver golden cyan ivory".split(),
    "foods": "bread apple cheese pasta rice carrot banana mango onion pepper lemon bean potato olive cherry melon".split(),
    "cities": "paris london tokyo cairo lima oslo rome madrid vienna dublin nairobi seoul delhi quito berlin sydney".split(),
    "tools": "hammer wrench saw drill chisel pliers ladder shovel rake axe level clamp file trowel spade mallet".split(),
    "sports": "soccer tennis golf rugby hockey boxing rowing cricket karate skiing surfing polo judo archery diving squash".split(),
    "plants": "oak pine maple fern cactus tulip rose daisy lily ivy moss bamboo cedar willow orchid clover".split(),
    "music": "piano violin guitar drum flute harp cello trumpet banjo oboe tuba organ lute sitar bugle viola".split(),
    "vehicles": "car bus train truck bicycle tram boat yacht scooter van jeep taxi ferry canoe sled rocket".split(),
    "names": "alice bruno carla diego emma felix greta hugo irene jonas karen liam maria nora oscar paula".split(),
}
DOMAIN_NAMES = tuple(DOMAINS)
VOWELS = set("aeiou")


def options(rng: random.Random, answer: str, candidates: list[str], k: int = 3) -> tuple[str, ...]:
    """The answer plus up to k distinct distractors, shuffled."""
    seen, out = {answer}, [answer]
    for c in candidates:
        if c not in seen and len(out) <= k:
            seen.add(c)
            out.append(c)
    rng.shuffle(out)
    return tuple(out)


def num_options(rng: random.Random, n: int) -> tuple[str, ...]:
    deltas = [d for d in rng.sample([-3, -2, -1, 1, 2, 3, 10], 7) if n < 0 or n + d >= 0]
    return options(rng, str(n), [str(n + d) for d in deltas])


def word_options(rng: random.Random, w: str, pool: list[str]) -> tuple[str, ...]:
    variants = [w[::-1], w[1:] + w[:1], "".join(sorted(w))] + rng.sample(pool, 2)
    return options(rng, w, variants)


def yes_no(rng: random.Random, cond: bool) -> tuple[str, tuple[str, ...]]:
    return ("Yes" if cond else "No"), ("Yes", "No")


def _words(rng: random.Random, domain: str, n: int) -> list[str]:
    return [rng.choice(DOMAINS[domain]) for _ in range(n)]


def _shift(w: str, k: int) -> str:
    return "".join(chr((ord(c) - 97 + k) % 26 + 97) if c.isalpha() else c for c in w)


def caesar() -> Family:
    for k, d in itertools.product(range(1, 26), DOMAIN_NAMES):
        def gen(r, k=k, d=d):
            w = r.choice(DOMAINS[d])
            a = _shift(w, k)
            return Example(w, a, options(r, a, [_shift(w, k + 1), _shift(w, k - 1), w[::-1]]))
        yield f"caesar_{k}_{d}", gen, (
            f"Shift every letter of the word forward by {k} places in the alphabet.",
            f"Encode the word with a Caesar cipher of shift {k}.",
            f"Replace each letter with the letter {k} positions later (wrapping from z to a).",
        )


def divisible() -> Family:
    for k in range(2, 41):
        def gen(r, k=k):
            n = r.randint(1, 50) * (k if r.random() < 0.5 else 1) + r.randint(0, 1)
            a, opts = yes_no(r, n % k == 0)
            return Example(str(n), a, opts)
        yield f"divisible_by_{k}", gen, (
            f"Is the number divisible by {k}? Answer yes or no.",
            f"Decide whether {k} divides the given number evenly.",
            f"Does the number leave remainder zero when divided by {k}?",
        )


def _common_letters(min_words: int = 3) -> list[tuple[str, str]]:
    """(letter, domain) pairs where the letter occurs in at least `min_words` of the domain's
    words, so letter tasks have non-trivial answers."""
    return [(c, d) for d in DOMAIN_NAMES for c in string.ascii_lowercase if sum(c in w for w in DOMAINS[d]) >= min_words]


def count_letter() -> Family:
    pairs = _common_letters(min_words=2)
    random.Random("count_letter").shuffle(pairs)
    for c, d in pairs[:130]:
        def gen(r, c=c, d=d):
            ws = _words(r, d, r.randint(3, 7))
            n = sum(w.count(c) for w in ws)
            return Example(" ".join(ws), str(n), num_options(r, n))
        yield f"count_letter_{c}_{d}", gen, (
            f"How many times does the letter '{c}' appear in the text?",
            f"Count the occurrences of '{c}'.",
            f"Return the number of '{c}' characters in the input.",
        )


def nth_word() -> Family:
    for k, end, d in itertools.product(range(1, 7), (False, True), DOMAIN_NAMES):
        def gen(r, k=k, end=end, d=d):
            ws = _words(r, d, r.randint(k, k + 4))
            a = ws[-k] if end else ws[k - 1]
            return Example(" ".join(ws), a, options(r, a, ws))
        side = "last" if end else "first"
        yield f"nth_word_{k}_{side}_{d}", gen, (
            f"Return word number {k} counting from the {side} word.",
            f"Which word is in position {k} when counting from the {side}?",
            f"Extract the {k}-th word from the {'end' if end else 'start'} of the list.",
        )


_LIST_OPS = {
    "max": max, "min": min, "sum": sum, "count": len, "first": lambda x: x[0], "last": lambda x: x[-1],
    "range": lambda x: max(x) - min(x), "second_largest": lambda x: sorted(x)[-2],
}


def list_stat() -> Family:
    for op, n in itertools.product(_LIST_OPS, range(3, 9)):
        def gen(r, op=op, n=n):
            xs = [r.randint(0, 99) for _ in range(n)]
            a = _LIST_OPS[op](xs)
            return Example(str(xs), str(a), num_options(r, a))
        yield f"list_{op}_{n}", gen, (
            f"Compute the {op.replace('_', ' ')} of the list of {n} numbers.",
            f"Given a list of integers, output its {op.replace('_', ' ')}.",
            f"What is the {op.replace('_', ' ')} of these numbers?",
        )


def arithmetic() -> Family:
    ops = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
    for (op, f), digits, mod in itertools.product(ops.items(), (1, 2, 3), (0, 5, 7, 9, 10, 13)):
        def gen(r, f=f, digits=digits, mod=mod, op=op):
            a, b = r.randint(0, 10**digits - 1), r.randint(0, 10**digits - 1)
            v = f(a, b) % mod if mod else f(a, b)
            return Example(f"{a} {op} {b}", str(v), num_options(r, v))
        tail = f" modulo {mod}" if mod else ""
        yield f"arith_{op}_{digits}d_mod{mod}", gen, (
            f"Evaluate the expression{tail}.",
            f"Compute the result of the {op} operation{tail}.",
            f"Work out the value{tail} and give only the number.",
        )


def threshold() -> Family:
    for t, rel in itertools.product(range(10, 101, 5), ("greater", "less")):
        def gen(r, t=t, rel=rel):
            n = r.randint(0, 2 * t)
            a, opts = yes_no(r, n > t if rel == "greater" else n < t)
            return Example(str(n), a, opts)
        yield f"is_{rel}_than_{t}", gen, (
            f"Is the number {rel} than {t}?",
            f"Answer yes if the value is {rel} than {t}, otherwise no.",
            f"Compare the number with {t}: is it {rel}?",
        )


_STRING_OPS: dict[str, Callable[[str], str]] = {
    "reverse": lambda s: s[::-1], "upper": str.upper, "sort_letters": lambda s: "".join(sorted(s)),
    "remove_vowels": lambda s: "".join(c for c in s if c not in VOWELS), "swap_ends": lambda s: s[-1] + s[1:-1] + s[0],
    "double_letters": lambda s: "".join(c + c for c in s), "length": lambda s: str(len(s)),
    "last_letter": lambda s: s[-1], "count_vowels": lambda s: str(sum(c in VOWELS for c in s)),
    "capitalize": str.capitalize, "first_half": lambda s: s[: len(s) // 2], "vowels_only": lambda s: "".join(c for c in s if c in VOWELS) or "none",
}


def string_op() -> Family:
    for op, d in itertools.product(_STRING_OPS, DOMAIN_NAMES):
        def gen(r, op=op, d=d):
            w = r.choice(DOMAINS[d])
            a = _STRING_OPS[op](w)
            others = [_STRING_OPS[op](x) for x in r.sample(DOMAINS[d], 3)]
            return Example(w, a, options(r, a, others + [w]))
        name = op.replace("_", " ")
        yield f"string_{op}_{d}", gen, (
            f"Apply the rule '{name}' to the word.",
            f"Transform the word ({name}) and write the result.",
            f"Word puzzle: {name}. Give the output for the input word.",
        )


def sort_list() -> Family:
    for desc, d in itertools.product((False, True), ("numbers",) + DOMAIN_NAMES):
        def gen(r, desc=desc, d=d):
            xs = [r.randint(0, 99) for _ in range(5)] if d == "numbers" else r.sample(DOMAINS[d], 5)
            a = ", ".join(map(str, sorted(xs, reverse=desc)))
            wrong = [", ".join(map(str, sorted(xs, reverse=not desc))), ", ".join(map(str, xs))]
            return Example(", ".join(map(str, xs)), a, options(r, a, wrong))
        order = "descending" if desc else "ascending"
        yield f"sort_{d}_{order}", gen, (
            f"Sort the items in {order} order.",
            f"Arrange the list in {order} order, separated by commas.",
            f"Put these {d} in {order} order.",
        )


def category() -> Family:
    combos = list(itertools.combinations(DOMAIN_NAMES, 2)) + list(itertools.combinations(DOMAIN_NAMES, 3))[:120]
    for combo in combos:
        def gen(r, combo=combo):
            d = r.choice(combo)
            return Example(r.choice(DOMAINS[d]), d, tuple(combo))
        yield "category_" + "_".join(combo), gen, (
            f"Classify the word into one of these categories: {', '.join(combo)}.",
            f"Which category does the word belong to ({' or '.join(combo)})?",
            "Name the category of the given word.",
        )


def filter_list() -> Family:
    rules = [(f"greater_{t}", f"greater than {t}", lambda x, t=t: x > t) for t in range(0, 50, 5)]
    rules += [(f"nonmultiple_{k}", f"not multiples of {k}", lambda x, k=k: x % k != 0) for k in range(2, 10)]
    rules += [("even", "even", lambda x: x % 2 == 0), ("odd", "odd", lambda x: x % 2 == 1)]
    for (rid, desc, keep), n in itertools.product(rules, (4, 6, 8)):
        def gen(r, keep=keep, n=n):
            xs = [r.randint(0, 60) for _ in range(n)]
            a = str([x for x in xs if keep(x)])
            return Example(str(xs), a, options(r, a, [str([x for x in xs if not keep(x)]), str(xs)]))
        yield f"filter_{rid}_{n}", gen, (
            f"Keep only the numbers that are {desc}.",
            f"Remove every element of the list except those {desc}.",
            f"Filter the list: return the values {desc}, in order.",
        )


def base_convert() -> Family:
    def to_base(n: int, b: int) -> str:
        out = ""
        while True:
            n, rem = divmod(n, b)
            out = str(rem) + out
            if n == 0:
                return out
    for b, big, direction in itertools.product(range(2, 10), (False, True), ("to", "from")):
        def gen(r, b=b, big=big, direction=direction):
            n = r.randint(0, 999 if big else 63)
            q, a = (str(n), to_base(n, b)) if direction == "to" else (to_base(n, b), str(n))
            return Example(q, a, options(r, a, [to_base(n + 1, b), str(n + 1), to_base(n, b + 1)]))
        size = "large" if big else "small"
        yield f"base{b}_{direction}_{size}", gen, (
            f"Convert the number {direction} base {b}.",
            f"Write the {size} number {'in base ' + str(b) if direction == 'to' else 'in decimal, it is given in base ' + str(b)}.",
            f"Base conversion ({direction} base {b}).",
        )


def digit_ops() -> Family:
    ops: dict[str, Callable[[str], str]] = {
        "digit_sum": lambda s: str(sum(map(int, s))), "reverse_digits": lambda s: s[::-1],
        "largest_digit": max, "smallest_digit": min, "digit_count_even": lambda s: str(sum(int(c) % 2 == 0 for c in s)),
    }
    ops.update({f"count_digit_{d}": (lambda s, d=d: str(s.count(str(d)))) for d in range(10)})
    for (op, f), n in itertools.product(ops.items(), (3, 5, 7)):
        def gen(r, f=f, n=n):
            s = "".join(r.choice("0123456789") for _ in range(n))
            a = f(s)
            return Example(s, a, options(r, a, [f(s[::-1] + "1"), f(s[1:] or "0"), str(len(s))]))
        yield f"{op}_{n}", gen, (
            f"For the {n}-digit string, compute: {op.replace('_', ' ')}.",
            f"Digit task ({op.replace('_', ' ')}).",
            f"Return the {op.replace('_', ' ')} of the digits.",
        )


def compare_words() -> Family:
    rules = {"longer": lambda a, b: a if len(a) >= len(b) else b, "shorter": lambda a, b: a if len(a) <= len(b) else b,
             "first_alpha": min, "last_alpha": max}
    for (rid, f), d in itertools.product(rules.items(), DOMAIN_NAMES):
        def gen(r, f=f, d=d):
            a, b = r.sample(DOMAINS[d], 2)
            return Example(f"{a}, {b}", f(a, b), (a, b))
        name = rid.replace("_", " ")
        yield f"compare_{rid}_{d}", gen, (
            f"Which of the two words comes {name}?" if "alpha" in rid else f"Which of the two words is {name}?",
            f"Pick the word that is {name}.",
            f"Choose between the two words by the rule '{name}'.",
        )


def extract() -> Family:
    kinds = ("number", "quoted", "capitalized", "after_the")
    for kind, d in itertools.product(kinds, DOMAIN_NAMES):
        def gen(r, kind=kind, d=d):
            ws = _words(r, d, 5)
            i = r.randrange(5)
            target = ws[i]
            if kind == "number":
                target = str(r.randint(2, 999))
                ws[i] = target
            elif kind == "quoted":
                ws[i] = f'"{target}"'
            elif kind == "capitalized":
                ws[i] = target.capitalize()
            else:
                ws.insert(i, "the")
            return Example(" ".join(ws), target, options(r, target, ws))
        yield f"extract_{kind}_{d}", gen, (
            f"Extract the {kind.replace('_', ' ')} word from the sentence.",
            f"Find the token that is {kind.replace('_', ' ')} and copy it.",
            f"Which word is {kind.replace('_', ' ')}?",
        )


def replace_letter() -> Family:
    triples = [(a, b, d) for a, d in _common_letters() for b in string.ascii_lowercase if b != a]
    random.Random("replace_letter").shuffle(triples)
    for a, b, d in triples[:420]:
        def gen(r, a=a, b=b, d=d):
            ws = [w for w in DOMAINS[d] if a in w]
            w = r.choice(ws)
            ans = w.replace(a, b)
            return Example(w, ans, options(r, ans, [w.replace(b, a), w, ans[::-1]]))
        yield f"replace_{a}_with_{b}_{d}", gen, (
            f"Replace every '{a}' in the word with '{b}'.",
            f"Substitute the letter {a} by {b}.",
            f"Rewrite the word, changing {a} to {b}.",
        )


def letter_rules() -> Family:
    for c in string.ascii_lowercase:
        def gen_contains(r, c=c):
            w = r.choice(DOMAINS[r.choice(DOMAIN_NAMES)])
            a, opts = yes_no(r, c in w)
            return Example(w, a, opts)
        yield f"contains_{c}", gen_contains, (
            f"Does the word contain the letter '{c}'?", f"Answer yes if '{c}' occurs in the word.", f"Is there a '{c}' in it?")

        def gen_start(r, c=c):
            ws = _words(r, r.choice(DOMAIN_NAMES), 8)
            n = sum(w.startswith(c) for w in ws)
            return Example(" ".join(ws), str(n), num_options(r, n))
        yield f"count_starting_{c}", gen_start, (
            f"How many words start with '{c}'?", f"Count the words beginning with the letter {c}.", f"Number of words whose first letter is {c}?")


def sequences() -> Family:
    for step in range(1, 21):
        def gen(r, step=step):
            s = r.randint(0, 50)
            xs = [s + i * step for i in range(4)]
            return Example(str(xs), str(xs[-1] + step), num_options(r, xs[-1] + step))
        yield f"next_arith_step{step}", gen, ("Give the next term of the sequence.", "Continue the pattern by one number.", "What comes next?")
    for ratio in range(2, 6):
        def gen(r, ratio=ratio):
            xs = [r.randint(1, 5) * ratio**i for i in range(4)]
            return Example(str(xs), str(xs[-1] * ratio), num_options(r, xs[-1] * ratio))
        yield f"next_geom_ratio{ratio}", gen, ("Give the next term of the sequence.", "Continue the pattern by one number.", "What comes next?")


def word_shape() -> Family:
    for rule, d in itertools.product(("starts_vowel", "ends_vowel", "even_length", "repeat_2", "repeat_3"), DOMAIN_NAMES):
        def gen(r, rule=rule, d=d):
            w = r.choice(DOMAINS[d])
            if rule.startswith("repeat"):
                a = " ".join([w] * int(rule[-1]))
                return Example(w, a, options(r, a, [w, " ".join([w] * (int(rule[-1]) + 1))]))
            cond = {"starts_vowel": w[0] in VOWELS, "ends_vowel": w[-1] in VOWELS, "even_length": len(w) % 2 == 0}[rule]
            a, opts = yes_no(r, cond)
            return Example(w, a, opts)
        name = rule.replace("_", " ")
        yield f"shape_{rule}_{d}", gen, (
            f"Word check: {name}.", f"Apply the rule '{name}' to the word.", f"Answer for the word under the rule '{name}'.")


def concat() -> Family:
    seps = {"dash": "-", "underscore": "_", "plus": "+", "comma": ",", "and": " and ", "slash": "/", "dot": ".", "pipe": "|"}
    for (sid, sep), d in itertools.product(seps.items(), DOMAIN_NAMES):
        def gen(r, sep=sep, d=d):
            ws = _words(r, d, r.randint(2, 4))
            a = sep.join(ws)
            return Example(" ".join(ws), a, options(r, a, [" ".join(ws), sep.join(reversed(ws))]))
        yield f"join_{sid}_{d}", gen, (
            f"Join the words with '{sep}'.", f"Concatenate the words using the separator {sep!r}.", f"Combine the words, separated by {sep!r}.")


def number_theory() -> Family:
    import math
    for op, hi in itertools.product(("gcd", "lcm"), (12, 30, 100)):
        def gen(r, op=op, hi=hi):
            a, b = r.randint(1, hi), r.randint(1, hi)
            v = math.gcd(a, b) if op == "gcd" else a * b // math.gcd(a, b)
            return Example(f"{a} and {b}", str(v), num_options(r, v))
        yield f"{op}_upto_{hi}", gen, (
            f"Compute the {op} of the two numbers.", f"What is the {op.upper()}?", f"Find the {op} of the pair.")


FAMILIES = (caesar, divisible, count_letter, nth_word, list_stat, arithmetic, threshold, string_op, sort_list,
            category, filter_list, base_convert, digit_ops, compare_words, extract, replace_letter, letter_rules,
            sequences, word_shape, concat, number_theory)
