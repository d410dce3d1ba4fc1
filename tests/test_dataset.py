"""The HDF5 chunk dataset: schema, atomic writes, raw-chunk copies, and the checking reader."""

import errno
import json
import os
import re
import zlib
from concurrent.futures import ThreadPoolExecutor

import h5py
import hdf5plugin
import numpy as np
import pytest

from preprocess.convert_dataset import main as convert_dataset_main
from preprocess.dataset import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    FORMAT,
    RECORDING_DATASETS,
    ROW_DATASETS,
    DatasetError,
    DatasetInfo,
    RecordingChunks,
    StoredRecordings,
    atomic_dataset,
    complete_shards,
    compress_chunks,
    open_dataset,
    read_rows,
    recording_rows,
    remove_parts,
)
from preprocess.params import FORMAT_VERSION, SpectrogramParams
from preprocess.paths import HDF5_SIGNATURE, RunLocked, exclusive_run
from tests.helpers import write_dataset

PARAMS = SpectrogramParams()
CLASSES = ["aaa", "bbb", "ccc"]
NAMES = {"aaa": "Genus a", "bbb": "Genus b", "ccc": "Genus c"}


def make_chunks(n: int, seed: int) -> np.ndarray:
    """(n, 200, 310) float32 like filtered spectrograms: log values with zeroed cells."""
    rng = np.random.default_rng(seed)
    chunks = rng.normal(2.0, 1.5, (n, PARAMS.n_bins, PARAMS.chunk_frames)).astype(np.float32)
    chunks[:, :, rng.random(PARAMS.chunk_frames) < 0.6] = 0
    return chunks


def make_recordings(compression: str) -> tuple[list[RecordingChunks], list[np.ndarray]]:
    """Four recordings of 3, 1, 2 and 1 chunks; the third unlabelled, the first with a
    background class, the first two clips of one source (a group)."""
    specs = [
        ("m1", "aaa", 0, [0, 0, 1]),
        ("m2", "bbb", 1, [0, 0, 0]),
        ("m3", "", -1, [1, 0, 0]),
        ("m4", "ccc", 2, [0, 0, 0]),
    ]
    items, arrays = [], []
    for seed, ((media_id, class_id, label, background), n) in enumerate(
        zip(specs, [3, 1, 2, 1], strict=True)
    ):
        chunks = make_chunks(n, seed)
        arrays.append(chunks)
        items.append(
            RecordingChunks(
                media_id,
                class_id,
                f"sub/{media_id}.wav",
                label,
                np.array(background, np.uint8),
                n_frames=n * 300,
                duration_s=n * 4.9,
                chunks=compress_chunks(chunks, compression),
                group="src1" if media_id in ("m1", "m2") else "",
            )
        )
    return items, arrays


def info(compression="gzip") -> DatasetInfo:
    return DatasetInfo(PARAMS, CLASSES, NAMES, {"metadata": "test"}, compression, "digest")


@pytest.fixture
def dataset_path(tmp_path):
    path = tmp_path / "data.h5"
    write_dataset(path, info(), make_recordings("gzip")[0])
    return path


def test_schema(dataset_path):
    with h5py.File(dataset_path) as h5:
        n = 7
        expected = {
            "X": ((n, 200, 310, 1), np.float32),
            "y": ((n, 3), np.uint8),
            "label": ((n,), np.int32),
            "background": ((n, 3), np.uint8),
            "chunk_index": ((n,), np.int32),
            "recordings/first_row": ((4,), np.int64),
            "recordings/n_chunks": ((4,), np.int32),
            "recordings/n_frames": ((4,), np.int32),
            "recordings/duration_s": ((4,), np.float32),
            "recordings/label": ((4,), np.int32),
            "recordings/background": ((4, 3), np.uint8),
        }
        for name, (shape, dtype) in expected.items():
            assert h5[name].shape == shape and h5[name].dtype == dtype, name
        for name in (
            "MediaId",
            "ClassId",
            "file",
            *(f"recordings/{s}" for s in ("MediaId", "ClassId", "file")),
        ):
            assert h5py.check_string_dtype(h5[name].dtype).encoding == "utf-8", name
        assert h5["X"].chunks == (1, 200, 310, 1)
        assert h5["X"].compression == "gzip" and h5["X"].shuffle
        assert h5.attrs["format"] == FORMAT and h5.attrs["format_version"] == FORMAT_VERSION
        assert SpectrogramParams.from_json(h5.attrs["params"]) == PARAMS
        assert json.loads(h5.attrs["classes"]) == CLASSES
        assert json.loads(h5.attrs["class_names"]) == NAMES
        assert json.loads(h5.attrs["source"]) == {"metadata": "test"}


