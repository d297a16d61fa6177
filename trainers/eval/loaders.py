"""Loaders for the four held-out benchmarks, reading the public releases' own file formats.

Each loader takes the benchmark's root directory and returns a `Benchmark`: the evaluated
examples per task (subject, subtask or language) and the few-shot material the prompts
need. Malformed input raises `UserError` naming the file (and line or row) and what was
expected, before any model runs.

Roots (see `benchmarks.benchmark_root`): a data directory may hold all four benchmarks as
`<dir>/{mmlu,bbh,tydiqa,mgsm}/...`, or be one benchmark's root itself.
- MMLU: `data/{dev,val,test}/{subject}_{split}.csv` (the `data/` level may be omitted);
  optional `cot-prompts/{subject}.txt` (BBH CoT-prompt format) with worked rationales.
- BBH: `bbh/{task}.json` and `cot-prompts/{task}.txt`.
- TyDiQA GoldP: every `*.json` under the root (SQuAD 1.1 layout) except `*train*` files.
- MGSM: `mgsm_{lang}.tsv`; optional `exemplars/mgsm_{lang}.tsv` (question, step-by-step answer).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from trainers.eval import benchmarks
from trainers.spec import UserError, did_you_mean

STANDINS = benchmarks.STANDINS
BBH_BASELINES = benchmarks.BBH_BASELINES

# TyDiQA ids start with the language's English name; tasks are named by ISO code. English
# is in the GoldP release but not among the paper's eight evaluated languages.
TYDIQA_LANGUAGES = {
    "arabic": "ar", "bengali": "bn", "finnish": "fi", "indonesian": "id", "korean": "ko",
    "russian": "ru", "swahili": "sw", "telugu": "te",
}
TYDIQA_EXCLUDED = {"english"}
MGSM_LANGUAGES = ("bn", "de", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
MGSM_EXCLUDED = {"en"}
MMLU_LETTERS = ("A", "B", "C", "D")
MMLU_SPLITS = benchmarks.MMLU_SPLITS


@dataclass(frozen=True)
class Example:
    """One evaluated item. `answers` holds every accepted gold answer (TyDiQA may have several)."""

    id: str
    task: str
    question: str
    answers: tuple[str, ...]
    choices: tuple[str, ...] = ()  # MMLU options A-D; TyDiQA-shaped: candidate spans of the passage, when the file lists them
    context: str = ""  # TyDiQA passage


@dataclass(frozen=True)
class Shot:
    """A few-shot exemplar: question text, the CoT answer text (rationale ending in
    "So the answer is X."; "" when only the final answer is known) and the final answer."""

    question: str
    rationale: str
    answer: str
    choices: tuple[str, ...] = ()
    context: str = ""


@dataclass(frozen=True)
class Benchmark:
    name: str
    shape: str  # mmlu | bbh | tydiqa | mgsm: how it is prompted and its answers read
    tasks: dict[str, tuple[Example, ...]]
    shots: dict[str, tuple[Shot, ...]] = field(default_factory=dict)  # per task
    cot_shots: dict[str, tuple[Shot, ...]] = field(default_factory=dict)  # per task, with rationales
    descriptions: dict[str, str] = field(default_factory=dict)  # BBH task descriptions
    num_shots: int = -1  # exemplars per prompt; -1 = the registry's (the paper's) number

    @property
    def k(self) -> int:
        """How many exemplars a prompt of this benchmark shows."""
        return benchmarks.get(self.name).shots if self.num_shots < 0 else self.num_shots

    def limited(self, max_examples: int) -> "Benchmark":
        """The first `max_examples` examples of each task (0 = all)."""
        if max_examples <= 0:
            return self
        return replace(self, tasks={t: ex[:max_examples] for t, ex in self.tasks.items()})

    def with_shots(self, shots: int) -> "Benchmark":
        """Prompts with `shots` exemplars (0 = zero-shot; -1 = the benchmark's own number)."""
        return replace(self, num_shots=shots)

    def by_id(self) -> dict[str, Example]:
        return {e.id: e for ex in self.tasks.values() for e in ex}


def load(benchmark: str, data_dir: str | Path = "", mmlu_split: str = "test") -> Benchmark:
    """Load a registered benchmark from its release-format files; `mmlu_split` is the split
    MMLU-shaped benchmarks evaluate (`dev` always supplies the 5 shots)."""
    info = benchmarks.get(benchmark)
    root = benchmarks.benchmark_root(benchmark, data_dir)
    if info.shape == "mmlu":
        return load_mmlu(root, mmlu_split, name=info.name)
    if info.shape == "bbh":
        return load_bbh(root, name=info.name)
    if info.shape == "tydiqa":
        return load_tydiqa(root, name=info.name)
    return load_mgsm(root, name=info.name)


# ---------------------------------------------------------------------------------- MMLU

def _mmlu_rows(path: Path) -> list[tuple[str, tuple[str, ...], str]]:
    rows = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            for row in reader:
                line = reader.line_num
                if len(row) != 6:
                    raise UserError(f"{path}:{line}: expected 6 CSV columns (question, A, B, C, D, answer), got {len(row)}")
                answer = row[5].strip()
                if answer not in MMLU_LETTERS:
                    raise UserError(f"{path}:{line}: answer {answer!r} is not one of A, B, C, D")
                rows.append((row[0], tuple(row[1:5]), answer))
    except (csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a UTF-8 CSV file: {e}") from None
    return rows


def load_mmlu(root: Path, split: str = "test", name: str = "mmlu") -> Benchmark:
    if split not in MMLU_SPLITS:
        raise UserError(f"eval.mmlu_split: {split!r} is not an MMLU split; allowed: {', '.join(MMLU_SPLITS)}")
    data = root / "data" if (root / "data").is_dir() else root
    if not (data / split).is_dir() or not (data / "dev").is_dir():
        raise UserError(f"MMLU: {data} needs the folders dev/ and {split}/ ({{subject}}_{{split}}.csv files)")
    tasks: dict[str, tuple[Example, ...]] = {}
    shots: dict[str, tuple[Shot, ...]] = {}
    cot_shots: dict[str, tuple[Shot, ...]] = {}
    suffix = f"_{split}.csv"
    for path in sorted((data / split).glob(f"*{suffix}")):
        subject = path.name[: -len(suffix)]
        dev = data / "dev" / f"{subject}_dev.csv"
        if not dev.is_file():
            raise UserError(f"MMLU: {dev} is missing (5-shot exemplars for subject {subject!r})")
        tasks[subject] = tuple(
            Example(id=f"{subject}/{split}/{i}", task=subject, question=q, answers=(a,), choices=c)
            for i, (q, c, a) in enumerate(_mmlu_rows(path)))
        shots[subject] = tuple(Shot(q, "", a, choices=c) for q, c, a in _mmlu_rows(dev))
        cot = root / "cot-prompts" / f"{subject}.txt"
        if cot.is_file():
            _, cot_shots[subject] = parse_cot_prompt(cot)
    if not tasks:
        raise UserError(f"MMLU: no {{subject}}{suffix} files in {data / split}")
    return Benchmark(name, "mmlu", tasks, shots, cot_shots)


# ----------------------------------------------------------------------------------- BBH

_ANSWER_IS = re.compile(r"the answer is\s*(.*)", re.IGNORECASE | re.DOTALL)


def parse_cot_prompt(path: Path) -> tuple[str, tuple[Shot, ...]]:
    """A BBH CoT prompt file -> (task description, exemplars).

    Layout: a canary line, a line `-----`, the description, then exemplars
    `Q: ...\\nA: Let's think step by step.\\n... So the answer is X.` separated by blank lines.
    """
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    try:
        sep = next(i for i, ln in enumerate(lines[:3]) if ln.strip() == "-----")
    except StopIteration:
        raise UserError(f"{path}:2: expected a line '-----' after the canary line") from None
    body = "\n".join(lines[sep + 1:]).strip("\n")
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=\n\n))Q: ", body)]
    if not starts:
        raise UserError(f"{path}: no exemplars (blocks starting with 'Q: ')")
    description = body[: starts[0]].strip()
    shots = []
    for a, b in zip(starts, starts[1:] + [len(body)]):
        block = body[a:b].strip("\n")
        line_no = sep + 2 + body[:a].count("\n")
        q, sep_a, ans = block.partition("\nA: ")
        if not sep_a:
            raise UserError(f"{path}:{line_no}: exemplar has no line starting with 'A: '")
        matches = list(_ANSWER_IS.finditer(ans))
        if not matches:
            raise UserError(f"{path}:{line_no}: exemplar answer has no 'the answer is X'")
        final = matches[-1].group(1).strip().rstrip(".").strip()
        shots.append(Shot(question=q[len("Q: "):], rationale=ans.strip(), answer=final))
    return description, tuple(shots)


