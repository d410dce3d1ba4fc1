"""Metadata: BirdCLEF XML variants, CSV, class folders, selections, matching wavs."""

import json
import logging
import os
import unicodedata
from pathlib import Path

import pytest

from preprocess.metadata import (
    MetadataError,
    Recording,
    background_names,
    match_audio,
    most_common_classes,
    parse_birdclef_xml,
    read_birdclef_xml_dir,
    read_class_folders,
    read_csv,
    select,
)

TRAIN_2014 = """<Audio><MediaId>100</MediaId>
<FileName>LIFECLEF2014_BIRDAMAZON_XC_WAV_RN100.wav</FileName>
<ClassId>fupfmw</ClassId><Quality>2</Quality>
<BackgroundSpecies>Tyranneutes stolzmanni</BackgroundSpecies>
<Order>Passeriformes</Order><Family>Thamnophilidae</Family><Genus>Hylophylax</Genus>
<Species>punctulatus</Species><Sub-species /><VernacularNames>Dot-backed Antbird</VernacularNames>
</Audio>"""

TRAIN_2016 = """<?xml version="1.0" encoding="UTF-8"?>
<Audio>
  <MediaId>2016</MediaId>
  <FileName>LIFECLEF2015_BIRDAMAZON_XC_WAV_RN2016.wav</FileName>
  <ClassId>ilsnox</ClassId>
  <Date>2009-05-03</Date><Time>07:30</Time><Locality>Tambopata, Peru</Locality>
  <Latitude>-12.8</Latitude><Longitude>-69.7</Longitude><Elevation>250</Elevation>
  <Author>Jérôme Fischer</Author><AuthorID>ABC</AuthorID>
  <Content>song</Content><Comments />
  <Quality>4</Quality><Year>BirdCLEF2016</Year>
  <BackgroundSpecies>Pipra filicauda, Tyranneutes stolzmanni ,,
    Ramphocelus carbo,</BackgroundSpecies>
  <Order>Passeriformes</Order><Family>Tyrannidae</Family>
  <Genus>Myiarchus</Genus><Species>tuberculifer</Species><Sub-species />
  <VernacularNames>Dusky-capped Flycatcher</VernacularNames>
</Audio>"""

TEST_2016 = """<Audio><MediaId>9001</MediaId>
<FileName>LIFECLEF2016_BIRD_XC_WAV_RN9001.wav</FileName>
<Date>2012-01-01</Date><Time /><Locality>Manaus</Locality><Latitude>-3.1</Latitude>
<Longitude>-60.0</Longitude><Elevation /><Author>A. Person</Author><AuthorID>P1</AuthorID>
<Year>BirdCLEF2016</Year></Audio>"""

