"""Run files and the official score: writer, validator and evaluator on hand-computed examples."""

import json
import logging
import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from predict.evaluate import (
    Truth,
    TruthError,
    chance_map,
    main,
    named_as_in_run_file,
    read_truth,
    score,
)
from predict.runfile import (
    MAX_RANK,
    RunEntry,
    RunFileError,
    RunFileWriter,
    SoundscapeWriter,
    read_run_file,
)

CLASSES = ["aaaaaa", "bbbbbb", "cccccc", "dddddd"]


def write_run(path, rows: dict[str, list[float]], top_k=MAX_RANK, classes=CLASSES):
    with RunFileWriter(path, classes, top_k) as run:
        for media_id, probs in rows.items():
            run.write(media_id, np.array(probs))
    return path


def test_writer_ranks_by_falling_probability_and_keeps_top_k(tmp_path):
    path = write_run(tmp_path / "run.csv", {"7": [0.1, 0.6, 0.05, 0.25]}, top_k=3)
    assert path.read_text().splitlines() == [
        "7;bbbbbb;0.6;1",
        "7;dddddd;0.25;2",
        "7;aaaaaa;0.1;3",
    ]
    entries = read_run_file(path)
    assert [(e.class_id, e.rank) for e in entries] == [("bbbbbb", 1), ("dddddd", 2), ("aaaaaa", 3)]


def test_writer_refuses_a_second_row_for_one_recording_and_leaves_no_file(tmp_path):
    path = tmp_path / "run.csv"
    with pytest.raises(ValueError, match="written twice"), RunFileWriter(path, CLASSES) as run:
        run.write("1", np.full(4, 0.25))
        run.write("1", np.full(4, 0.25))
    assert list(tmp_path.iterdir()) == []  # atomic: no half file, no temporary left


def test_writer_rejects_top_k_over_the_official_limit(tmp_path):
    with pytest.raises(ValueError, match="top_k"):
        RunFileWriter(tmp_path / "run.csv", CLASSES, top_k=101)


@pytest.mark.parametrize(
    "seconds, last_span",
    [
        (7.5, "00:00:05-00:00:08"),
        (10.6, "00:00:05-00:00:11"),  # a last window that joined a short remainder spans it
    ],
)
def test_soundscape_writer_names_each_5s_window_the_last_to_the_end(tmp_path, seconds, last_span):
    path = tmp_path / "soundscape.csv"
    with SoundscapeWriter(path, CLASSES, top_k=1) as run:
        run.write("S1", np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]]), seconds)
    assert path.read_text().splitlines() == [
        "S1;00:00:00-00:00:05;aaaaaa;0.7",
        f"S1;{last_span};dddddd;0.7",
    ]


def test_a_soundscape_window_of_a_clip_under_half_a_second_lasts_a_second(tmp_path):
    """Windows are written in whole seconds: a 0.4 s click is 00:00:00-00:00:01, not empty."""
    path = tmp_path / "soundscape.csv"
    with SoundscapeWriter(path, CLASSES, top_k=1) as run:
        run.write("S1", np.array([[0.7, 0.1, 0.1, 0.1]]), 0.4)
    assert path.read_text().splitlines() == ["S1;00:00:00-00:00:01;aaaaaa;0.7"]


@pytest.mark.parametrize(
    "lines, message",
    [
        (["1;aaaaaa;0.5"], "line 1: 3 fields, expected 4"),
        (["1;aaaaaa;0.5;1", "1;bbbbbb;0.4;3"], "line 2: rank 3 for MediaId 1, expected 2"),
        (["1;aaaaaa;0.5;2"], "line 1: rank 2 for MediaId 1, expected 1"),
        (["1;aaaaaa;1.5;1"], "line 1: probability 1.5 is outside"),
        (["1;aaaaaa;-0.1;1"], "line 1: probability -0.1 is outside"),
        (["1;aaaaaa;nan;1"], "line 1: probability 'nan' is not a number"),
        (["1;aaaaaa;0.0_5;1"], "line 1: probability '0.0_5' is not a number"),
        (["1;aaaaaa;0.5;\u0661"], "line 1: rank '\u0661' is not an integer"),  # Arabic-Indic 1
        (["1;aaaaaa;high;1"], "line 1: probability 'high' is not a number"),
        (["1;aaaaaa;0.5;first"], "line 1: rank 'first' is not an integer"),
        (["1;aaaaaa;0.5;1", "2;aaaaaa;0.5;1", "1;aaaaaa;0.4;2"], "line 3: duplicate pair"),
        ([";aaaaaa;0.5;1"], "line 1: empty MediaId"),
        ([f"1;c{rank};0.001;{rank}" for rank in range(1, 102)], "line 101: rank 101 .* over"),
        ([], "empty run file"),
    ],
)
def test_validator_names_the_first_bad_line(tmp_path, lines, message):
    path = tmp_path / "run.csv"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(RunFileError, match=message) as error:
        read_run_file(path)
    assert str(path) in str(error.value)