def load_bbh(root: Path, name: str = "bbh") -> Benchmark:
    info = benchmarks.get(name)
    data, prompts = root / "bbh", root / "cot-prompts"
    if not data.is_dir() or not prompts.is_dir():
        raise UserError(f"BBH: {root} needs the folders bbh/ ({{task}}.json) and cot-prompts/ ({{task}}.txt)")
    tasks, cot_shots, descriptions = {}, {}, {}
    for path in sorted(data.glob("*.json")):
        task = path.stem
        if task not in info.baselines:  # a BBH-shaped benchmark has a baseline per subtask
            raise UserError(f"{path}: unknown {info.name} task {task!r}{did_you_mean(task, info.baselines)}")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        examples = obj.get("examples") if isinstance(obj, dict) else None
        if not isinstance(examples, list):
            raise UserError(f"{path}: expected an object with a list 'examples'")
        items = []
        for i, ex in enumerate(examples):
            if not (isinstance(ex, dict) and isinstance(ex.get("input"), str) and isinstance(ex.get("target"), str)):
                raise UserError(f"{path}: examples[{i}] needs string fields 'input' and 'target'")
            items.append(Example(id=f"{task}/{i}", task=task, question=ex["input"], answers=(ex["target"],)))
        cot = prompts / f"{task}.txt"
        if not cot.is_file():
            raise UserError(f"BBH: {cot} is missing (CoT prompt for task {task!r})")
        descriptions[task], cot_shots[task] = parse_cot_prompt(cot)
        tasks[task] = tuple(items)
    if not tasks:
        raise UserError(f"BBH: no {{task}}.json files in {data}")
    return Benchmark(name, "bbh", tasks, cot_shots, cot_shots, descriptions)