TRAIN_2017 = """<Audio><MediaId>17</MediaId><FileName>LIFECLEF2017_BIRD_XC_WAV_RN17.mp3</FileName>
<ClassId>abcdef</ClassId><Quality>1</Quality><Country>Brazil</Country>
<Family>Pipridae</Family><Genus>Pipra</Genus><Species>filicauda</Species><Sub-species />
</Audio>"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_2014_training_xml():
    recording = parse_birdclef_xml(TRAIN_2014)
    assert recording.media_id == "100"
    assert recording.file == "LIFECLEF2014_BIRDAMAZON_XC_WAV_RN100.wav"
    assert (recording.class_id, recording.species) == ("fupfmw", "Hylophylax punctulatus")
    assert recording.background == ["Tyranneutes stolzmanni"]
    assert recording.quality == 2
    assert recording.fields["Sub-species"] is None
    assert recording.fields["VernacularNames"] == "Dot-backed Antbird"


def test_2016_training_xml_background_list_and_empty_fields():
    recording = parse_birdclef_xml(TRAIN_2016.encode("utf-8"))
    assert recording.background == [
        "Pipra filicauda",
        "Tyranneutes stolzmanni",
        "Ramphocelus carbo",
    ]
    assert recording.quality == 4
    assert recording.species == "Myiarchus tuberculifer"
    assert recording.fields["Comments"] is None
    assert recording.fields["Author"] == "Jérôme Fischer"


def test_test_xml_has_no_label():
    recording = parse_birdclef_xml(TEST_2016)
    assert recording.class_id is None and recording.species is None
    assert recording.background == [] and recording.quality is None
    assert recording.fields["Locality"] == "Manaus"


def test_2017_xml_with_country_and_no_background_field():
    recording = parse_birdclef_xml(TRAIN_2017)
    assert recording.fields["Country"] == "Brazil"
    assert "BackgroundSpecies" not in recording.fields and recording.background == []
    assert recording.file == "LIFECLEF2017_BIRD_XC_WAV_RN17.wav"  # the resampled wav


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<Audio><MediaId>1</MediaId><FileName>a.wav</Audio>", "malformed XML"),
        ("<Audio><FileName>a.wav</FileName></Audio>", "MediaId missing"),
        ("<Audio><MediaId>1</MediaId><FileName /></Audio>", "FileName missing"),
        (
            "<Audio><MediaId>1</MediaId><FileName>a</FileName><Quality>A</Quality></Audio>",
            "Quality",
        ),
        ("<Recording><MediaId>1</MediaId></Recording>", "expected an <Audio>"),
        ("", "malformed XML"),
        ("<Audio><MediaId>1</MediaId><FileName>.</FileName></Audio>", "'.' names no file"),
        ("<Audio><MediaId>1</MediaId><FileName>..</FileName></Audio>", "'..' names no file"),
        ("<Audio><MediaId>1</MediaId><FileName>/</FileName></Audio>", "'/' names no file"),
        ("<Audio><MediaId>1</MediaId><FileName>a&#10;b</FileName></Audio>", "line break"),
        (
            "<Audio><MediaId>1</MediaId><MediaId>2</MediaId><FileName>a</FileName></Audio>",
            "<MediaId> appears more than once",
        ),
        (
            "<Audio><MediaId>1</MediaId><FileName>a</FileName><ClassId>x;y</ClassId></Audio>",
            "ClassId 'x;y' holds ';'.*must fit a run file line",
        ),
        (
            b'<?xml version="1.0" encoding="klingon"?><Audio><MediaId>1</MediaId></Audio>',
            "malformed XML.*unknown encoding",
        ),
        (  # read as empty, the label was lost without a word
            "<Audio><MediaId>1</MediaId><FileName>a</FileName><ClassId><b>x</b></ClassId></Audio>",
            "<ClassId> holds elements, not a value",
        ),
    ],
)
def test_bad_xml_is_an_error_naming_the_source(xml, message):
    with pytest.raises(MetadataError, match=message) as error:
        parse_birdclef_xml(xml, source="x/1.xml")
    assert "x/1.xml" in str(error.value)


def test_xml_folder_skips_and_names_bad_files(tmp_path):
    for name, text in [("a.xml", TRAIN_2014), ("b.xml", TRAIN_2016), ("sub/c.XML", TEST_2016)]:
        write(tmp_path / name, text)
    write(tmp_path / "d.xml", TRAIN_2017)
    write(tmp_path / "broken.xml", "<Audio><MediaId>5</MediaId>")
    write(tmp_path / "nofile.xml", "<Audio><MediaId>6</MediaId></Audio>")
    write(tmp_path / "readme.txt", "not metadata")
    os.mkfifo(tmp_path / "pipe.xml")  # reading it would wait for a writer forever

    recordings, skipped = read_birdclef_xml_dir(tmp_path)

    assert [r.media_id for r in recordings] == ["100", "2016", "17", "9001"]
    assert len(skipped) == 3
    assert "pipe.xml" in skipped[0] and "not a regular file" in skipped[0]
    assert "broken.xml" in skipped[1] and "malformed" in skipped[1]
    assert "nofile.xml" in skipped[2] and "FileName" in skipped[2]


def test_xml_folder_skips_an_unknown_encoding(tmp_path):
    write(tmp_path / "a.xml", TRAIN_2014)
    (tmp_path / "b.xml").write_bytes(b'<?xml version="1.0" encoding="x-mac-klingon"?><Audio/>')

    recordings, skipped = read_birdclef_xml_dir(tmp_path)

    assert [r.media_id for r in recordings] == ["100"]
    assert len(skipped) == 1 and "b.xml: malformed XML (unknown encoding" in skipped[0]


def test_xml_folder_duplicate_media_id_names_both_files(tmp_path):
    write(tmp_path / "one.xml", TRAIN_2014)
    write(tmp_path / "two.xml", TRAIN_2014.replace("RN100", "RN101"))
    with pytest.raises(MetadataError, match=r"MediaId '100' appears twice.*one\.xml.*two\.xml"):
        read_birdclef_xml_dir(tmp_path)


def test_xml_folder_names_a_wav_that_several_xml_files_list(tmp_path, caplog):
    """Two MediaIds, two labels, one audio file: named, and grouped so that a split keeps the
    recordings of one audio on one side."""
    write(tmp_path / "one.xml", TRAIN_2014)
    other = TRAIN_2014.replace("<MediaId>100</MediaId>", "<MediaId>101</MediaId>")
    write(tmp_path / "two.xml", other.replace("fupfmw", "otherc"))
    write(tmp_path / "three.xml", TRAIN_2014.replace("100", "102"))
    recordings, _ = read_birdclef_xml_dir(tmp_path)
    assert [r.class_id for r in recordings] == ["fupfmw", "fupfmw", "otherc"]
    assert [r.group for r in recordings] == ["LIFECLEF2014_BIRDAMAZON_XC_WAV_RN100.wav", "",
                                            "LIFECLEF2014_BIRDAMAZON_XC_WAV_RN100.wav"]  # fmt: skip
    assert "LIFECLEF2014_BIRDAMAZON_XC_WAV_RN100.wav is listed 2 times" in caplog.text
    assert "one.xml" in caplog.text and "two.xml" in caplog.text


def test_xml_folder_missing_or_empty(tmp_path):
    with pytest.raises(MetadataError, match="not found"):
        read_birdclef_xml_dir(tmp_path / "nowhere")
    with pytest.raises(MetadataError, match="no .xml files"):
        read_birdclef_xml_dir(tmp_path)


def test_csv_with_optional_columns(tmp_path):
    path = write(
        tmp_path / "meta.csv",
        "\ufefffile,label,media_id,background,site\n"
        "a/one.mp3,owl,m1,lark; crow ;,north\n"
        "two.wav,lark,,,south\n"
        "three.flac, ,,,\n",
    )
    one, two, three = read_csv(path)
    assert (one.media_id, one.file, one.class_id, one.species) == ("m1", "a/one.wav", "owl", "owl")
    assert one.background == ["lark", "crow"] and one.fields["site"] == "north"
    assert (two.media_id, two.background) == ("two", [])
    assert (three.file, three.class_id) == ("three.wav", None)  # empty label: unlabelled


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_a_csv_saved_as_utf16_or_utf32_with_a_byte_order_mark_is_read(tmp_path, encoding):
    """Windows' "Unicode" and Excel's "Unicode Text" (UTF-16 with its mark, tab-separated)."""
    text = "file\tlabel\r\nä/one.wav\tmésange\r\n"
    bom = "\ufeff" if encoding == "utf-16-be" else ""  # the BE codec writes no mark itself
    (tmp_path / "meta.csv").write_bytes((bom + text).encode(encoding))
    (one,) = read_csv(tmp_path / "meta.csv")
    assert (one.file, one.class_id) == ("ä/one.wav", "mésange")


def test_a_csv_in_windows_1252_is_named_with_what_to_do(tmp_path):
    (tmp_path / "meta.csv").write_bytes("file,label\none.wav,mésange\n".encode("cp1252"))
    with pytest.raises(MetadataError, match=r"meta.csv: not UTF-8 text \(it holds byte 0xe9"):
        read_csv(tmp_path / "meta.csv")


@pytest.mark.parametrize("content", ["utf-16 without its mark", "a wav file"])
def test_a_csv_holding_nul_bytes_is_named_as_no_utf8_text(tmp_path, content):
    data = "file,label\none.wav,x\n".encode("utf-16-le")
    if content == "a wav file":
        data = b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00"
    (tmp_path / "meta.csv").write_bytes(data)
    with pytest.raises(MetadataError, match="meta.csv: not UTF-8 text .it holds NUL bytes"):
        read_csv(tmp_path / "meta.csv")


@pytest.mark.parametrize("separator", [";", "\t"])
def test_csv_saved_with_semicolons_or_tabs_reads_the_same(tmp_path, separator):
    """As a spreadsheet saves CSV in locales whose decimal mark is a comma, or as TSV."""
    rows = [["File", "Label", "notes", "background"], ["a/one.wav", "great tit", "1,5 m", "lark"]]
    text = "\r\n".join(separator.join(row) for row in rows) + "\r\n"
    (one,) = read_csv(write(tmp_path / "meta.csv", text))
    assert (one.file, one.class_id, one.fields["notes"], one.background) == (
        "a/one.wav", "great tit", "1,5 m", ["lark"]
    )  # fmt: skip
    commas = write(tmp_path / "commas.csv", 'file,label,background\na.wav,owl,"lark;crow"\n')
    assert read_csv(commas)[0].background == ["lark", "crow"]  # its ';' lists background


def test_csv_with_unnamed_extra_columns_reads(tmp_path):
    """A spreadsheet's export often ends its header with empty names: not columns it reads."""
    path = write(tmp_path / "meta.csv", "file,label,,\na.wav,owl,,\nb.wav,lark,,\n")
    assert [r.class_id for r in read_csv(path)] == ["owl", "lark"]