def test_rows_follow_recordings(dataset_path):
    items, arrays = make_recordings("gzip")
    with open_dataset(dataset_path) as dataset:
        recordings = dataset.recordings
        assert list(recordings["MediaId"]) == ["m1", "m2", "m3", "m4"]
        assert list(recordings["first_row"]) == [0, 3, 4, 6]
        assert list(dataset["chunk_index"][:]) == [0, 1, 2, 0, 0, 1, 0]
        assert list(dataset["MediaId"].asstr()[:]) == ["m1"] * 3 + ["m2"] + ["m3"] * 2 + ["m4"]
        assert list(dataset["file"].asstr()[:3]) == ["sub/m1.wav"] * 3
        np.testing.assert_array_equal(dataset.X[:, :, :, 0], np.concatenate(arrays))
        label = dataset.label[:]
        assert list(label) == [0, 0, 0, 1, -1, -1, 2]
        y = dataset.y[:]
        np.testing.assert_array_equal(y[label >= 0].argmax(axis=1), label[label >= 0])
        assert y.sum(axis=1).tolist() == [1, 1, 1, 1, 0, 0, 1]  # one-hot, none unlabelled
        assert list(dataset["ClassId"].asstr()[:]) == ["aaa"] * 3 + ["bbb", "", "", "ccc"]
        np.testing.assert_array_equal(
            dataset["background"][:], recordings["background"][[0, 0, 0, 1, 2, 2, 3]]
        )
        assert recordings["background"][0].tolist() == [0, 0, 1]
        assert list(recordings["group"]) == ["src1", "src1", "", ""]


def test_a_file_of_an_older_version_reads_as_recordings_alone(dataset_path):
    """Files written before input_key and group read '' for both: no recording in a group."""
    with h5py.File(dataset_path, "r+") as h5:
        del h5["recordings/group"], h5["recordings/input_key"]
    with open_dataset(dataset_path) as dataset:
        assert list(dataset.recordings["group"]) == [""] * 4
        assert list(dataset.recordings["input_key"]) == [""] * 4


def test_recording_rows(dataset_path):
    with open_dataset(dataset_path) as dataset:
        assert recording_rows(dataset.recordings, [2, 0]).tolist() == [4, 5, 0, 1, 2]
        mask = np.array([False, True, False, True])
        assert recording_rows(dataset.recordings, mask).tolist() == [3, 6]
        assert recording_rows(dataset.recordings, []).tolist() == []


def copy_all(sources: list, out, info: DatasetInfo) -> None:
    """Every recording of the dataset files sources, in order, copied raw into out."""
    with atomic_dataset(out, info) as writer:
        for path in sources:
            source = StoredRecordings(path)
            for index in range(len(source)):
                writer.append(source.recording(index))
            source.close()


@pytest.mark.parametrize("compression", list(COMPRESSIONS))
def test_shards_copied_raw_give_the_same_rows(tmp_path, compression):
    items, arrays = make_recordings(compression)
    parts = tmp_path / "out.h5.parts"
    parts.mkdir()
    for number, (start, stop) in zip([0, 1, 10], [(0, 1), (1, 3), (3, 4)], strict=True):
        with atomic_dataset(parts / f"part-{number:05d}.h5", info(compression)) as writer:
            for item in items[start:stop]:
                writer.append(item)
    (parts / "part-00011.h5.tmp").write_bytes(b"a shard cut short")
    shards = complete_shards(parts)
    assert [p.name for p in shards] == ["part-00000.h5", "part-00001.h5", "part-00010.h5"]
    with open_dataset(shards[1]) as shard:  # every shard is a dataset by itself
        assert list(shard.recordings["MediaId"]) == ["m2", "m3"]

    copy_all(shards, tmp_path / "out.h5", info(compression))
    write_dataset(tmp_path / "direct.h5", info(compression), items)
    with open_dataset(tmp_path / "out.h5") as merged, h5py.File(tmp_path / "direct.h5") as h5:
        assert filter_ids(merged.X) == filter_ids(h5["X"])
        assert (
            filter_ids(merged.X)[-1:]
            == {
                "blosc2-lz4": (hdf5plugin.BLOSC2_ID,),
                "gzip": (h5py.h5z.FILTER_DEFLATE,),
                "lzf": (h5py.h5z.FILTER_LZF,),
                "none": (),
            }[compression]
        )
        np.testing.assert_array_equal(merged.X[:, :, :, 0], np.concatenate(arrays))
        for name in h5:  # every dataset, per row and per recording
            if name != "X":
                for each in h5[name].values() if name == "recordings" else [h5[name]]:
                    np.testing.assert_array_equal(merged[each.name][:], each[:], err_msg=each.name)
    assert not (tmp_path / "out.h5.tmp").exists()


