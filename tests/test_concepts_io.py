"""Concept files: read_concept_file (txt / CSV), its errors, and the write/read round trip."""

from __future__ import annotations

import hashlib
import logging

import pytest

from clipcbm.pipeline.concepts.io import (
    ConceptFileError,
    ConceptSet,
    output_paths,
    read_class_file,
    read_concept_file,
    read_raw_concepts,
    write_concept_set,
    write_dropped,
)


def test_txt_round_trip_and_sha256(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("four legs\nfur\nwhiskers\n", encoding="utf-8")
    cs = read_concept_file(p)
    assert cs.concepts == ["four legs", "fur", "whiskers"]
    assert cs.classes_of == [[], [], []]
    assert cs.sha256 == hashlib.sha256(b"four legs\nfur\nwhiskers").hexdigest()


def test_written_csv_reads_back_with_classes_and_sources(tmp_path):
    kept = ConceptSet(
        ["tail", "long, thin legs", "whiskers"],
        [["cat", "dog"], ["bird"], []],
        [["conceptnet:HasA"], ["llm:important", "llm:around"], []],
    )
    paths = write_concept_set(tmp_path / "set.csv", kept)
    assert paths == {"csv": tmp_path / "set.csv", "txt": tmp_path / "set.txt"}
    assert (tmp_path / "set.csv").read_text().splitlines() == [
        "concept,class,source",
        "tail,cat|dog,conceptnet:HasA",
        '"long, thin legs",bird,llm:important|llm:around',
        "whiskers,,",
    ]
    back = read_concept_file(tmp_path / "set.csv")
    assert (back.concepts, back.classes_of, back.sources_of) == (
        kept.concepts,
        kept.classes_of,
        kept.sources_of,
    )
    txt = read_concept_file(tmp_path / "set.txt")
    assert txt.concepts == kept.concepts and txt.sha256 == back.sha256 == kept.sha256


def test_output_paths_and_dropped_file(tmp_path):
    paths = output_paths(tmp_path / "cifar10.csv")
    assert {k: p.name for k, p in paths.items()} == {
        "csv": "cifar10.csv",
        "txt": "cifar10.txt",
        "dropped": "cifar10.dropped.csv",
        "meta": "cifar10.meta.json",
    }
    write_dropped(paths["dropped"], [("puppy", "class_sim", 0.9, "dog", ["dog"], ["file"])])
    assert paths["dropped"].read_text().splitlines() == [
        "concept,rule,value,detail,class,source",
        "puppy,class_sim,0.9,dog,dog,file",
    ]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"fur\ntail\nfur\n", r"line 3 repeats 'fur' from line 1"),
        (b"fur\n\ntail\n", r"line 2 is empty"),
        (b"fur\n tail\n", r"line 2 \(' tail'\) has leading or trailing whitespace"),
        (b"fur\ncaf\xe9\n", r"line 2 is not valid UTF-8 \(byte 0xe9"),
        (b"", r"no concepts"),
    ],
)
def test_txt_errors_name_the_line(tmp_path, content, match):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(ConceptFileError, match=match):
        read_concept_file(p)


def test_csv_errors(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("name,class\nfur,cat\n")
    with pytest.raises(ConceptFileError, match="needs a header row with a 'concept' column"):
        read_concept_file(p)
    p.write_text("concept,class,source\nfur,cat,x\ntail,dog,x\nfur,dog,x\n")
    with pytest.raises(ConceptFileError, match="line 4 repeats 'fur' from line 2"):
        read_concept_file(p)
    p.write_text("concept,class,source\nfur,cat,x\n\ntail,dog,x\n")
    with pytest.raises(ConceptFileError, match="line 3 is empty"):
        read_concept_file(p)
    p.write_text("concept,class\nlong, thin legs,bird\n")
    with pytest.raises(ConceptFileError, match="line 2 has 3 cells but the header has 2"):
        read_concept_file(p)


def test_too_many_entries(tmp_path):
    p = tmp_path / "big.txt"
    p.write_text("".join(f"c{i}\n" for i in range(50_001)))
    with pytest.raises(ConceptFileError, match="50,001 concepts, more than the 50,000 allowed"):
        read_concept_file(p)


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(ConceptFileError, match=r"unknown concept file type '.json'"):
        read_concept_file(tmp_path / "c.json")
    with pytest.raises(ConceptFileError, match="no such file"):
        read_concept_file(tmp_path / "missing.txt")


def test_trailing_blank_lines_warn_and_crlf_bom_are_accepted(tmp_path, caplog):
    p = tmp_path / "c.txt"
    p.write_bytes(b"\xef\xbb\xbffur\r\ntail\r\n\r\n\r\n")
    with caplog.at_level(logging.WARNING):
        cs = read_concept_file(p)
    assert cs.concepts == ["fur", "tail"]
    assert "ignored 2 blank line(s) at the end" in caplog.text


def test_class_file(tmp_path):
    p = tmp_path / "classes.txt"
    p.write_text("dog\n\n cat \n")
    assert read_class_file(p) == ["dog", "cat"]
    p.write_text("dog\ncat\ndog\n")
    with pytest.raises(ConceptFileError, match="line 3 repeats class 'dog'"):
        read_class_file(p)
    p.write_text("dog|puppy\n")
    with pytest.raises(ConceptFileError, match=r"contains '\|'"):
        read_class_file(p)


def test_raw_concepts_txt_and_csv(tmp_path):
    t = tmp_path / "raw.txt"
    t.write_text("A Tail\n\nfur\n")
    assert read_raw_concepts(t) == [("A Tail", ""), ("", ""), ("fur", "")]
    c = tmp_path / "raw.csv"
    c.write_text("concept,class\ntail,cat|dog\nfur,\n")
    assert read_raw_concepts(c) == [("tail", "cat"), ("tail", "dog"), ("fur", "")]
    c.write_text("text\nfur\n")
    with pytest.raises(ConceptFileError, match="'concept' column"):
        read_raw_concepts(c)


def test_run_with_nothing_left_raises_and_still_writes_the_dropped_list(tmp_path):
    import numpy as np

    from clipcbm.pipeline.concepts import ConceptsConfig, ConceptsError, run

    (tmp_path / "classes.txt").write_text("dog\n")
    (tmp_path / "raw.txt").write_text("a dog\nThe Dog\n")
    cfg = ConceptsConfig(
        source="file",
        classes_file=tmp_path / "classes.txt",
        input_path=tmp_path / "raw.txt",
        out=tmp_path / "c.csv",
        progress=False,
    )
    with pytest.raises(ConceptsError, match=r"no concept survived the filter \(2 candidates\)"):
        run(cfg, embed=lambda texts: np.ones((len(texts), 4), np.float32))
    rows = (tmp_path / "c.dropped.csv").read_text().splitlines()
    assert rows[1:] == [
        "The Dog,duplicate,dog,same as 'dog' after normalisation,,file",
        "dog,class_sim,1.0,dog,,file",
    ]
    assert not (tmp_path / "c.csv").exists()