def test_csv_columns_named_as_other_data_sets_name_them(tmp_path, caplog):
    """ESC-50's filename and category, BirdCLEF's primary_label and secondary_labels."""
    esc50 = write(tmp_path / "esc50.csv", "filename,fold,target,category\n1-1.wav,1,0,dog\n")
    with caplog.at_level(logging.INFO):
        (one,) = read_csv(esc50)
    assert (one.file, one.class_id, one.fields["target"]) == ("1-1.wav", "dog", "0")
    assert "column 'category' read as 'label'" in caplog.text
    birdclef = write(
        tmp_path / "train_metadata.csv",
        "primary_label,secondary_labels,type,filename\n"
        "abethr1,\"['grtit1', 'eurrob1']\",song,abethr1/XC1.ogg\n"
        "abethr1,[],call,abethr1/XC2.ogg\n",
    )
    first, second = read_csv(birdclef)
    assert (first.file, first.class_id, first.background) == (
        "abethr1/XC1.wav", "abethr1", ["grtit1", "eurrob1"]
    )  # fmt: skip
    assert second.background == []
    urban = write(
        tmp_path / "UrbanSound8K.csv", "slice_file_name,fold,classID,class\n1.wav,5,3,dog_bark\n"
    )
    assert [(r.file, r.class_id) for r in read_csv(urban)] == [("1.wav", "dog_bark")]
    assert background_names('["Hawkins\' owl", "a, b"]') == ["Hawkins' owl", "a, b"]
    assert background_names("Hawkins' owl;[x]") == ["Hawkins' owl", "[x]"]  # no list: as typed
    assert background_names("[1, 2]") == ["[1", "2]"]
    # a column of the name itself wins over an alias, which stays a field of its own
    (row,) = read_csv(write(tmp_path / "both.csv", "file,label,species\na.wav,x,y\n"))
    assert (row.class_id, row.fields["species"]) == ("x", "y")