def test_an_atomic_write_that_fails_leaves_nothing(tmp_path):
    items, _ = make_recordings("gzip")
    out = tmp_path / "out.h5"
    with pytest.raises(KeyboardInterrupt), atomic_dataset(out, info("gzip")) as writer:
        writer.append(items[0])
        assert (tmp_path / "out.h5.tmp").exists()
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_compressed_bytes_are_what_hdf5_stores(tmp_path):
    """The workers' compressed chunks must read back through HDF5's filters, including a
    chunk of random bits that lzf cannot compress (HDF5 then stores it unfiltered)."""
    chunks = make_chunks(2, seed=7)
    bits = np.random.default_rng(8).integers(0, 2**30, chunks[1].shape, dtype=np.uint32)
    chunks[1] = bits.view(np.float32)  # finite floats: exponent bits stay below 128
    sizes = {}
    for compression in COMPRESSIONS:
        stored = compress_chunks(chunks, compression)
        if compression == "lzf":
            assert stored[1].filter_mask != 0  # the incompressible case is exercised
        item = RecordingChunks("m", "aaa", "m.wav", 0, np.zeros(3, np.uint8), 600, 9.8, stored)
        write_dataset(tmp_path / "one.h5", info(compression), [item])
        copy_all([tmp_path / "one.h5", tmp_path / "one.h5"], tmp_path / "two.h5", info(compression))
        with h5py.File(tmp_path / "two.h5") as h5:
            np.testing.assert_array_equal(h5["X"][:, :, :, 0], np.concatenate([chunks, chunks]))
        sizes[compression] = (tmp_path / "one.h5").stat().st_size
    assert sizes["gzip"] < sizes["none"] * 0.8


@pytest.mark.parametrize("compression", list(COMPRESSIONS))
def test_read_rows_equals_hdf5(tmp_path, compression):
    items, arrays = make_recordings(compression)
    write_dataset(tmp_path / "data.h5", info(compression), items)
    with h5py.File(tmp_path / "data.h5") as h5:
        for rows in ([0, 2, 3, 6], [1], list(range(7)), []):
            x = read_rows(h5["X"], np.array(rows, dtype=np.int64))
            assert x.dtype == np.float32 and x.shape == (len(rows), 200, 310, 1)
            np.testing.assert_array_equal(x[:, :, :, 0], np.concatenate(arrays)[rows])


def test_read_rows_from_several_threads_on_one_handle(dataset_path):
    """As ChunkBatches' reader threads do."""
    expected = np.concatenate(make_recordings("gzip")[1])
    rng = np.random.default_rng(0)
    batches = [np.sort(rng.choice(7, 4, replace=False)) for _ in range(200)]
    with h5py.File(dataset_path) as h5, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda rows: read_rows(h5["X"], rows), batches))
    for rows, x in zip(batches, results, strict=True):
        np.testing.assert_array_equal(x[:, :, :, 0], expected[rows])


def test_read_rows_of_chunks_hdf5_left_unfiltered_or_damaged(tmp_path):
    chunks = make_chunks(3, seed=3)
    stored = compress_chunks(chunks, "gzip")
    shuffled = chunks[1].view(np.uint8).reshape(-1, 4).T.tobytes()
    stored[1] = stored[1]._replace(filter_mask=0b10, data=shuffled)  # deflate skipped
    item = RecordingChunks("m", "aaa", "m.wav", 0, np.zeros(3, np.uint8), 900, 9.8, stored)
    write_dataset(tmp_path / "one.h5", info(), [item])
    with h5py.File(tmp_path / "one.h5") as h5:
        np.testing.assert_array_equal(read_rows(h5["X"], np.arange(3))[:, :, :, 0], chunks)

    # HDF5's deflate filter does not check the inflated length, so a well-formed stream of
    # the wrong length is caught only under the default compression
    damages = {"gzip": [stored[2].data[:1000]]}
    default_rows = compress_chunks(chunks, DEFAULT_COMPRESSION)
    damages[DEFAULT_COMPRESSION] = [default_rows[2].data[:1000], zlib.compress(bytes(1000))]
    for compression, damaged_rows in damages.items():
        rows = stored if compression == "gzip" else default_rows
        item = RecordingChunks("m", "aaa", "m.wav", 0, np.zeros(3, np.uint8), 900, 9.8, rows)
        for damaged in damaged_rows:  # cut, or another stream
            write_dataset(tmp_path / "one.h5", info(compression), [item])
            with h5py.File(tmp_path / "one.h5", "a") as h5:
                h5["X"].id.write_direct_chunk((2, 0, 0, 0), damaged)
            with h5py.File(tmp_path / "one.h5") as h5, pytest.raises(DatasetError, match="row 2"):
                read_rows(h5["X"], np.arange(3))


