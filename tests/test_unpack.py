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


def test_a_tar_member_named_outside_stops_the_unpack(tmp_path):
    archive = tar_with(tmp_path / "evil.tar.gz", ("TrainingSet/a.txt", "a"), ("../out.txt", "x"))
    out = tmp_path / "data" / "evil"
    with pytest.raises(UnpackError, match=r"cannot unpack .*evil\.tar\.gz"):
        unpack(archive, out)
    assert not out.exists() and leftovers(tmp_path / "data") == []
    assert not (tmp_path / "data" / "out.txt").exists()
    assert not (tmp_path / "evil.tar.gz.unpacked").exists()


@pytest.mark.parametrize(
    "members",
    [
        [("TrainingSet/way", "->", "/"), ("TrainingSet/way/victim/escaped.txt", "out")],
        [("TrainingSet/up", "->", "../.."), ("TrainingSet/up/escaped.txt", "out")],
        [(".unpacked", "->", "VICTIM")],  # doall.sh touched this name once unpacked
        [("TrainingSet/inside", "->", "a.txt")],  # even a link that stays inside
    ],
)
def test_a_tar_link_is_skipped_and_named(tmp_path, caplog, members):
    victim = tmp_path / "victim"
    victim.mkdir()
    members = [tuple(str(victim / "x") if part == "VICTIM" else part for part in member)
               for member in members]  # fmt: skip
    archive = tar_with(tmp_path / "evil.tar.gz", ("TrainingSet/a.txt", "a"), *members)
    out = tmp_path / "data" / "evil"
    assert unpack(archive, out)
    assert (out / "TrainingSet" / "a.txt").read_text() == "a"
    assert not any(path.is_symlink() for path in out.rglob("*"))
    assert f"{members[0][0]}: a link (to {members[0][2]}) in the archive, skipped" in caplog.text
    assert list(victim.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()


def test_chained_tar_links_past_path_max_write_nothing_outside(tmp_path):
    """CVE-2025-4517: links nested until a path is longer than PATH_MAX, where realpath stops
    resolving, let tarfile's "data" filter pass a link out (Python before 3.11.13, 3.12.11),
    and a hard link then wrote through it."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "flag").write_text("the user's")
    long_name, steps, path = "d" * 247, "abcdefghijklmnop", ""
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:

        def add(name, kind, link="", data=b""):
            member = tarfile.TarInfo(name)
            member.type, member.linkname, member.size = kind, link, len(data)
            tar.addfile(member, io.BytesIO(data) if data else None)

        for step in steps:
            add(f"{path}{long_name}", tarfile.DIRTYPE)
            add(f"{path}{step}", tarfile.SYMTYPE, long_name)
            path += f"{long_name}/"
        chain = "/".join([*steps, "l" * 254])
        add(chain, tarfile.SYMTYPE, "../" * len(steps))
        # as a string, these ../ climb back to the destination; resolved, to /
        up = "../" * (len(steps) + 1)
        add("escape", tarfile.SYMTYPE, chain + "/" + up + str(victim).lstrip("/"))
        add("flaglink", tarfile.LNKTYPE, "escape/flag")
        add("flaglink", tarfile.REGTYPE, data=b"written by the archive")
    out = tmp_path / "data" / "evil"
    assert unpack(archive, out)
    assert (out / "flaglink").read_text() == "written by the archive"  # a file of its own
    assert (victim / "flag").read_text() == "the user's"
    assert sorted(path.name for path in victim.iterdir()) == ["flag"]


def test_a_foreign_file_at_the_markers_name_is_left_as_it_is(tmp_path):
    archive = tar_with(tmp_path / "birds.tar.gz", ("a.txt", "a"))
    someone_elses = tmp_path / "birds.tar.gz.unpacked"  # a download of that name, say
    someone_elses.write_bytes(b"\x1f\x8b\x08 a gzip of someone's")
    with pytest.raises(UnpackError, match="not the marker this command writes"):
        unpack(archive, tmp_path / "birds")
    assert someone_elses.read_bytes() == b"\x1f\x8b\x08 a gzip of someone's"
    assert not (tmp_path / "birds").exists()
    someone_elses.write_text("notes about birds\n")  # text, but not a list of folders
    with pytest.raises(UnpackError, match="not the marker"):
        unpack(archive, tmp_path / "birds")


def test_a_marker_of_the_version_before_its_header_is_read(tmp_path):
    archive = tar_with(tmp_path / "birds.tar.gz", ("a.txt", "a"))
    out = tmp_path / "birds"
    out.mkdir()
    (tmp_path / "birds.tar.gz.unpacked").write_text(f"{out.resolve()}\n")
    assert not unpack(archive, out)  # already done
    assert unpack(archive, tmp_path / "again")
    lines = (tmp_path / "birds.tar.gz.unpacked").read_text().splitlines()
    assert lines[1:] == [str(out.resolve()), str((tmp_path / "again").resolve())]


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