def test_csv_columns_named_in_any_case(tmp_path):
    path = write(tmp_path / "meta.csv", "File , LABEL,Media_ID,Site\na.wav,owl,m1,north\n")
    (one,) = read_csv(path)
    assert (one.file, one.class_id, one.media_id, one.fields["Site"]) == (
        "a.wav",
        "owl",
        "m1",
        "north",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("filename,path,label\na.wav,b.wav,x\n", "missing column 'file'.*filename and path"),
        ("name,label\na.wav,x\n", "missing column 'file'.*one of filename, file_name"),
        ("file,label,File\na.wav,x,b.wav\n", "line 1: column 'file' twice"),
        ("file,species,category\na.wav,x,y\n", "'label'.*species and category could each be it"),
        ("", "missing column 'file'"),
        ("file,label\n", "no recordings"),
        ("file,label\na.wav,x\n,y\n", "line 3: empty 'file'"),
        ("file,label\na.wav,x,extra\n", "line 2: more values"),
        ("file,label,media_id\na.wav,x,b\nb.wav,y,\n", "'b' appears twice.*line 2.*line 3"),
        ("file,label\na.wav,x\nb\0.wav,y\n", r"line 3: 'file' 'b\\x00\.wav' holds a NUL byte"),
        ("file,label\na.wav,o\0wl\n", "line 2: 'label' .* holds a NUL byte"),
        ("file,label,media_id\na.wav,x,\0\n", "line 2: 'media_id' .* holds a NUL byte"),
        # an unclosed quote joins rows into one file name
        ('file,label\nz.wav,q\n"a.wav,x\nb.wav,y\nc.wav",z\n', "lines 3-5: 'file' .* line break"),
        ('file,label\nz.wav,q\n"a.wav,x\n' + "b.wav,y\n" * 20_000, "line 3: field larger"),
        ("file,label\n..,x\n", "line 2: file name '..' names no file"),
        ("file,label\n/,x\n", "line 2: 'file' '/' is an absolute path"),
        ("file,label\n/data/clips/a.wav,x\n", "line 2: .* absolute path: give the files relative"),
        ("file,label\nC:\\clips\\a.wav,x\n", "line 2: .* is an absolute path"),
        ("file,label\na.wav,x;y\n", "line 2: 'label' 'x;y' holds ';'"),
    ],
)
def test_bad_csv_is_an_error_naming_the_file(tmp_path, text, message):
    path = write(tmp_path / "labels.csv", text)
    with pytest.raises(MetadataError, match=message) as error:
        read_csv(path)
    assert "labels.csv" in str(error.value)


