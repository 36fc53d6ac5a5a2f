"""Tests for utils/prompt_file.py: the curated prompt files, prompt texts, and every bad-input case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datasets.prompt_file import (
    HierarchicalPrompts,
    check_token_lengths,
    clip_token_counter,
    content_warnings,
    load_prompt_file,
    validate_prompt_file,
)
from datasets.tasks import PROJECT_ROOT, get_task
from tests.paths import GOLDEN, missing
from utils.errors import InputError

CURATED = PROJECT_ROOT / "text_prompt" / "HiVE_MIL" / "curated"
TCGA_TASKS = ("tcga_brca", "tcga_nsclc", "tcga_rcc")


def make_prompt_dict(classes=("A", "B"), n_coarse=4, n_fine_per_coarse=3) -> dict:
    """A valid prompt dict: coarse terms 'A c0'.., fine terms 'A f0.1'.. (fine group j refines coarse j)."""
    data = {}
    for cls in classes:
        body = {f"{cls} c{j}": f"Coarse feature {j} of class {cls}." for j in range(n_coarse)}
        for j in range(n_coarse):
            for k in range(n_fine_per_coarse):
                body[f"{cls} f{j}.{k}"] = f"Fine feature {k} refining coarse {j} of class {cls}."
        data[cls] = body
    return data


def write(tmp_path: Path, text: str, name: str = "prompts.json") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def count_clip():
    return clip_token_counter()


# ----------------------------------------------------------------------------- curated files


@pytest.mark.parametrize("task", TCGA_TASKS)
def test_curated_files_validate_against_builtin_tasks(task, count_clip):
    classes = get_task(task).class_names
    prompts, warnings = validate_prompt_file(CURATED / f"{task}.json", classes, count_tokens=count_clip)
    assert warnings == []
    assert prompts.classes == classes
    # Class order in the file is the task's order (the model reads classes in file order).
    assert tuple(json.loads((CURATED / f"{task}.json").read_text(encoding="utf-8"))) == classes
    for cls in classes:
        assert len(prompts.coarse[cls]) == 4 and len(prompts.fine[cls]) == 12
        for term, explanation in prompts.entries(cls):
            assert term == term.strip() and 1 <= len(term.split()) <= 5
            assert explanation.endswith(".") and explanation.count(". ") == 0  # one sentence
        # Full prompts with n_ctx=16 fit CLIP's 77-token context with room to spare (<= 58 + 16 + 2).
        lengths = [count_clip(text) for text in prompts.prompt_texts(cls, 16)]
        assert max(lengths) <= 77  # not truncated
        assert all(n - 18 <= 45 for n in lengths)  # term + explanation within 45 tokens


def test_curated_files_fit_conch_context():
    pytest.importorskip("conch", reason="conch-fork not installed")
    from models.towers.tokenizers import ConchTokenizer

    count = ConchTokenizer().count_tokens
    for task in TCGA_TASKS:
        prompts = load_prompt_file(CURATED / f"{task}.json", get_task(task).class_names)
        assert check_token_lengths(prompts, count, 127, 16) == []


def test_clip_counter_matches_open_clip_tokenizer(count_clip):
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    assert count_clip("X X hello world") == 6  # start, X, X, hello, world, end
    text = "X X X Keratin pearls : Concentric lamellae of keratin."
    assert count_clip(text) == int((tokenizer([text])[0] != 0).sum())


# ----------------------------------------------------------------------------- structure and texts


def test_entries_and_prompt_texts_exact(tmp_path):
    path = write(tmp_path, json.dumps(make_prompt_dict()))
    prompts = load_prompt_file(path, ["B", "A"])
    assert isinstance(prompts, HierarchicalPrompts)
    assert prompts.classes == ("B", "A")  # task order wins over file order
    assert prompts.coarse["A"][1] == ("A c1", "Coarse feature 1 of class A.")
    assert prompts.fine["A"][3] == ("A f1.0", "Fine feature 0 refining coarse 1 of class A.")
    assert [prompts.fine_parent(i) for i in range(12)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    entries = prompts.entries("B")
    assert len(entries) == 16 and entries[0] == ("B c0", "Coarse feature 0 of class B.")
    assert entries[4] == ("B f0.0", "Fine feature 0 refining coarse 0 of class B.")
    texts = prompts.prompt_texts("A", 3)
    assert texts[0] == "X X X A c0 : Coarse feature 0 of class A."
    assert texts[15] == "X X X A f3.2 : Fine feature 2 refining coarse 3 of class A."
    assert prompts.prompt_texts("A", 0)[0] == "A c0 : Coarse feature 0 of class A."
    assert prompts.prompt_texts("A", 2, ctx_token="*")[0] == "* * A c0 : Coarse feature 0 of class A."
    assert prompts.to_json_dict() == {c: make_prompt_dict()[c] for c in ("B", "A")}
    with pytest.raises(KeyError):
        prompts.entries("C")


def test_other_hierarchy_sizes(tmp_path):
    path = write(tmp_path, json.dumps(make_prompt_dict(("A",), n_coarse=2, n_fine_per_coarse=2)))
    prompts = load_prompt_file(path, n_coarse=2, n_fine_per_coarse=2)
    assert prompts.n_per_class == 6 and [t for t, _ in prompts.fine["A"]] == [
        "A f0.0",
        "A f0.1",
        "A f1.0",
        "A f1.1",
    ]


def test_prompt_texts_match_golden_token_ids():
    case = GOLDEN / "case_two_n3_s2.pt"
    if absent := missing(case, GOLDEN / "prompts_2class.json"):
        pytest.skip(absent)
    import open_clip
    import torch

    golden = torch.load(case, weights_only=False)
    prompts = load_prompt_file(GOLDEN / "prompts_2class.json", golden["classes"])
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    for cls in golden["classes"]:
        ids = tokenizer(prompts.prompt_texts(cls, 16))
        assert torch.equal(ids, golden["tokenized_prompts"][cls].long())


# ----------------------------------------------------------------------------- bad input


def _bad_cases() -> dict[str, tuple[str, list[str]]]:
    good = make_prompt_dict()
    short = make_prompt_dict()
    short["B"].pop("B f3.2")
    empty_term = json.dumps(make_prompt_dict()).replace('"A c2"', '"  "')
    empty_expl = json.dumps(make_prompt_dict()).replace('"Coarse feature 2 of class B."', '" "')
    nested = make_prompt_dict()
    nested["A"]["A c1"] = {"x": "y"}
    dup_term = json.dumps(good, indent=1).replace('"A f2.1"', '"A c0"')
    dup_class = f'{{"A": {json.dumps(good["A"])}, "A": {json.dumps(good["B"])}}}'
    extra = make_prompt_dict(("A", "B", "C"))
    return {
        "invalid json": ('{"A": {"x": "y",}', ["not valid JSON"]),
        "list": ("[1, 2]", ["expected a JSON object"]),
        "empty object": ("{}", ["expected a JSON object"]),
        "class not object": ('{"A": ["x", "y"], "B": {}}', ["class 'A'", "not an object"]),
        "wrong count": (json.dumps(short), ["class 'B'", "has 15 entries", "expected 4 + 4x3 = 16"]),
        "empty term": (empty_term, ["class 'A' entry 3", "empty term"]),
        "empty explanation": (empty_expl, ["class 'B' entry 3", "empty explanation"]),
        "explanation not string": (json.dumps(nested), ["class 'A' entry 2", "must be a string, got object"]),
        "duplicate term": (dup_term, ["class 'A'", "term 'A c0' twice", "entries 1 and 12"]),
        "duplicate class": (dup_class, ["class 'A' appears twice"]),
        "unexpected class": (json.dumps(extra), ["do not match", "unexpected 'C'"]),
        "missing class": (json.dumps({"A": good["A"]}), ["do not match", "missing 'B'"]),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_one_clear_error_and_file_untouched(tmp_path, case):
    text, expected = _bad_cases()[case]
    path = write(tmp_path, text, name=f"bad_{case.replace(' ', '_')}.json")
    before = path.read_bytes()
    with pytest.raises(InputError) as info:
        load_prompt_file(path, ["A", "B"])
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    for part in expected:
        assert part in message, (part, message)
    assert path.read_bytes() == before


def test_missing_and_unreadable_and_non_utf8(tmp_path):
    with pytest.raises(InputError, match="prompt file not found"):
        load_prompt_file(tmp_path / "nope.json")
    with pytest.raises(InputError, match="cannot read prompt file"):
        load_prompt_file(tmp_path)  # a folder
    path = tmp_path / "latin1.json"
    path.write_bytes('{"A": {"caf\xe9": "x"}}'.encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        load_prompt_file(path)
    assert path.read_bytes() == '{"A": {"caf\xe9": "x"}}'.encode("latin-1")


def test_class_names_case_sensitive(tmp_path):
    path = write(tmp_path, json.dumps(make_prompt_dict(("IDC", "ILC"))))
    with pytest.raises(InputError, match="missing 'Idc'; unexpected 'IDC'"):
        load_prompt_file(path, ["Idc", "ILC"])


# ----------------------------------------------------------------------------- warnings


def test_content_warnings(tmp_path):
    data = make_prompt_dict()
    data["B"] = {("A c0" if t == "B c0" else t): e for t, e in data["B"].items()}  # term shared with A
    data["B"]["B f1.1"] = data["A"]["A c3"]  # explanation copied from A
    data["A"] = {
        ("a F0.1" if t == "A f0.2" else t): e for t, e in data["A"].items()
    }  # case-only dup of 'A f0.1'
    path = write(tmp_path, json.dumps(data))
    prompts = load_prompt_file(path)
    warnings = content_warnings(prompts)
    assert len(warnings) == 3, warnings
    assert "class 'A' has 2 terms that differ only in case" in warnings[0]
    assert "class 'B' term 'B f1.1' repeats the explanation of class 'A' term 'A c3'" in warnings[1]
    assert "term 'a c0' is used by several classes (A, B)" in warnings[2]
    assert (
        content_warnings(load_prompt_file(write(tmp_path, json.dumps(make_prompt_dict()), "ok.json"))) == []
    )


def test_check_token_lengths_with_word_counter(tmp_path):
    data = make_prompt_dict(("A",))
    data["A"]["A f2.0"] = "one two three four five six seven eight nine ten."
    prompts = load_prompt_file(write(tmp_path, json.dumps(data)))

    def count(text: str) -> int:  # words + start and end
        return len(text.split()) + 2

    # 'X X A f2.0 : one ... ten.' = 2 + 2 + 1 + 10 words + 2 = 17; others: 'Fine feature 0 refining coarse 2 of class A.'
    # = 2 + 2 + 1 + 9 + 2 = 16; coarse 'Coarse feature 0 of class A.' = 2 + 2 + 1 + 6 + 2 = 13.
    assert check_token_lengths(prompts, count, 17, n_ctx=2) == []
    warnings = check_token_lengths(prompts, count, 16, n_ctx=2, label="words")
    assert len(warnings) == 1
    assert (
        warnings[0].startswith("[words] ")
        and "term 'A f2.0' needs 17 tokens > context length 16" in warnings[0]
    )
    assert len(check_token_lengths(prompts, count, 15, n_ctx=2)) == 12  # all fine entries (16, 17)
    _, warnings = validate_prompt_file(prompts.path, ["A"], count_tokens=count, context_length=16, n_ctx=2)
    assert len(warnings) == 1


def test_validate_default_counter_flags_long_prompt(tmp_path, count_clip):
    data = make_prompt_dict()
    data["B"]["B c1"] = " ".join(["carcinoma"] * 70) + "."
    path = write(tmp_path, json.dumps(data))
    before = path.read_bytes()
    _, warnings = validate_prompt_file(path, ["A", "B"])
    assert (
        len(warnings) == 1 and "class 'B' term 'B c1'" in warnings[0] and "context length 77" in warnings[0]
    )
    assert f"needs {count_clip(' '.join(['X'] * 16) + ' B c1 : ' + data['B']['B c1'])} tokens" in warnings[0]
    assert path.read_bytes() == before