def filter_ids(x: h5py.Dataset) -> tuple[int, ...]:
    plist = x.id.get_create_plist()
    return tuple(plist.get_filter(i)[0] for i in range(plist.get_nfilters()))


def test_the_default_compression_is_lossless_and_read_through_hdf5plugin(tmp_path):
    items, arrays = make_recordings(DEFAULT_COMPRESSION)
    write_dataset(tmp_path / "data.h5", info(DEFAULT_COMPRESSION), items)
    with open_dataset(tmp_path / "data.h5") as dataset:
        assert dataset.info.compression == "blosc2-lz4"
        assert hdf5plugin.BLOSC2_ID in filter_ids(dataset.X)
        np.testing.assert_array_equal(dataset.X[...][..., 0], np.concatenate(arrays))


@pytest.mark.parametrize("source, target", [("gzip", "blosc2-lz4"), ("blosc2-lz4", "gzip")])
def test_convert_dataset_keeps_everything_but_the_filter(tmp_path, source, target):
    write_dataset(tmp_path / "in.h5", info(source), make_recordings(source)[0])
    assert (
        convert_dataset_main(
            [str(tmp_path / "in.h5"), str(tmp_path / "out.h5"), "--compression", target]
        )
        == 0
    )
    with h5py.File(tmp_path / "in.h5") as old, open_dataset(tmp_path / "out.h5") as new:
        assert new.info.compression == target
        assert filter_ids(new.X)[-1] != filter_ids(old["X"])[-1]
        assert new.X.chunks == old["X"].chunks and new.X.maxshape == old["X"].maxshape
        for name in ROW_DATASETS + tuple(f"recordings/{n}" for n in RECORDING_DATASETS):
            np.testing.assert_array_equal(new[name][...], old[name][...], err_msg=name)
        for name, value in old.attrs.items():
            if name != "compression":
                assert new.file.attrs[name] == value, name
    assert not (tmp_path / "out.h5.tmp").exists()


def test_convert_dataset_refuses_to_overwrite_and_names_bad_input(tmp_path, dataset_path, capsys):
    (tmp_path / "taken.h5").write_bytes(b"")
    for argv in (
        [str(dataset_path), str(tmp_path / "taken.h5")],
        [str(tmp_path / "missing.h5"), str(tmp_path / "new.h5")],
    ):
        assert convert_dataset_main(argv) == 2
        assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "new.h5").exists()


def test_convert_dataset_never_writes_through_a_link_at_its_old_temporary_name(tmp_path):
    """A link planted where convert_dataset.py used to write (OUT.tmp) or at OUT itself: the
    file it points to is never written, the link never replaced; OUT is a file of its own."""
    write_dataset(tmp_path / "in.h5", info("gzip"), make_recordings("gzip")[0])
    victim = tmp_path / "victim" / "a.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"the victim's text")
    folder = tmp_path / "P4"
    folder.mkdir()
    (folder / "conv.h5.tmp").symlink_to(victim)
    argv = [str(tmp_path / "in.h5"), str(folder / "conv.h5"), "--compression", "blosc2-lz4"]
    assert convert_dataset_main(argv) == 0
    assert victim.read_bytes() == b"the victim's text"
    assert (folder / "conv.h5").is_file() and not (folder / "conv.h5").is_symlink()
    with open_dataset(folder / "conv.h5") as converted:
        assert converted.info.compression == "blosc2-lz4"
    assert (folder / "conv.h5.tmp").readlink() == victim  # left as it was
    assert sorted(path.name for path in folder.iterdir()) == ["conv.h5", "conv.h5.tmp"]

    (folder / "dangling.h5").symlink_to(tmp_path / "nowhere.h5")  # OUT a broken link: refused
    assert convert_dataset_main([str(tmp_path / "in.h5"), str(folder / "dangling.h5")]) == 2
    assert not (tmp_path / "nowhere.h5").exists() and (folder / "dangling.h5").is_symlink()