def test_a_csv_listing_one_file_twice_warns_with_both_lines(tmp_path, caplog):
    path = write(tmp_path / "labels.csv", "file,label,media_id\na.wav,x,1\nb.wav,x,2\na.wav,y,3\n")
    assert [r.media_id for r in read_csv(path)] == ["1", "2", "3"]
    assert [r.group for r in read_csv(path)] == ["a.wav", "", "a.wav"]
    assert "a.wav is listed 2 times" in caplog.text
    assert "labels.csv line 2, " in caplog.text and "labels.csv line 4)" in caplog.text


def test_a_csv_that_is_a_pipe_or_a_device_is_refused_not_read(tmp_path):
    os.mkfifo(tmp_path / "labels.csv")  # reading it would wait for a writer forever
    for path in (tmp_path / "labels.csv", Path("/dev/zero"), tmp_path):
        with pytest.raises(MetadataError, match="not a regular file"):
            read_csv(path)


def test_class_folders(tmp_path, caplog):
    for name in ["owl/a.WAV", "owl/night/b.flac", "lark/c.mp3", "stray.wav", "lark/notes.txt"]:
        write(tmp_path / name, "")

    recordings = read_class_folders(tmp_path)

    assert [(r.class_id, r.file, r.media_id) for r in recordings] == [
        ("lark", "lark/c.wav", "c"),
        ("owl", "owl/a.wav", "a"),
        ("owl", "owl/night/b.wav", "b"),
    ]
    assert "stray.wav" in caplog.text


def test_class_folders_ignore_hidden_and_macosx_and_skip_unstorable_names(tmp_path, caplog):
    for name in [
        "owl/a.wav",
        "owl/._a.wav",
        "owl/.ipynb_checkpoints/b.wav",
        "__MACOSX/owl/._a.wav",
        ".ipynb_checkpoints/c.wav",
        "lark/line\nbreak.wav",
        "sem;colon/d.wav",
    ]:
        write(tmp_path / name, "")
    os.mkfifo(tmp_path / "owl" / "pipe.wav")
    windows_zip_name = os.fsencode(tmp_path / "lark") + b"/caf\xe9.wav"  # Latin-1, not UTF-8
    open(windows_zip_name, "wb").close()

    recordings = read_class_folders(tmp_path)

    assert [(r.class_id, r.file) for r in recordings] == [("owl", "owl/a.wav")]
    assert "caf\\udce9.wav': the path is not valid UTF-8; left out" in caplog.text
    assert "line\\nbreak.wav': the path holds a line break; left out" in caplog.text
    assert "class folder name 'sem;colon' holds ';'" in caplog.text
    assert "pipe.wav: not a regular file" in caplog.text
    assert "ipynb" not in caplog.text and "MACOSX" not in caplog.text  # ignored, not reported


def test_class_folders_and_wavs_through_linked_folders(tmp_path):
    write(tmp_path / "elsewhere/owl/a.wav", "")
    write(tmp_path / "elsewhere/lark/b.wav", "")
    (tmp_path / "root").mkdir()
    for label in ["owl", "lark"]:
        (tmp_path / "root" / label).symlink_to(tmp_path / "elsewhere" / label)
    (tmp_path / "elsewhere/owl/loop").symlink_to(tmp_path / "root")  # walked once, no loop

    recordings = read_class_folders(tmp_path / "root")
    matched = match_audio(recordings, tmp_path / "root")

    assert [(r.class_id, r.file) for r in recordings] == [
        ("lark", "lark/b.wav"),
        ("owl", "owl/a.wav"),
    ]
    assert matched.present == recordings and not matched.missing and not matched.unused


def test_class_folders_duplicate_names_and_empty(tmp_path):
    with pytest.raises(MetadataError, match="no audio files"):
        read_class_folders(tmp_path)
    for name in ("owl/a.wav", "lark/a.wav", "lark/b.wav", "lark/night/b.flac"):
        write(tmp_path / name, "")
    recordings = read_class_folders(tmp_path)  # one name in two folders: told apart by path
    assert [r.media_id for r in recordings] == ["lark/a", "lark/b", "lark/night/b", "owl/a"]
    write(tmp_path / "owl/a.mp3", "")  # the same recording twice: both become owl/a.wav
    with pytest.raises(MetadataError, match=r"'owl/a' appears twice.*owl/a\.mp3.*owl/a\.wav"):
        read_class_folders(tmp_path)


