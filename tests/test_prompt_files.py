"""Prompt files are read by their content: JSON in a text file, JSON lines in a .json file, a CSV's 'prompt' column
(never its header), and clear errors for empty files, unknown formats and text that only looks like prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leapalign.data import load_prompt_set


def _write(tmp_path: Path, name: str, text: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def test_a_json_list_is_read_as_prompts_whatever_the_suffix(tmp_path: Path) -> None:
    pretty = json.dumps([{"prompt": "a cat", "tag": "t"}, "a dog"], indent=2)
    assert load_prompt_set(_write(tmp_path, "p.json", pretty)).prompts == ["a cat", "a dog"]
    assert load_prompt_set(_write(tmp_path, "p.txt", pretty)).entries == [
        {"prompt": "a cat", "tag": "t"},
        {"prompt": "a dog"},
    ]
    assert load_prompt_set(_write(tmp_path, "p.jsonl", pretty)).prompts == ["a cat", "a dog"]


def test_json_lines_are_read_as_prompts_whatever_the_suffix(tmp_path: Path) -> None:
    lines = '{"prompt": "a cat", "tag": "x"}\n\n{"prompt": "a dog"}\n'
    for name in ("m.jsonl", "m.json", "m.txt"):
        assert load_prompt_set(_write(tmp_path, name, lines)).prompts == ["a cat", "a dog"], name
    with pytest.raises(ValueError, match=r"m2\.json:2: not JSON"):
        load_prompt_set(_write(tmp_path, "m2.json", '{"prompt": "a"}\n{"prompt": \n'))


def test_broken_json_in_a_text_file_is_an_error_not_prompts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"opens JSON, but the file is not valid JSON"):
        load_prompt_set(_write(tmp_path, "p.txt", '[\n  "a cat",\n  "a dog"\n'))
    # a prompt that merely starts with a bracket stays a prompt
    assert load_prompt_set(_write(tmp_path, "q.txt", "[cinematic] a cat\n")).prompts == ["[cinematic] a cat"]


def test_a_csv_is_read_by_its_prompt_column_never_its_header(tmp_path: Path) -> None:
    text = '\ufeffid,Prompt,tag\n1,"a cat, sleeping",animal\n2,a dog,\n3,  ,x\n'  # BOM, quoted comma, blank prompt
    entries = load_prompt_set(_write(tmp_path, "p.csv", text)).entries
    assert entries == [{"prompt": "a cat, sleeping", "id": "1", "tag": "animal"}, {"prompt": "a dog", "id": "2"}]
    tsv = load_prompt_set(_write(tmp_path, "p.tsv", "prompt\tseed\na red circle\t3\n"))
    assert tsv.entries == [{"prompt": "a red circle", "seed": "3"}]
    with pytest.raises(ValueError, match=r"needs a header row with a 'prompt' column, but its header is \['text'"):
        load_prompt_set(_write(tmp_path, "q.csv", "text,tag\na cat,x\n"))


def test_a_csv_header_in_a_text_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"looks like a CSV header.*name the file \.csv"):
        load_prompt_set(_write(tmp_path, "p.txt", "prompt,tag\na cat,x\n"))
    with pytest.raises(ValueError, match=r"looks like a CSV header"):
        load_prompt_set(_write(tmp_path, "q.txt", "prompt\na cat\n"))
    # prompts that merely begin with such a word are prompts
    prompts = load_prompt_set(_write(tmp_path, "r.txt", "text, bold and bright\na cat\n")).prompts
    assert prompts == ["text, bold and bright", "a cat"]


@pytest.mark.parametrize(
    ("name", "text"),
    [("e.txt", ""), ("e2.txt", "\n  \n"), ("c.txt", "# only a comment\n"), ("e.json", "[]"), ("e.csv", "prompt\n")],
)
def test_empty_prompt_files_are_errors(tmp_path: Path, name: str, text: str) -> None:
    with pytest.raises(ValueError, match=r"(file|prompt set) is empty"):
        load_prompt_set(_write(tmp_path, name, text))


def test_unknown_formats_and_unreadable_files_name_the_accepted_formats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unsupported prompt file type '\.parquet'.*\.jsonl.*\.csv"):
        load_prompt_set(_write(tmp_path, "p.parquet", "x"))
    with pytest.raises(ValueError, match=r"not UTF-8 text.*\.txt"):
        load_prompt_set(_write(tmp_path, "b.txt", b"\xff\xfe\x00\x81binary"))
    with pytest.raises(ValueError, match=r"holds a JSON int, not a list"):
        load_prompt_set(_write(tmp_path, "n.json", "3"))
    with pytest.raises(ValueError, match=r"is a folder"):
        load_prompt_set(str(tmp_path))