def test_validator_accepts_interleaved_recordings_and_blank_lines(tmp_path):
    path = tmp_path / "run.csv"
    path.write_text("1;aaaaaa;0.5;1\n2;bbbbbb;0.9;1\n\n1;bbbbbb;0.3;2\n")
    assert len(read_run_file(path)) == 3


def truth_of(rows: dict[str, tuple[str, list[str]]]) -> Truth:
    return Truth({m: fg for m, (fg, _) in rows.items()}, {m: bg for m, (_, bg) in rows.items()})


def test_score_matches_hand_computed_average_precision(tmp_path):
    # Recording 1: foreground ranked 2nd -> AP 1/2; with background bbbbbb ranked 1st -> AP 1.
    # Recording 2: foreground 1st -> AP 1; background dddddd not returned (top 3) -> 0, so
    #   with background AP = (1 + 0) / 2.
    run = write_run(
        tmp_path / "run.csv",
        {
            "1": [0.3, 0.4, 0.2, 0.1],
            "2": [0.1, 0.6, 0.2, 0.1],
        },
        top_k=3,
    )
    truth = truth_of({"1": ("aaaaaa", ["bbbbbb"]), "2": ("bbbbbb", ["dddddd"])})
    results = score(read_run_file(run), truth)
    assert results["map_foreground"] == pytest.approx((0.5 + 1.0) / 2)
    assert results["map_with_background"] == pytest.approx((1.0 + 0.5) / 2)
    assert results["top1_accuracy"] == pytest.approx(0.5)


def test_relevant_species_outside_the_top_100_scores_zero(tmp_path):
    classes = [f"c{index:03d}" for index in range(150)]
    probs = np.linspace(1.0, 0.01, 150)
    probs /= probs.sum()  # c000 ranks first, c120 ranks 121st: not in the run file
    run = write_run(tmp_path / "run.csv", {"1": probs, "2": probs}, classes=classes)
    truth = truth_of({"1": ("c120", []), "2": ("c000", ["c120"])})
    results = score(read_run_file(run), truth)
    assert results["map_foreground"] == pytest.approx((0.0 + 1.0) / 2)
    assert results["map_with_background"] == pytest.approx((0.0 + (1.0 + 0.0) / 2) / 2)


def test_recording_missing_from_the_run_file_scores_zero_and_is_counted(tmp_path):
    run = write_run(tmp_path / "run.csv", {"1": [0.7, 0.1, 0.1, 0.1]})
    truth = truth_of({"1": ("aaaaaa", []), "2": ("aaaaaa", [])})
    results = score(read_run_file(run), truth)
    assert results["map_foreground"] == pytest.approx(0.5)
    assert results["top1_accuracy"] == pytest.approx(0.5)
    assert results["missing_from_run"] == ["2"]


def test_score_equals_sklearn_on_full_rankings(tmp_path):
    rng = np.random.default_rng(0)
    classes = [f"s{index:02d}" for index in range(12)]
    probs = rng.dirichlet(np.ones(12), size=40)
    relevant = np.zeros((40, 12), dtype=bool)
    relevant[np.arange(40), rng.integers(0, 12, 40)] = True
    relevant |= rng.random((40, 12)) < 0.1  # background species
    media_ids = [str(index) for index in range(40)]
    run = write_run(tmp_path / "run.csv", dict(zip(media_ids, probs, strict=True)), classes=classes)
    foreground = relevant.argmax(axis=1)
    truth = Truth(
        {m: classes[f] for m, f in zip(media_ids, foreground, strict=True)},
        {
            m: [classes[c] for c in np.flatnonzero(row) if c != f]
            for m, f, row in zip(media_ids, foreground, relevant, strict=True)
        },
    )
    results = score(read_run_file(run), truth)
    # the writer rounds probabilities to 6 digits; the score reads ranks, as the official did
    expected = label_ranking_average_precision_score(relevant, probs)
    assert results["map_with_background"] == pytest.approx(expected, abs=1e-12)