def recording(media_id, class_id, quality=None, background=()):
    return Recording(media_id, f"{media_id}.wav", class_id, class_id, list(background), quality)


def test_selections():
    table = [
        recording("1", "a", 1),
        recording("2", "a", 3, ["Parus major"]),
        recording("3", "b", 5),
        recording("4", "b", None),
        recording("5", "c", 2),
        recording("6", None, 2),
    ]
    ids = lambda rows: [r.media_id for r in rows]  # noqa: E731
    assert ids(select(table)) == ["1", "2", "3", "4", "5", "6"]
    assert ids(select(table, min_quality=2, max_quality=4)) == ["2", "5", "6"]
    assert ids(select(table, max_quality=1)) == ["1"]
    assert ids(select(table, no_background=True)) == ["1", "3", "4", "5", "6"]
    # ties: alphabetical; unlabelled never counts
    assert most_common_classes(table, 2) == ["a", "b"]
    assert ids(select(table, top_n=1)) == ["1", "2"]
    # background first, then top-N: 'b' (2 left) beats 'a' (1 left)
    assert ids(select(table, top_n=1, no_background=True)) == ["3", "4"]


def test_csv_files_of_one_name_in_two_folders_are_told_apart_by_path(tmp_path):
    """As class folders (Speech Commands): a file name in two folders, without a media_id
    column, names its recordings by their paths; a MediaId given is kept."""
    path = write(
        tmp_path / "labels.csv", "file,label\nyes/0a7c.wav,yes\nno/0a7c.wav,no\nb.wav,no\n"
    )
    assert [r.media_id for r in read_csv(path)] == ["yes/0a7c", "no/0a7c", "b"]


def test_a_csv_row_listing_a_wav_again_is_merged_or_left_out_with_a_warning(tmp_path, caplog):
    """A repeated row: left out; the same file with a second label: one recording, the second
    label a background species (a table with a row for each species heard); two files that
    resampling makes one wav of: left out. Each named."""
    text = "file,label\na.wav,x\nb.wav,y\na.wav,x\nb.wav,z\nc.wav,x\nc.flac,y\nd.wav,y\n"
    recordings = read_csv(write(tmp_path / "labels.csv", text))
    assert [(r.media_id, r.class_id) for r in recordings] == [("a", "x"), ("b", "y"), ("d", "y")]
    assert [r.background for r in recordings] == [[], ["z"], []]
    assert "line 4 repeats an earlier row of a.wav word for word" in caplog.text
    assert "line 5 lists b.wav again, with" in caplog.text
    assert "line 3: one recording (label y; background species: z)" in caplog.text
    assert "(c.wav) and" in caplog.text and "(c.flac) all become c.wav" in caplog.text
    # one file spelt two ways is one file; a media_id row's file is checked too
    text = "file,label,media_id\n./a.wav,x,\na.wav,y,\nb.wav,x,m1\nb.flac,y,\nc.wav,z,\n"
    recordings = read_csv(write(tmp_path / "more.csv", text))
    assert [(r.media_id, r.class_id) for r in recordings] == [("a", "x"), ("c", "z")]


def test_match_audio_reports_both_directions(tmp_path):
    for name in ["1.wav", "sub/2.WAV", "orphan.wav", "song.mp3"]:
        write(tmp_path / name, "")
    table = [recording("1", "a"), Recording("2", "sub/2.wav"), recording("3", "b")]

    present, missing, unused = match_audio(table, tmp_path)

    assert [(r.media_id, r.file) for r in present] == [("1", "1.wav"), ("2", "sub/2.WAV")]
    assert missing == [table[2]] and unused == ["orphan.wav"]


def test_match_audio_finds_a_name_in_another_unicode_normalisation(tmp_path):
    """A CSV typed with é (NFC) names a file a Mac wrote as e and an accent (NFD)."""
    on_disk = unicodedata.normalize("NFD", "Grünfink café.wav")
    write(tmp_path / on_disk, "")
    table = [Recording("Grünfink café", "Grünfink café.wav")]

    present, missing, unused = match_audio(table, tmp_path)

    assert [(r.media_id, r.file) for r in present] == [("Grünfink café", on_disk)]
    assert missing == [] and unused == []
    # a file matched as it is named, or once in another spelling, matches no other row
    for rows in ([Recording("a", on_disk), table[0]], [table[0], Recording("b", table[0].file)]):
        present, missing, _ = match_audio(rows, tmp_path)
        assert [r.media_id for r in present] == [rows[0].media_id] and missing == [rows[1]]