def test_remove_parts_deletes_shard_files_only_and_never_through_a_link(tmp_path):
    parts = tmp_path / "out.h5.parts"
    parts.mkdir()
    (parts / "part-00000.h5").write_bytes(b"a shard")
    (parts / "part-00001.h5.tmp").write_bytes(b"a shard cut short")
    remove_parts(parts)
    assert not parts.exists()

    parts.mkdir()
    (parts / "part-00000.h5").write_bytes(b"a shard")
    (parts / "notes.txt").write_text("the user's")
    remove_parts(parts)
    assert [path.name for path in parts.iterdir()] == ["notes.txt"]

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "part-00000.h5").write_bytes(b"the victim's")
    (victim / "c.tmp").write_bytes(b"the victim's")
    link = tmp_path / "link.h5.parts"
    link.symlink_to(victim)
    remove_parts(link)
    assert link.is_symlink() and sorted(path.name for path in victim.iterdir()) == [
        "c.tmp",
        "part-00000.h5",
    ]


def test_convert_dataset_leaves_nothing_behind_on_a_damaged_row(tmp_path, capsys):
    write_dataset(tmp_path / "in.h5", info("gzip"), make_recordings("gzip")[0])
    with h5py.File(tmp_path / "in.h5", "a") as h5:
        h5["X"].id.write_direct_chunk((1, 0, 0, 0), b"not deflated at all", 0)
    argv = [str(tmp_path / "in.h5"), str(tmp_path / "out.h5"), "--compression", "blosc2-lz4"]
    assert convert_dataset_main(argv) == 2
    assert "error: " in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.h5"]


def test_an_empty_dataset_is_valid(tmp_path):
    write_dataset(tmp_path / "empty.h5", DatasetInfo(PARAMS, [], {}), [])
    with open_dataset(tmp_path / "empty.h5") as dataset:
        assert len(dataset) == 0 and dataset.y.shape == (0, 0)


def rewrite_attr(path, name, value):
    with h5py.File(path, "a") as h5:
        if value is None:
            del h5.attrs[name]
        else:
            h5.attrs[name] = value


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("format_version", FORMAT_VERSION + 1, "format version"),
        ("format", "something-else", "format 'something-else'"),
        ("classes", None, "missing attributes ['classes']"),
        (
            "params",
            json.dumps({**json.loads(PARAMS.to_json()), "nfft": None, "new": 1}),
            "do not match this version",
        ),
    ],
)
def test_open_dataset_rejects_other_files(dataset_path, name, value, message):
    rewrite_attr(dataset_path, name, value)
    with pytest.raises(DatasetError, match=re.escape(message)) as error:
        open_dataset(dataset_path)
    assert str(dataset_path) in str(error.value)


def test_open_dataset_rejects_non_datasets(tmp_path, dataset_path):
    (tmp_path / "notes.txt").write_text("not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        open_dataset(tmp_path / "notes.txt")
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "plain.h5", "w") as h5:
        h5["X"] = np.zeros(3)
    with pytest.raises(DatasetError, match="missing attributes"):
        open_dataset(tmp_path / "plain.h5")
    with h5py.File(dataset_path, "a") as h5:
        del h5["recordings/n_frames"]
    with pytest.raises(DatasetError, match=r"missing \['recordings/n_frames'\]"):
        open_dataset(dataset_path)


def test_exclusive_run_refuses_a_second_holder_and_frees_the_lock_after(tmp_path):
    lock = tmp_path / "out" / "train.h5.lock"
    with exclusive_run(lock, "train.h5"):
        assert lock.read_text().strip() == str(os.getpid())
        refused = pytest.raises(RunLocked, match=rf"pid {os.getpid()}, lock {lock}")
        with refused, exclusive_run(lock, "train.h5"):
            pass
    for _ in range(2):  # released, also after a refusal: later runs take it in turn
        with exclusive_run(lock, "train.h5"):
            pass


