"""Unpacking a downloaded archive (doall.sh --url): into a new folder of its own, and nowhere
else whatever its members are named or are."""

import io
import random
import stat
import tarfile
import zipfile

import pytest

from preprocess.paths import current_umask
from preprocess.unpack import UnpackError, main, unpack


def tar_with(path, *members):
    """A tar.gz of (name, text) files and (name, "->", target) links."""
    with tarfile.open(path, "w:gz") as archive:
        for name, *rest in members:
            member = tarfile.TarInfo(name)
            if rest[0] == "->":
                member.type, member.linkname = tarfile.SYMTYPE, rest[1]
                archive.addfile(member)
            else:
                data = rest[0].encode()
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
    return path


def leftovers(folder):
    return sorted(path.name for path in folder.iterdir() if ".unpacking-" in path.name)


def test_a_tar_goes_into_a_new_folder_once(tmp_path):
    archive = tar_with(tmp_path / "birds.tar.gz", ("TrainingSet/wav/a.wav", "RIFF"))
    out = tmp_path / "data" / "birds"
    assert unpack(archive, out)
    assert (out / "TrainingSet" / "wav" / "a.wav").read_text() == "RIFF"
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~current_umask()  # as mkdir makes it
    assert not unpack(archive, out)  # done: nothing to do
    again = tmp_path / "data" / "birds-again"  # the same archive under another --name
    assert unpack(archive, again) and not unpack(archive, out) and not unpack(archive, again)
    legacy = tmp_path / "old"  # unpacked by doall.sh before unpack.py: its marker inside
    legacy.mkdir()
    (legacy / ".unpacked").write_text("")
    assert not unpack(archive, legacy)


@pytest.mark.parametrize(
    "members",
    [
        [("../escaped.txt", "out")],
        [("TrainingSet/way", "->", "/"), ("TrainingSet/way/victim/escaped.txt", "out")],
        [("TrainingSet/up", "->", "../.."), ("TrainingSet/up/escaped.txt", "out")],
        [(".unpacked", "->", "VICTIM")],  # doall.sh touched this name once unpacked
    ],
)
def test_no_tar_member_lands_outside_the_folder(tmp_path, members):
    victim = tmp_path / "victim"
    victim.mkdir()
    members = [tuple(str(victim / "x") if part == "VICTIM" else part for part in member)
               for member in members]  # fmt: skip
    archive = tar_with(tmp_path / "evil.tar.gz", ("TrainingSet/a.txt", "a"), *members)
    out = tmp_path / "data" / "evil"
    with pytest.raises(UnpackError, match=r"cannot unpack .*evil\.tar\.gz"):
        unpack(archive, out)
    assert not out.exists() and leftovers(tmp_path / "data") == []
    assert list(victim.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "evil.tar.gz.unpacked").exists()


def test_an_absolute_tar_member_lands_inside(tmp_path):
    outside = tmp_path / "absolute.txt"
    archive = tar_with(tmp_path / "birds.tar.gz", (str(outside), "in"))
    out = tmp_path / "data" / "birds"
    assert unpack(archive, out)
    assert not outside.exists()
    assert (out / outside.relative_to("/")).read_text() == "in"


def test_a_zip_keeps_its_members_inside_and_its_links_as_plain_files(tmp_path):
    archive = tmp_path / "birds.zip"
    with zipfile.ZipFile(archive, "w") as members:
        members.writestr("../../escaped.txt", "out")
        link = zipfile.ZipInfo("TrainingSet/way")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        members.writestr(link, "/etc")
    out = tmp_path / "data" / "birds"
    assert unpack(archive, out)
    assert (out / "escaped.txt").read_text() == "out"
    assert not (tmp_path / "escaped.txt").exists()
    way = out / "TrainingSet" / "way"
    assert not way.is_symlink() and way.read_text() == "/etc"


def test_an_existing_folder_is_never_unpacked_into(tmp_path):
    archive = tar_with(tmp_path / "birds.tar.gz", ("notes.txt", "from the archive"))
    out = tmp_path / "birds"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    with pytest.raises(UnpackError, match="exists but was not unpacked"):
        unpack(archive, out)
    link = tmp_path / "linked"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnpackError, match="exists but was not unpacked"):
        unpack(archive, link)
    assert (out / "notes.txt").read_text() == "the user's"
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("damage", ["a byte in the middle", "the checksum", "the end cut"])
def test_a_damaged_compressed_tar_is_an_error_and_leaves_nothing(tmp_path, damage):
    """Python's tarfile stops reading after the last member; tar checks the gzip trailer."""
    rng = random.Random(0)
    text = "".join(rng.choice("abcdefgh") for _ in range(200_000))
    archive = tar_with(tmp_path / "birds.tar.gz", ("TrainingSet/wav/a.wav", text))
    data = bytearray(archive.read_bytes())
    if damage == "a byte in the middle":
        data[len(data) // 2] ^= 0x01
    elif damage == "the checksum":
        data[-8] ^= 0x01  # the CRC32 of the gzip trailer
    else:
        data = data[:-6]
    archive.write_bytes(bytes(data))
    out = tmp_path / "data" / "birds"
    with pytest.raises(UnpackError, match=r"cannot unpack .*birds\.tar\.gz"):
        unpack(archive, out)
    assert not out.exists() and leftovers(tmp_path / "data") == []
    assert not (tmp_path / "birds.tar.gz.unpacked").exists()


def test_errors_are_one_line_and_a_cut_short_unpack_is_named(tmp_path, capsys, caplog):
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not a zip")
    assert main([str(tmp_path / "broken.zip"), str(tmp_path / "broken")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "broken.zip is not a zip or tar archive" in error
    assert not (tmp_path / "broken").exists() and leftovers(tmp_path) == []
    (tmp_path / ".birds.unpacking-k1ll3d").mkdir()  # a kill -9 midway leaves this
    archive = tar_with(tmp_path / "birds.tar", ("a.txt", "a"))
    assert main([str(archive), str(tmp_path / "birds")]) == 0
    assert ".birds.unpacking-k1ll3d: left by an unpack that was cut short" in caplog.text