def test_truth_csv_official_format_and_unknown_classes(tmp_path):
    truth_path = tmp_path / "truth.csv"
    truth_path.write_text("1;aaaaaa;bbbbbb,zzzzzz\n2;cccccc;\n3;yyyyyy\n")
    truth = read_truth(truth_path)
    assert truth.foreground == {"1": "aaaaaa", "2": "cccccc", "3": "yyyyyy"}
    assert truth.background == {"1": ["bbbbbb", "zzzzzz"], "2": [], "3": []}
    run = write_run(tmp_path / "run.csv", {m: [0.4, 0.3, 0.2, 0.1] for m in "123"})
    results = score(read_run_file(run), truth)
    assert results["unknown_classes"] == ["yyyyyy", "zzzzzz"]
    assert results["map_foreground"] == pytest.approx((1.0 + 1 / 3 + 0.0) / 3)
    # recording 3's class is none of the run's 4: it scores 0 at chance too
    assert results["chance_map_foreground"] == pytest.approx(chance_map(4) * 2 / 3)


def test_cli_prints_foreground_map_first(tmp_path, capsys):
    run = write_run(tmp_path / "run.csv", {"1": [0.1, 0.2, 0.3, 0.4], "2": [0.4, 0.3, 0.2, 0.1]})
    truth_path = tmp_path / "truth.csv"
    truth_path.write_text("1;dddddd;\n2;bbbbbb;cccccc\n")
    main(["--run-file", str(run), "--truth", str(truth_path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "MAP (foreground): 0.7500"
    assert lines[1] == "MAP (with background): 0.7917"  # (1 + (1/2 + 2/3) / 2) / 2
    assert lines[2] == "top-1 accuracy: 0.5000"


def test_media_ids_match_whatever_their_unicode_normalisation(tmp_path, capsys):
    """A run file from files named on a Mac (NFD: e and a combining accent) scores against a
    truth typed elsewhere (NFC)."""
    nfd, nfc = unicodedata.normalize("NFD", "Grünfink café"), "Grünfink café"
    assert nfd != nfc
    run = write_run(tmp_path / "run.csv", {nfd: [0.1, 0.2, 0.3, 0.4], "2": [0.4, 0.3, 0.2, 0.1]})
    truth_path = tmp_path / "truth.csv"
    truth_path.write_text(f"{nfc};dddddd;\n2;aaaaaa;\n", encoding="utf-8")
    main(["--run-file", str(run), "--truth", str(truth_path)])
    out = capsys.readouterr().out
    assert "MAP (foreground): 1.0000" in out and "0 missing from the run file" in out

    # two recordings of the run file named so: one would overwrite the other's ranks
    both = write_run(tmp_path / "both.csv", {nfd: [0.1, 0.2, 0.3, 0.4], nfc: [0.4, 0.3, 0.2, 0.1]})
    error = evaluate_error(capsys, "--run-file", both, "--truth", truth_path)
    assert "MediaIds of the run file" in error and "differ only in Unicode normalisation" in error


def test_cli_reports_a_bad_run_file_by_line(tmp_path, capsys):
    run = tmp_path / "run.csv"
    run.write_text("1;aaaaaa;0.5;1\n1;bbbbbb;0.4;1\n")
    truth_path = tmp_path / "truth.csv"
    truth_path.write_text("1;aaaaaa;\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--run-file", str(run), "--truth", str(truth_path)])
    assert exit_info.value.code == 2
    assert "line 2: rank 1" in capsys.readouterr().err


def test_chance_level_of_a_random_ranking():
    assert chance_map(1) == 1.0
    assert chance_map(4) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def evaluate_error(capsys, *args) -> str:
    """Run evaluate expecting the bad-input exit: status 2, one `error:` line; its text."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_cli_json_never_replaces_an_input_or_another_kind_of_file(tmp_path, capsys):
    run = write_run(tmp_path / "run.csv", {"1": [0.1, 0.2, 0.3, 0.4]})
    truth = tmp_path / "truth.csv"
    truth.write_text("1;dddddd;\n")
    before = run.read_text()
    assert "also an input" in evaluate_error(
        capsys, "--run-file", run, "--truth", truth, "--json", run
    )
    assert run.read_text() == before
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    assert "not a results file" in evaluate_error(
        capsys, "--run-file", run, "--truth", truth, "--json", tmp_path / "notes.json"
    )
    results = tmp_path / "results.json"
    for _ in range(2):  # its own kind is replaced
        main(["--run-file", str(run), "--truth", str(truth), "--json", str(results)])
    assert json.loads(results.read_text())["map_foreground"] == 1.0


def test_cli_binary_or_wrong_files_are_one_error_line(tmp_path, capsys):
    run = write_run(tmp_path / "run.csv", {"1": [0.1, 0.2, 0.3, 0.4]})
    truth = tmp_path / "truth.csv"
    truth.write_text("1;dddddd;\n")
    binary = tmp_path / "model.keras"
    binary.write_bytes(bytes(range(256)) * 4)
    assert "not UTF-8 text" in evaluate_error(capsys, "--run-file", binary, "--truth", truth)
    assert "not UTF-8 text" in evaluate_error(capsys, "--run-file", run, "--truth", binary)
    assert "not a run folder's classes.json" in evaluate_error(
        capsys, "--run-file", run, "--truth", truth, "--classes", binary
    )
    assert "Is a directory" in evaluate_error(capsys, "--run-file", tmp_path, "--truth", truth)
    # an endless file without line breaks is named, not read into memory for ever
    assert "error: /dev/zero: not a regular file" in evaluate_error(
        capsys, "--run-file", "/dev/zero", "--truth", truth
    )
    endless = tmp_path / "endless.csv"
    endless.write_bytes(b"7" * 100_001)
    assert "over 100000 characters" in evaluate_error(
        capsys, "--run-file", endless, "--truth", truth
    )
    endless.write_bytes(b"\0" * 100_001)  # no text: named from its first bytes
    assert "not UTF-8 text (it holds NUL bytes" in evaluate_error(
        capsys, "--run-file", run, "--truth", endless
    )
    assert "error: /dev/zero: " in evaluate_error(capsys, "--run-file", run, "--truth", "/dev/zero")
    assert "error: /dev/zero: not a file" in evaluate_error(
        capsys, "--run-file", run, "--truth", truth, "--classes", "/dev/zero"
    )
    assert "not a regular file" in evaluate_error(
        capsys, "--run-file", run, "--truth", truth, "--json", "/dev/null"
    )
    with pytest.raises(SystemExit):
        main(["--run-file", str(binary), "--truth", str(truth), "--verbose"])
    assert "Traceback" in capsys.readouterr().err


def test_cli_truth_xml_with_a_dtd_entity_is_skipped_by_name(tmp_path, caplog, capsys):
    run = write_run(tmp_path / "run.csv", {"1": [0.1, 0.2, 0.3, 0.4]})
    xml = tmp_path / "xml"
    xml.mkdir()
    (xml / "1.xml").write_text(
        "<Audio><MediaId>1</MediaId><FileName>1.wav</FileName><ClassId>dddddd</ClassId></Audio>"
    )
    (xml / "2.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE Audio [<!ENTITY e "2">]><Audio><MediaId>&e;</MediaId>'
        "<FileName>2.wav</FileName><ClassId>aaaaaa</ClassId></Audio>"
    )
    main(["--run-file", str(run), "--truth", str(xml)])
    assert "MAP (foreground): 1.0000" in capsys.readouterr().out
    assert "2.xml: malformed XML (entities are disabled)" in caplog.text


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_run_files_get_the_mode_of_a_plain_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = write_run(tmp_path / "run.csv", {"1": [0.1, 0.2, 0.3, 0.4]})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_killed_writers_part_file_is_removed_but_not_a_live_one(tmp_path):
    killed = tmp_path / ".run.csv.abcd1234.part"
    killed.write_text("half")
    other = tmp_path / ".run.csv.notours.part"  # not our naming: left alone
    other.write_text("someone else's")
    with RunFileWriter(tmp_path / "run.csv", CLASSES) as live:
        with RunFileWriter(tmp_path / "run.csv", CLASSES):  # a second writer of the same path
            assert Path(live._temp_name).exists()
        live.write("1", np.full(4, 0.25))
    assert not killed.exists() and other.exists()
    assert len(read_run_file(tmp_path / "run.csv")) == 4


@pytest.mark.parametrize("media_id", ["a;b", "a\nb", "a\rb", " a", "", "a\u2028b", "a\udcffb"])
def test_writer_refuses_a_media_id_that_would_break_the_file(tmp_path, media_id):
    with (
        pytest.raises(ValueError, match="MediaId"),
        RunFileWriter(tmp_path / "r.csv", CLASSES) as r,
    ):
        r.write(media_id, np.full(4, 0.25))
    with pytest.raises(ValueError, match="class id"):
        RunFileWriter(tmp_path / "r.csv", [*CLASSES, media_id or "x;y"])


@pytest.mark.parametrize(
    "text",
    [
        "\ufeff1;aaaaaa;\n2;bbbbbb;cccccc\n",  # a spreadsheet's byte-order mark
        "\ufeffMediaId;ClassId;Background\n1;aaaaaa;\n2;bbbbbb;cccccc\n",
        "\n  \nMediaId;ClassId;Background\n1;aaaaaa;\n2;bbbbbb;cccccc\n",  # header after blanks
        "file;label\n1;aaaaaa;\n2;bbbbbb;cccccc\n",  # as a spreadsheet export names them
        "media_id;species;background\n1;aaaaaa;\n2;bbbbbb;cccccc\n",
        "Media Id;Class Id;Background\n1;aaaaaa;\n2;bbbbbb;cccccc\n",  # spaces, capitals
        "#MediaId;ClassId;background\n1;aaaaaa;\n2;bbbbbb;cccccc\n",
        "recording_id;species;background_species\n1;aaaaaa;\n2;bbbbbb;cccccc\n",
    ],
)
def test_truth_csv_byte_order_mark_and_header_are_no_recording(tmp_path, text):
    truth_path = tmp_path / "truth.csv"
    truth_path.write_text(text, encoding="utf-8")
    truth = read_truth(truth_path)
    assert truth.foreground == {"1": "aaaaaa", "2": "bbbbbb"}
    assert truth.background == {"1": [], "2": ["cccccc"]}


@pytest.mark.parametrize(
    "text",
    [
        "file,label,background\n1,aaaaaa\n2,bbbbbb,cccccc;dddddd\n",  # as the training CSV
        'media_id,label,background,type\n1,aaaaaa,,song\n2,bbbbbb,"cccccc,dddddd",call\n',
        "1,aaaaaa,\"['x;y']\"\n2,bbbbbb,\"['cccccc', 'dddddd']\"\n",  # a ';' in a quoted field
        "1\taaaaaa\t\n2\tbbbbbb\tcccccc;dddddd\t\n",  # a spreadsheet's tab-separated text
    ],
)
def test_truth_as_comma_or_tab_separated_values_is_read_as_the_official_format(tmp_path, text):
    """A truth written as CSV with commas (or tabs) is no reason to fail the scoring: fields
    MediaId, ClassId, background species (one field; columns after it are none)."""
    truth_path = tmp_path / "truth.txt"
    truth_path.write_text(text, encoding="utf-8")
    truth = read_truth(truth_path)
    assert truth.foreground == {"1": "aaaaaa", "2": "bbbbbb"}
    assert truth.background["2"] == ["cccccc", "dddddd"]


def test_an_official_truth_under_a_title_with_a_comma_is_refused_naming_the_title(tmp_path):
    """Most lines decide the separator: a title line with a comma does not make the
    semicolon lines CSV (which would read 1;0001;0002 as one MediaId)."""
    truth_path = tmp_path / "truth.txt"
    truth_path.write_text("BirdCLEF 2016, ground truth\n1;aaaaaa;bbbbbb,cccccc\n2;bbbbbb;\n")
    with pytest.raises(TruthError, match="line 1: expected .*read as separated by semicolons"):
        read_truth(truth_path)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_run_file_and_truth_with_a_byte_order_mark_are_read(tmp_path, encoding):
    bom = "\ufeff" if encoding == "utf-8" else ""  # the UTF-16 codec writes its mark itself
    path = tmp_path / "run.csv"
    path.write_text(bom + "1;aaaaaa;0.5;1\n1;bbbbbb;0.4;2\n", encoding=encoding)
    assert [(e.media_id, e.rank) for e in read_run_file(path)] == [("1", 1), ("1", 2)]
    (tmp_path / "truth.txt").write_text(bom + "é;aaaaaa;bbbbbb\n", encoding=encoding)
    assert read_truth(tmp_path / "truth.txt").background == {"é": ["bbbbbb"]}


def test_cli_names_a_soundscape_run_file_as_one_it_cannot_score(tmp_path, capsys):
    run = tmp_path / "soundscape.csv"
    with SoundscapeWriter(run, CLASSES, top_k=2) as writer:
        writer.write("1", np.array([[0.7, 0.1, 0.1, 0.1]]), 5.0)
    truth = tmp_path / "truth.csv"
    truth.write_text("1;aaaaaa;\n")
    err = evaluate_error(capsys, "--run-file", run, "--truth", truth)
    assert "line 1: a soundscape run file" in err and "cannot be scored" in err
    assert "not a number" not in err


def labelled_xml(folder: Path, media_id: str, class_id: str, name: str, background: str) -> None:
    genus, species = name.split()
    (folder / f"{media_id}.xml").write_text(
        f"<Audio><MediaId>{media_id}</MediaId><FileName>{media_id}.wav</FileName>"
        f"<ClassId>{class_id}</ClassId><Genus>{genus}</Genus><Species>{species}</Species>"
        f"<BackgroundSpecies>{background}</BackgroundSpecies></Audio>"
    )


def test_background_without_a_class_id_is_left_out_from_csv_and_xml_alike(tmp_path, caplog, capsys):
    """One rule for both truths: a scientific name the XMLs map counts under its class id, and
    so does one of their class ids; anything else has no class id, is not scored, and is
    named in the same warning."""
    xml = tmp_path / "xml"
    xml.mkdir()
    labelled_xml(xml, "1", "aaaaaa", "Turdus merula", "Erithacus rubecula, Nonesuch bird")
    labelled_xml(xml, "2", "bbbbbb", "Erithacus rubecula", "aaaaaa")
    csv_truth = tmp_path / "truth.csv"
    csv_truth.write_text("1;aaaaaa;Erithacus rubecula,Nonesuch bird\n2;bbbbbb;aaaaaa\n")
    from_xml = read_truth(xml)
    from_csv = read_truth(csv_truth, names_xml_dir=xml)
    for truth in (from_xml, from_csv):
        assert truth.background == {"1": ["bbbbbb"], "2": ["aaaaaa"]}
        assert truth.unmapped_background == {"Nonesuch bird"}
    run = write_run(tmp_path / "run.csv", {"1": [0.4, 0.3, 0.2, 0.1], "2": [0.3, 0.4, 0.2, 0.1]})
    main(["--run-file", str(run), "--truth", str(csv_truth), "--names-xml-dir", str(xml)])
    assert "MAP (with background): 1.0000" in capsys.readouterr().out  # not lowered by it
    assert "background species that no run can return" in caplog.text
    assert "not scored: Nonesuch bird" in caplog.text


def test_a_background_species_outside_every_class_is_not_scored(tmp_path, caplog, capsys):
    """A bird heard behind the species of a set (not one of the run's classes nor of the
    truth's), a spreadsheet's 'nan', and a Python list as BirdCLEF's secondary_labels: a
    perfect ranking scores 1 with background too. A background class the run does not rank
    high still counts (a relevant class ranked low)."""
    run = write_run(tmp_path / "run.csv", {"1": [0.4, 0.3, 0.2, 0.1], "2": [0.3, 0.4, 0.2, 0.1]})
    truth = tmp_path / "truth.csv"
    truth.write_text("1;aaaaaa;bbbbbb,Corvus corax\n2;bbbbbb;['aaaaaa', 'Sitta europaea']\n")
    main(["--run-file", str(run), "--truth", str(truth)])
    assert "MAP (with background): 1.0000" in capsys.readouterr().out
    assert "not scored: Corvus corax, Sitta europaea" in caplog.text
    truth.write_text("1;aaaaaa;nan\n2;bbbbbb;dddddd\n")  # dddddd: a class, ranked 4th
    main(["--run-file", str(run), "--truth", str(truth)])
    assert "MAP (with background): 0.8750" in capsys.readouterr().out  # (1 + (1 + 2/4) / 2) / 2
    assert "not scored: nan" in caplog.text
    # a run file of each recording's top 2 does not name dddddd: the model's classes do
    top_2 = write_run(
        tmp_path / "top2.csv", {"1": [0.4, 0.3, 0.2, 0.1], "2": [0.3, 0.4, 0.2, 0.1]}, top_k=2
    )
    classes = tmp_path / "classes.json"  # the model's classes tell it
    classes.write_text(json.dumps({"classes": CLASSES}))
    main(["--run-file", str(top_2), "--truth", str(truth), "--classes", str(classes)])
    assert "MAP (with background): 0.7500" in capsys.readouterr().out


@pytest.mark.parametrize(
    "header",
    [
        "audio_id;primary_label;secondary_labels",
        "Media;Class;Background",
        "wav;class;bg",
        "fname;label",  # as training's CSVs may name them (metadata.COLUMN_ALIASES)
        "slice_file_name;class",
    ],
)
def test_a_header_of_other_words_is_not_scored_as_a_recording(tmp_path, caplog, capsys, header):
    """Column names as other data sets write them. Cells may be quoted, as a spreadsheet saves
    them; a MediaId that only begins with a quote is read as it is."""
    caplog.set_level(logging.INFO)
    run = write_run(
        tmp_path / "run.csv",
        {"1": [0.4, 0.3, 0.2, 0.1], '"live" take': [0.3, 0.4, 0.2, 0.1]},
    )
    truth = tmp_path / "truth.csv"
    truth.write_text(f'{header}\n"1";"aaaaaa";""\n"live" take;"bbbbbb";\n')
    main(["--run-file", str(run), "--truth", str(truth)])
    out = capsys.readouterr().out
    assert "MAP (foreground): 1.0000" in out and "recordings: 2 in the truth" in out
    assert "line 1: a header, not a recording" in caplog.text


def test_a_first_line_of_header_words_that_the_run_names_is_a_recording(tmp_path, capsys):
    """sample;bird reads as a header's words, but the run file has a recording "sample"."""
    probs = {"sample": [0.4, 0.3, 0.2, 0.1], "2": [0.3, 0.4, 0.2, 0.1]}
    run = write_run(tmp_path / "run.csv", probs, classes=["bird", "noise", "rain", "wind"])
    truth = tmp_path / "truth.csv"
    for first in ("sample", "test/sample.wav"):
        truth.write_text(f"{first};bird\n2;noise\n")
        main(["--run-file", str(run), "--truth", str(truth)])
        out = capsys.readouterr().out
        assert "recordings: 2 in the truth" in out and "MAP (foreground): 1.0000" in out


def test_a_first_recording_missing_from_the_run_is_scored_not_taken_for_a_header(tmp_path, capsys):
    """Of a class the run never returns and no other line has: still a recording, scored 0."""
    run = write_run(tmp_path / "run.csv", {"1": [0.4, 0.3, 0.2, 0.1], "2": [0.3, 0.4, 0.2, 0.1]})
    truth = tmp_path / "truth.csv"
    truth.write_text("3;zzzzzz;\n1;aaaaaa;\n2;bbbbbb;\n")
    main(["--run-file", str(run), "--truth", str(truth)])
    out = capsys.readouterr().out
    assert "recordings: 3 in the truth" in out and "MAP (foreground): 0.6667" in out


def test_names_xml_dir_without_labels_is_an_error(tmp_path, capsys):
    xml = tmp_path / "test_xml"
    xml.mkdir()
    (xml / "1.xml").write_text("<Audio><MediaId>1</MediaId><FileName>1.wav</FileName></Audio>")
    truth = tmp_path / "truth.csv"
    truth.write_text("1;aaaaaa;Turdus merula\n")
    run = write_run(tmp_path / "run.csv", {"1": [0.4, 0.3, 0.2, 0.1]})
    err = evaluate_error(capsys, "--run-file", run, "--truth", truth, "--names-xml-dir", xml)
    assert "no labelled recording" in err


def test_a_pipe_as_truth_duplicate_classes_and_a_file_as_report_are_refused_first(tmp_path, capsys):
    run = tmp_path / "run.csv"
    run.write_text("1;aaaaaa;0.5;1\n")
    truth = tmp_path / "truth.csv"
    truth.write_text("1;aaaaaa;\n")
    os.mkfifo(tmp_path / "pipe.csv")  # reading it would wait for a writer forever
    err = evaluate_error(capsys, "--run-file", run, "--truth", tmp_path / "pipe.csv")
    assert "pipe.csv: not a regular file" in err
    err = evaluate_error(capsys, "--run-file", tmp_path / "pipe.csv", "--truth", truth)
    assert "pipe.csv: not a regular file" in err and "so not a run file" in err
    classes = tmp_path / "classes.json"
    classes.write_text('{"classes": ["aaaaaa", "bbbbbb", "aaaaaa"]}')
    err = evaluate_error(capsys, "--run-file", run, "--truth", truth, "--classes", classes)
    assert "class list has duplicates" in err
    (tmp_path / "notes.txt").write_text("mine")
    err = evaluate_error(
        capsys, "--run-file", run, "--truth", truth, "--report", tmp_path / "notes.txt"
    )
    assert "notes.txt exists and is not a folder" in err and "MAP" not in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("written", ["{}.wav", "{}.WAV", "test/{}.wav", "{}.flac"])
def test_a_truth_naming_recordings_by_file_is_compared_by_stem(written):
    """predict.py names a recording by its file's stem; a truth written from file names
    (101.wav, test/101.wav) is scored as if it named them so."""
    entries = [RunEntry("101", "aaaaaa", 0.9, 1), RunEntry("102", "bbbbbb", 0.8, 1)]
    truth = Truth({written.format(101): "aaaaaa", written.format(102): "aaaaaa"},
                  {written.format(101): [], written.format(102): ["bbbbbb"]})  # fmt: skip
    results = score(entries, named_as_in_run_file(truth, {e.media_id for e in entries}))
    assert results["map_foreground"] == pytest.approx(0.5)
    assert results["map_with_background"] == pytest.approx(0.75)


def test_a_truth_whose_names_would_merge_without_their_suffix_is_left_as_it_is():
    entries = [RunEntry("a", "aaaaaa", 0.9, 1)]
    truth = Truth({"a.wav": "aaaaaa", "a.flac": "aaaaaa"}, {"a.wav": [], "a.flac": []})
    with pytest.raises(TruthError, match="share no MediaId"):
        score(entries, named_as_in_run_file(truth, {e.media_id for e in entries}))


def test_a_first_recording_named_like_a_header_with_a_number_is_a_recording(tmp_path):
    path = tmp_path / "truth.csv"
    path.write_text("recording_1;species_1;\nrecording_2;species_2;\n")
    assert read_truth(path).foreground == {"recording_1": "species_1", "recording_2": "species_2"}


def test_the_report_counts_the_recordings_of_a_truth_naming_files_as_the_scores_do(tmp_path):
    write_run(tmp_path / "run.csv", {"101": [0.7, 0.1, 0.1, 0.1], "102": [0.1, 0.7, 0.1, 0.1]})
    (tmp_path / "truth.csv").write_text("101.wav;aaaaaa;\n102.wav;aaaaaa;\n")
    main(["--run-file", str(tmp_path / "run.csv"), "--truth", str(tmp_path / "truth.csv"),
          "--report", str(tmp_path / "report")])  # fmt: skip
    rows = (tmp_path / "report" / "confusion_matrix.csv").read_text().splitlines()
    assert rows[1].startswith("aaaaaa,1,1,")  # one right, one taken for bbbbbb; none missing
    assert rows[1].endswith(",0")


def test_a_truth_line_ending_in_a_separator_is_read(tmp_path):
    path = tmp_path / "truth.csv"
    path.write_text("1;aaaaaa;;\n;;;\n2;bbbbbb;cccccc;\n;;\n")  # and empty rows
    truth = read_truth(path)
    assert truth.foreground == {"1": "aaaaaa", "2": "bbbbbb"}
    assert truth.background == {"1": [], "2": ["cccccc"]}