# -------------------------------------------------------------------------------- TyDiQA

def load_tydiqa(root: Path, name: str = "tydiqa") -> Benchmark:
    # The GoldP release ships its training split next to dev; only dev is held out.
    files = sorted(p for p in root.rglob("*.json") if "train" not in p.name)
    if not files:
        raise UserError(f"TyDiQA: no SQuAD-format *.json files under {root}")
    by_lang: dict[str, list[Example]] = {}
    seen: dict[str, Path] = {}
    for path in files:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        try:
            for article in obj["data"]:
                for para in article["paragraphs"]:
                    context = para["context"]
                    for qa in para["qas"]:
                        qid = qa["id"]
                        if qid in seen:
                            raise UserError(f"{path}: question id {qid!r} also appears in {seen[qid]}")
                        seen[qid] = path
                        prefix = qid.split("-", 1)[0]
                        if prefix in TYDIQA_EXCLUDED:
                            continue
                        answers = tuple(a["text"] for a in qa["answers"])
                        if not answers:
                            raise UserError(f"{path}: question {qid!r} has no answers")
                        lang = TYDIQA_LANGUAGES.get(prefix, prefix)
                        by_lang.setdefault(lang, []).append(
                            Example(id=qid, task=lang, question=qa["question"], answers=answers, context=context,
                                    choices=tuple(qa.get("options", ()))))
        except (KeyError, TypeError) as e:
            raise UserError(f"{path}: not SQuAD 1.1 JSON (data[].paragraphs[].context/qas[].id/question/answers[].text): missing {e}") from None
    if not by_lang:
        raise UserError(f"TyDiQA: no evaluated questions under {root} (English is excluded)")
    tasks = {lang: tuple(ex) for lang, ex in sorted(by_lang.items())}
    # 1-shot: the exemplar is drawn from the same language's questions (prompts.py skips
    # the evaluated one), so shots and tasks hold the same items.
    shots = {lang: tuple(Shot(e.question, "", e.answers[0], context=e.context) for e in ex) for lang, ex in tasks.items()}
    return Benchmark(name, "tydiqa", tasks, shots)


# ---------------------------------------------------------------------------------- MGSM

def _tsv_rows(path: Path) -> list[tuple[int, str, str]]:
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 2:
            raise UserError(f"{path}:{line_no}: expected 2 tab-separated columns (question, answer), got {len(cols)}")
        rows.append((line_no, cols[0], cols[1].strip()))
    return rows


_MGSM_ANSWER = re.compile(r"^[-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$")


def load_mgsm(root: Path, name: str = "mgsm") -> Benchmark:
    tasks, shots, cot_shots = {}, {}, {}
    for path in sorted(root.glob("mgsm_*.tsv")):
        lang = path.stem[len("mgsm_"):]
        if lang in MGSM_EXCLUDED:
            continue
        items = []
        for i, (line_no, q, a) in enumerate(_tsv_rows(path)):
            if not _MGSM_ANSWER.match(a):
                raise UserError(f"{path}:{line_no}: answer {a!r} is not a number (like 42 or 2,125)")
            items.append(Example(id=f"{lang}/{i}", task=lang, question=q, answers=(a,)))
        tasks[lang] = tuple(items)
        shots[lang] = tuple(Shot(e.question, "", e.answers[0]) for e in items)
        ex_path = root / "exemplars" / f"mgsm_{lang}.tsv"
        if ex_path.is_file():
            parsed = []
            for line_no, q, rationale in _tsv_rows(ex_path):
                m = list(_ANSWER_IS.finditer(rationale))
                if not m:
                    raise UserError(f"{ex_path}:{line_no}: step-by-step answer has no 'The answer is N'")
                parsed.append(Shot(q, rationale, m[-1].group(1).strip().rstrip(".")))
            cot_shots[lang] = tuple(parsed)
    if not tasks:
        raise UserError(f"MGSM: no mgsm_{{lang}}.tsv files in {root}")
    return Benchmark(name, "mgsm", tasks, shots, cot_shots)