@pytest.mark.parametrize("outside", ["external link", "external storage", "virtual"])
def test_open_dataset_refuses_data_kept_in_other_files(dataset_path, tmp_path, outside):
    """A received dataset naming another file (a private one, say) as its data: HDF5 would
    read that file as its own, and training, images or conversion write its content out."""
    private = tmp_path / "private.bin"
    private.write_bytes(np.arange(7, dtype="<i4").tobytes())
    with h5py.File(dataset_path, "a") as h5:
        if outside == "external link":
            h5["recordings/extra"] = h5py.ExternalLink(str(private), "/X")
        else:
            del h5["chunk_index"]
            if outside == "external storage":
                h5.create_dataset("chunk_index", (7,), "<i4", external=[(str(private), 0, 28)])
            else:
                with h5py.File(tmp_path / "other.h5", "w") as other:
                    other["values"] = np.arange(7, dtype=np.int32)
                layout = h5py.VirtualLayout((7,), np.int32)
                layout[:] = h5py.VirtualSource(tmp_path / "other.h5", "values", shape=(7,))
                h5.create_virtual_dataset("chunk_index", layout)
    with pytest.raises(DatasetError, match="links to another file|stored in other files"):
        open_dataset(dataset_path)


def test_exclusive_run_never_writes_a_hard_linked_lock_file(tmp_path):
    """A lock file planted as a second name of another file (a received output folder): the
    pid would overwrite that file's content."""
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's notes\n")
    (tmp_path / "out").mkdir()
    lock = tmp_path / "out" / ".lock"
    os.link(victim, lock)
    with pytest.raises(OSError, match="not a file of its own"), exclusive_run(lock, "out"):
        pass
    assert victim.read_text() == "the user's notes\n"
    lock.unlink()
    with exclusive_run(lock, "out"):  # once removed, the run takes a lock of its own
        assert lock.read_text().strip() == str(os.getpid())


def test_exclusive_run_never_truncates_a_file_that_holds_more_than_a_pid(tmp_path):
    """A file of the user's that happens to be named as the lock (OUT_DIR/.lock)."""
    lock = tmp_path / ".lock"
    lock.write_text("important notes\n")
    refused = pytest.raises(OSError, match="holds something other than a process id")
    with refused, exclusive_run(lock, "out"):
        pass
    assert lock.read_text() == "important notes\n"
    lock.write_text("12345\n")  # an earlier run's
    with exclusive_run(lock, "out"):
        assert lock.read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("first_row", "recordings/first_row does not follow recordings/n_chunks"),
        ("label", "recordings/label holds -1..7, not class indices of its 3 classes"),
        ("short table", "recordings/ClassId has 1 rows, recordings/MediaId"),
        ("numbers for names", "recordings/MediaId holds int64, not text"),
        ("bytes", "damaged, cannot read its tables"),
    ],
)
def test_open_dataset_names_a_damaged_recordings_table(dataset_path, damage, message):
    with h5py.File(dataset_path, "a") as h5:
        table = h5["recordings"]
        if damage == "first_row":
            table["first_row"][0] = 5
        elif damage == "label":
            table["label"][-1] = 7
        elif damage in ("short table", "numbers for names"):
            name = "ClassId" if damage == "short table" else "MediaId"
            del table[name]
            n = len(table["n_chunks"])
            table[name] = np.array(["x"], dtype=object) if damage == "short table" else range(n)
        offset = table["MediaId"].id.get_chunk_info(0).byte_offset if damage == "bytes" else 0
    if damage == "bytes":  # the table's bytes on disk overwritten: HDF5 reads garbage or fails
        table_bytes = bytearray(dataset_path.read_bytes())
        table_bytes[offset : offset + 64] = b"\xff" * 64
        dataset_path.write_bytes(bytes(table_bytes))
    with pytest.raises(DatasetError, match=re.escape(message)) as error:
        open_dataset(dataset_path)
    assert str(dataset_path) in str(error.value)


def test_an_hdf5_file_that_would_not_open_is_told_from_one_that_is_not_hdf5(tmp_path, monkeypatch):
    """load_data deletes a shard that is no dataset, and keeps one HDF5 would not open (held
    by another program, too many files open): the two errors tell which."""
    from preprocess import dataset as dataset_module

    hdf5, text = tmp_path / "held.h5", tmp_path / "text.h5"
    hdf5.write_bytes(HDF5_SIGNATURE + b"the rest of a file held elsewhere")
    text.write_text("not HDF5")
    assert dataset_module.not_opened(hdf5) is dataset_module.DatasetNotOpened
    assert dataset_module.not_opened(text) is DatasetError

    def too_many_files_open(*_args, **_kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(dataset_module, "open", too_many_files_open, raising=False)
    assert dataset_module.not_opened(text) is dataset_module.DatasetNotOpened