def matched_ids(tmp_path, files: list[str], table: list[tuple[str, str]]) -> tuple[list, list]:
    """match_audio of rows (media_id, file) in a folder of files: ([(media_id, file on disk)]
    of the present, [media_id] of the missing)."""
    for name in files:
        write(tmp_path / name, "")
    present, missing, _ = match_audio([Recording(*row) for row in table], tmp_path)
    return [(r.media_id, r.file) for r in present], [r.media_id for r in missing]


def test_match_audio_finds_files_named_with_folders_the_wav_folder_lacks(tmp_path, caplog):
    """A CSV beside train/ naming train/a.wav, for the audio folder train/ itself."""
    present, missing = matched_ids(
        tmp_path,
        ["a.wav", "sub/b.wav", "c.wav", "d.wav"],
        [("a1", "train/a.wav"), ("a2", "train/a.wav"), ("b", "train/sub/b.wav"),
         ("c1", "train/c.wav"), ("c2", "c.wav"), ("e", "train/e.wav")],
    )  # fmt: skip
    # c.wav is another row's as it is named; two rows of one name and media_ids share it
    assert present == [("a1", "a.wav"), ("a2", "a.wav"), ("b", "sub/b.wav"), ("c2", "c.wav")]
    assert missing == ["c1", "e"]
    assert "3 of the table's files are not at the path it gives" in caplog.text
    assert "train/a.wav as a.wav, train/a.wav as a.wav, train/sub/b.wav as sub/b.wav" in (
        caplog.text
    )


@pytest.mark.parametrize(
    ("files", "table"),
    [
        # a Speech Commands CSV for --audio-dir yes/: no/x.wav is not yes/x.wav
        (["x.wav", "y.wav"], [("nx", "no/x.wav"), ("yx", "yes/x.wav"), ("yy", "yes/y.wav")]),
        (["x.wav"], [("tx", "test/x.wav"), ("rx", "train/x.wav")]),  # one file, two names
        (["a.wav", "b.wav"], [("a", "train/a.wav"), ("b", "test/b.wav")]),  # moved two ways
        (["a.wav"], [("a", "../a.wav")]),  # outside the folder
        (["sub/a.wav"], [("a", "sub/../a.wav")]),
    ],
)
def test_match_audio_moves_no_name_where_the_file_could_be_another_rows(tmp_path, files, table):
    present, missing = matched_ids(tmp_path, files, table)
    assert present == [] and missing == [row[0] for row in table]


def test_match_audio_finds_a_bare_name_as_the_one_file_of_that_name_in_a_subfolder(tmp_path):
    nfd = unicodedata.normalize("NFD", "é.wav")
    present, missing = matched_ids(
        tmp_path,
        ["dog/f.wav", "x/g.wav", "y/g.wav", f"cat/{nfd}"],
        [("f", "f.wav"), ("g", "g.wav"), ("é", "é.wav")],
    )
    assert present == [("f", "dog/f.wav"), ("é", f"cat/{nfd}")] and missing == ["g"]
    # only in a table of bare names: a name with its folder says where the files are
    present, missing = matched_ids(tmp_path, [], [("f", "f.wav"), ("h", "train/h.wav")])
    assert present == [] and missing == ["f", "h"]


def test_a_moved_name_never_takes_a_file_another_row_finds_in_another_spelling(tmp_path):
    nfd = unicodedata.normalize("NFD", "é.wav")
    present, missing = matched_ids(tmp_path, [nfd], [("r1", "train/é.wav"), ("r2", "é.wav")])
    assert present == [("r2", nfd)] and missing == ["r1"]


def test_real_fsdd_metadata(shared_data):
    fsdd = shared_data / "fsdd"
    recordings = read_csv(fsdd / "metadata.csv")

    assert len(recordings) == 3000
    assert sorted({r.class_id for r in recordings}) == [str(digit) for digit in range(10)]
    first = recordings[0]
    assert (first.media_id, first.file) == ("0_george_0", "recordings/0_george_0.wav")
    assert first.fields["speaker"] == "george" and first.fields["split"] == "test"
    present, missing, unused = match_audio(recordings, fsdd)
    assert len(present) == 3000 and missing == [] and unused == []
    assert json.loads(json.dumps([r.fields for r in recordings[:3]]))  # plain JSON types


def test_a_csv_row_with_a_media_id_repeated_word_for_word_is_left_out(tmp_path, caplog):
    """A row pasted twice would have stopped the whole job (its MediaId twice)."""
    text = "file,label,media_id\na.wav,x,1\nb.wav,y,2\na.wav,x,1\n"
    recordings = read_csv(write(tmp_path / "labels.csv", text))
    assert [(r.media_id, r.class_id) for r in recordings] == [("1", "x"), ("2", "y")]
    assert "labels.csv line 4 repeats an earlier row of a.wav word for word" in caplog.text
    # not word for word: one recording, the other labels background species, each once
    text = "file,label,media_id,background\na.wav,x,1,\na.wav,y,1,w\na.wav,w,,x\n"
    recordings = read_csv(write(tmp_path / "other.csv", text))
    assert [(r.media_id, r.class_id, r.background) for r in recordings] == [("1", "x", ["y", "w"])]


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 2, 0]])
def test_rows_of_one_file_make_the_same_recordings_in_any_order(tmp_path, order):
    """A row without a media_id joins the file's row that gives one, wherever it sits; here
    a.wav's media_id 7 is b.wav's too: both named by their files, in one group."""
    rows = ["a.wav,dog,", "b.wav,dog,7", "a.wav,cat,7"]
    text = "file,label,media_id\n" + "".join(rows[i] + "\n" for i in order)
    recordings = {r.media_id: r for r in read_csv(write(tmp_path / "labels.csv", text))}
    assert sorted(recordings) == ["a", "b"]
    assert (recordings["a"].class_id, recordings["a"].background) == ("cat", ["dog"])
    assert recordings["a"].group == recordings["b"].group == "a.wav"


def test_labels_typed_in_either_unicode_form_are_one_class(tmp_path):
    """café typed on a Mac (e and an accent, NFD) and elsewhere (é, NFC): one class, in NFC,
    as the scorer reads labels; in a CSV (background species too) and as class folders."""
    nfd = unicodedata.normalize("NFD", "café")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(f"file,label,background\na.wav,café,\nb.wav,{nfd},{nfd}\n", "utf-8")
    recordings = read_csv(csv_path)
    assert [r.class_id for r in recordings] == ["café", "café"]
    assert recordings[1].background == ["café"]
    for folder, name in ((nfd, "a.wav"), ("café", "b.wav")):
        (tmp_path / "clips" / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / "clips" / folder / name).write_bytes(b"")
    assert {r.class_id for r in read_class_folders(tmp_path / "clips")} == {"café"}


def test_links_of_shared_audio_chain_into_one_group(tmp_path):
    """c.wav and a.wav share media_id 1, a.wav is listed again as 3: one group, named by its
    first file in sorted order, whatever the order of the rows; b.wav listed as 4 and 5
    another; a file alone, with or without a media_id, has none."""
    rows = ["c.wav,x,1", "a.wav,x,1", "b.wav,y,4", "a.wav,x,3", "b.wav,y,5"]
    rows += ["d.wav,y,", "e.wav,y,9"]
    path = write(tmp_path / "labels.csv", "\n".join(["file,label,media_id", *rows, ""]))
    recordings = read_csv(path)
    assert [r.media_id for r in recordings] == ["c", "a", "4", "3", "5", "d", "9"]
    assert [r.group for r in recordings] == ["a.wav", "a.wav", "b.wav", "a.wav", "b.wav", "", ""]
    write(path, "\n".join(["file,label,media_id", *reversed(rows), ""]))
    reordered = {r.media_id: r.group for r in read_csv(path)}
    assert reordered == {r.media_id: r.group for r in recordings}


def test_a_media_id_several_files_share_names_each_by_its_file(tmp_path, caplog):
    """Clips cut from one source recording, its id as their media_id: each clip is a
    recording of its own, named as without a media_id, with a warning, and in one group, named
    by its first file, that a split keeps on one side; media_ids of one file each stay, and a
    file listed twice under one media_id with two labels is one recording."""
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(
        "file,label,media_id\nsrc1_a.wav,dog,7\nsrc1_b.wav,dog,7\nx/c.wav,cat,7\n"
        "d.wav,cat,8\nsub/e.wav,cat,\n"
    )
    recordings = read_csv(csv_path)
    assert [r.media_id for r in recordings] == ["src1_a", "src1_b", "c", "8", "e"]
    assert [r.group for r in recordings] == ["src1_a.wav"] * 3 + ["", ""]
    assert "1 media_id(s) are each given to several files ('7' to" in caplog.text
    csv_path.write_text("file,label,media_id\na.wav,dog,7\na.wav,cat,7\n")  # one recording
    assert [(r.media_id, r.background) for r in read_csv(csv_path)] == [("7", ["cat"])]
