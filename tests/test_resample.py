"""Resampling to 16 kHz mono 16-bit: SoX script and soxr fallback, on generated and real files."""

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from scipy.io import wavfile

from preprocess import resample
from preprocess.paths import OutputPathError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "preprocess" / "resample_wavs_to_16k.sh"
ODD_NAME = 'it\'s "quoted" ü [1].WAV'  # quotes, unicode, a glob pattern, upper-case extension

# what a run keeps in its output folder besides the wavs
HIDDEN = [".resample.lock", ".sources.json"]

needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="SoX is not installed")


def sox(*args: object) -> None:
    subprocess.run(["sox", *map(str, args)], check=True, capture_output=True)


def synth(path: Path, seconds: float, rate: int, bits=16, channels=1, sound="sine 440") -> None:
    """Write a generated sound with SoX (repeatable: -R seeds its noise); `sound` is the rest
    of the synth effect's arguments."""
    sox("-R", "-n", "-r", rate, "-b", bits, "-c", channels, path, "synth", seconds, *sound.split())


def run_script(in_dir: Path, out_dir: Path, *options: str, env=None):
    return subprocess.run(
        ["bash", str(SCRIPT), *options, "--", str(in_dir), str(out_dir)],
        capture_output=True,
        text=True,
        env=env,
    )


def read_16k(path: Path) -> np.ndarray:
    """The samples of an output file, after checking that it is 16 kHz 16-bit mono."""
    rate, data = wavfile.read(path)
    assert (rate, data.dtype, data.ndim) == (16000, np.int16, 1), path
    return data


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A folder of generated audio: good files in several formats, and two broken ones."""
    if shutil.which("sox") is None:
        pytest.skip("SoX is not installed (it makes these inputs)")
    in_dir = tmp_path / "in"
    (in_dir / "sub dir").mkdir(parents=True)
    # left channel a 0.5 full-scale tone, right silent: mixed down, the peak halves
    stereo = "sine 1000 sine 1000 remix 1v0.5 2v0"
    synth(in_dir / "stereo24.wav", 2, 44100, bits=24, channels=2, sound=stereo)
    synth(in_dir / "sub dir" / "low8k.wav", 1.5, 8000)
    synth(in_dir / "song.flac", 1, 22050)
    synth(in_dir / ODD_NAME, 0.5, 16000)
    synth(in_dir / "-dash\nnewline.wav", 0.25, 16000)
    (in_dir / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(100))
    (in_dir / "empty.wav").write_bytes(b"")
    (in_dir / "notes.txt").write_text("not audio")
    return in_dir


EXPECTED_SAMPLES = {  # output file -> 16 kHz samples
    "stereo24.wav": 32000,
    "sub dir/low8k.wav": 24000,
    "song.wav": 16000,
    ODD_NAME[:-4] + ".wav": 8000,
    "-dash\nnewline.wav": 4000,
}


@needs_sox
def test_script_converts_every_readable_file_and_names_the_broken_ones(inputs, tmp_path):
    out_dir = tmp_path / "out"
    result = run_script(inputs, out_dir, "--jobs", "2")

    assert result.returncode == 1, result.stdout + result.stderr
    for name, n_samples in EXPECTED_SAMPLES.items():
        assert len(read_16k(out_dir / name)) == n_samples, name
    stereo = read_16k(out_dir / "stereo24.wav").astype(float)
    assert np.abs(stereo).max() == pytest.approx(0.25 * 32768, rel=0.01)  # channels averaged
    summary = result.stdout[result.stdout.index("summary:") :]
    assert "5 converted, 0 already done, 2 failed" in summary
    # empty.wav has no RIFF header: SoX refuses it by its name, libsndfile reads no format in it
    assert "corrupt.wav: sox FAIL" in summary and "empty.wav: empty file" in summary
    assert not (out_dir / "corrupt.wav").exists() and not (out_dir / "notes.wav").exists()
    assert not list(out_dir.rglob("*part"))


@needs_sox
def test_script_resumes_skips_done_files_and_ignores_a_stale_temp(inputs, tmp_path):
    for broken in ("corrupt.wav", "empty.wav"):
        (inputs / broken).unlink()
    out_dir = tmp_path / "out"
    assert run_script(inputs, out_dir).returncode == 0
    first = {name: (out_dir / name).stat().st_mtime_ns for name in EXPECTED_SAMPLES}
    # a killed run leaves a half-written temp file, and no finished output
    (out_dir / "song.wav").unlink()
    (out_dir / "song.wav.resample-part").write_bytes(b"RIFF half written")
    # an input edited after its conversion is converted again
    edited = inputs / "sub dir" / "low8k.wav"
    os.utime(edited, (edited.stat().st_atime, edited.stat().st_mtime + 3600))

    result = run_script(inputs, out_dir, "--jobs", "1")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 converted, 3 already done, 0 failed" in result.stdout
    assert len(read_16k(out_dir / "song.wav")) == 16000
    assert not (out_dir / "song.wav.resample-part").exists()
    for name, mtime in first.items():
        if name not in ("song.wav", "sub dir/low8k.wav"):
            assert (out_dir / name).stat().st_mtime_ns == mtime, f"{name} was redone"


@needs_sox
def test_sox_writes_a_file_made_here_never_a_link_put_at_its_name(tmp_path):
    """Someone who can write into the output folder puts a link at the temporary name between
    its removal and SoX's start: SoX, given the name, wrote through it into their target."""
    source = tmp_path / "song.wav"
    wavfile.write(source, 44100, (np.sin(np.arange(44100 * 2) / 9) * 9000).astype(np.int16))
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's")
    part = tmp_path / "song.wav.resample-part"
    part.symlink_to(victim)
    with pytest.raises(FileExistsError):
        resample.sox_resample(source, part)
    assert victim.read_text() == "the user's"
    part.unlink()
    resample.sox_resample(source, part)  # to its standard output: the bytes SoX writes by name
    by_name = tmp_path / "by name.wav"
    command = ["sox", "-D", source, "-t", "wav", "-r", "16000", "-c", "1", "-b", "16"]
    subprocess.run([*command, "-e", "signed-integer", by_name], check=True)
    assert part.read_bytes() == by_name.read_bytes()
    assert len(read_16k(part)) == 32000


@pytest.mark.parametrize("sox", [True, False], ids=["SoX", "soxr"])
def test_a_wav_header_the_data_cannot_be_fails_by_name_with_either_resampler(tmp_path, sox):
    """SoX wrote a truncated wav's first second with a warning (an RF64 wav's too, whose size
    is in its ds64 chunk), and 16,000 samples for each sample of a wav whose header said 1 Hz,
    where the path without it refused them all."""
    if sox and shutil.which("sox") is None:
        pytest.skip("SoX is not installed")
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    tone = (np.sin(np.arange(32000) / 5) * 8000).astype("<i2").tobytes()
    header = b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16) + b"data"
    riff = b"RIFF" + struct.pack("<I", 36 + len(tone))
    (in_dir / "cut.wav").write_bytes(riff + header + struct.pack("<I", 0x7FFFFFFF) + tone)
    soundfile.write(tmp_path / "rf64.wav", np.zeros(32000, np.int16), 16000, format="RF64")
    (in_dir / "cut rf64.wav").write_bytes((tmp_path / "rf64.wav").read_bytes()[:40000])
    wavfile.write(in_dir / "one_hz.wav", 1, np.zeros(20000, np.int16))
    wavfile.write(in_dir / "good.wav", 16000, np.zeros(1600, np.int16))
    assert resample.main([*([] if sox else ["--soxr"]), str(in_dir), str(out_dir)]) == 1
    assert sorted(path.name for path in out_dir.glob("*.wav")) == ["good.wav"]


@pytest.mark.parametrize("sox", [True, False], ids=["SoX", "soxr"])
def test_a_wav_written_to_a_pipe_is_converted_whole_with_either_resampler(tmp_path, sox):
    """ffmpeg writing to a pipe leaves 0xFFFFFFFF as the sizes: SoX warns of a premature end,
    yet the file is whole."""
    if sox and shutil.which("sox") is None:
        pytest.skip("SoX is not installed")
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    wavfile.write(tmp_path / "file.wav", 44100, (np.arange(88200) % 200 * 100).astype(np.int16))
    data = bytearray((tmp_path / "file.wav").read_bytes())
    data[4:8] = data[40:44] = b"\xff\xff\xff\xff"  # the RIFF and data sizes
    (in_dir / "piped.wav").write_bytes(bytes(data))
    assert resample.main([*([] if sox else ["--soxr"]), str(in_dir), str(out_dir)]) == 0
    assert len(read_16k(out_dir / "piped.wav")) == 32000


@needs_sox
def test_script_output_is_repeatable_to_the_bit(inputs, tmp_path):
    run_script(inputs, tmp_path / "a")
    run_script(inputs, tmp_path / "b")
    for name in EXPECTED_SAMPLES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@needs_sox
@pytest.mark.parametrize("extension", ["mp3", "ogg", "wv"])
def test_script_reads_compressed_formats(tmp_path, extension):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    try:
        synth(in_dir / f"Clip.{extension.upper()}", 2, 44100, channels=2)
    except subprocess.CalledProcessError as error:
        pytest.skip(f"this SoX cannot write {extension} (libsox-fmt-all): {error.stderr!r}")

    result = run_script(in_dir, tmp_path / "out")

    assert result.returncode == 0, result.stdout + result.stderr
    samples = read_16k(tmp_path / "out" / "Clip.wav")
    assert abs(len(samples) - 32000) < 0.1 * 16000  # codecs pad a little


@pytest.fixture
def plain_inputs(tmp_path: Path) -> Path:
    """A folder with one 8 kHz wav, written without SoX: for the checks of both paths."""
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    wavfile.write(in_dir / "a.wav", 8000, np.zeros(800, np.int16))
    return in_dir


@pytest.mark.parametrize("out_name", [".", "inside", "inside/deeper", ".."])
def test_script_refuses_an_output_folder_that_overlaps_the_input(plain_inputs, out_name):
    result = run_script(plain_inputs, plain_inputs / out_name)
    assert result.returncode == 2
    assert "must be separate" in result.stderr
    assert not (plain_inputs / "inside").exists()


def test_script_rejects_bad_arguments(plain_inputs, tmp_path):
    assert run_script(plain_inputs, tmp_path / "out", "--jobs", "0").returncode == 2
    assert run_script(plain_inputs, tmp_path / "out", "--jobs", "1000000").returncode == 2
    assert run_script(plain_inputs, tmp_path / "out", "--jobs", "9" * 30).returncode == 2
    assert run_script(tmp_path / "missing", tmp_path / "out").returncode == 2


def nan_wav(path: Path) -> None:
    """A float wav whose samples include NaN: SoX alone would turn them into -32768 clicks."""
    samples = (0.5 * np.sin(np.arange(22050) / 5)).astype(np.float32)
    samples[1000:1010] = np.nan
    wavfile.write(path, 22050, samples)


@needs_sox
def test_script_skips_nan_samples_and_a_flac_sox_decodes_only_in_part(tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    nan_wav(in_dir / "nan [1].wav")
    wavfile.write(
        in_dir / "float.wav", 22050, (0.5 * np.sin(np.arange(22050) / 5)).astype(np.float32)
    )
    synth(in_dir / "whole.flac", 2, 44100)
    flac = (in_dir / "whole.flac").read_bytes()
    (in_dir / "cut.flac").write_bytes(flac[: len(flac) // 2])
    (in_dir / "stub.flac").write_bytes(flac[:300])  # gives SoX no sample at all

    result = run_script(in_dir, out_dir)

    assert result.returncode == 1, result.stdout + result.stderr
    summary = result.stdout[result.stdout.index("summary:") :]
    assert "2 converted, 0 already done, 3 failed" in summary
    assert "nan [1].wav: contains NaN or infinite samples" in summary
    assert "cut.flac: sox FAIL" in summary and "stub.flac: sox FAIL" in summary
    assert sorted(p.name for p in out_dir.iterdir()) == [*HIDDEN, "float.wav", "whole.wav"]


def test_fallback_skips_nan_samples(tmp_path, capsys):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    nan_wav(in_dir / "nan.wav")
    assert resample.main(["--soxr", "--jobs", "1", str(in_dir), str(out_dir)]) == 1
    assert "nan.wav: contains NaN or infinite samples" in capsys.readouterr().out
    # no output, so nothing recorded
    assert [p.name for p in out_dir.iterdir()] == [".resample.lock"]


def test_fallback_unwritable_output_is_one_error_line(plain_inputs, tmp_path, capsys):
    (tmp_path / "a file").write_text("")
    assert resample.main([str(plain_inputs), str(tmp_path / "a file" / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


@pytest.fixture
def path_without_sox(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH holds only the tools the script needs before it falls back."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "nproc"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return {**os.environ, "PATH": str(bin_dir), "PYTHON": sys.executable}


@needs_sox  # SoX makes the inputs
def test_script_without_sox_falls_back_to_soxr(inputs, tmp_path, path_without_sox):
    out_dir = tmp_path / "out"
    result = run_script(inputs, out_dir, "--jobs", "2", env=path_without_sox)

    assert "soxr fallback" in result.stderr
    assert result.returncode == 1
    for name, n_samples in EXPECTED_SAMPLES.items():  # song.flac through libsndfile
        assert len(read_16k(out_dir / name)) == n_samples, name
    stereo = read_16k(out_dir / "stereo24.wav").astype(float)
    assert np.abs(stereo).max() == pytest.approx(0.25 * 32768, rel=0.01)
    summary = result.stdout[result.stdout.index("summary:") :]
    assert "5 converted, 0 already done, 2 failed" in summary
    assert "corrupt.wav:" in summary and "empty.wav: empty file" in summary


@needs_sox
def test_fallback_agrees_with_sox_within_a_few_lsb(tmp_path):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    noise = "pinknoise pinknoise vol 0.3"
    synth(in_dir / "noise.wav", 3, 44100, bits=24, channels=2, sound=noise)
    synth(in_dir / "noise flac.flac", 3, 44100, bits=24, channels=2, sound=noise)  # libsndfile
    assert run_script(in_dir, tmp_path / "sox").returncode == 0
    assert resample.main(["--soxr", "--jobs", "1", str(in_dir), str(tmp_path / "soxr")]) == 0

    for name in ("noise.wav", "noise flac.wav"):
        by_sox = read_16k(tmp_path / "sox" / name).astype(int)
        by_soxr = read_16k(tmp_path / "soxr" / name).astype(int)
        assert len(by_sox) == len(by_soxr) == 48000
        assert np.abs(by_sox - by_soxr).max() <= 8  # of a signal peaking near 10,000


def test_fallback_plan_reports_collisions_and_non_wav(tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    tone = np.zeros(800, np.int16)
    for name in ("a.WAV", "a.wav", "b.wav", "c.wav", "f.wav"):
        wavfile.write(in_dir / name, 8000, tone)
    (in_dir / "d.wv").write_bytes(b"wvpk")
    (in_dir / "g.m4a").write_bytes(b"AAC from a phone")
    os.mkfifo(in_dir / "e.wav")  # reading it would wait for a writer forever
    out_dir.mkdir()
    wavfile.write(out_dir / "c.wav", 16000, tone)  # made from its input as it is: done
    wavfile.write(out_dir / "b.wav", 16000, tone)  # from its input an hour ago: made again
    wavfile.write(out_dir / "f.wav", 16000, tone)  # its record lost in a kill, pending: again
    earlier = resample.made_from(in_dir / "b.wav")
    earlier["mtime_ns"] -= 3600 * 10**9
    sources = {"c.wav": resample.made_from(in_dir / "c.wav"), "b.wav": earlier}

    conversions, collisions, _ = resample.folder_conversions(in_dir, out_dir)
    todo, already_done, failed = resample.plan(
        conversions, False, out_dir, sources, True, {"f.wav"}
    )

    assert collisions == [
        ("a.wav", "would also become a.wav, made from a.WAV"),
        ("e.wav", "not a regular file (a pipe, a device or a broken link)"),
        ("g.m4a", resample.UNREADABLE_AUDIO),
    ]
    assert [(c.name, c.target) for c in todo] == [
        ("a.WAV", out_dir / "a.wav"),
        ("b.wav", out_dir / "b.wav"),
        ("f.wav", out_dir / "f.wav"),
    ]
    assert already_done == 1
    assert failed == [("d.wv", "WavPack: only SoX converts this format")]


def test_a_macs_resource_forks_are_left_alone_and_hidden_audio_converted(tmp_path, capsys):
    """`__MACOSX/._a.wav` and `._c.wav` (a Mac's resource forks: no audio) are named, not
    failed on; `.x/b.wav` and `.y.wav` are audio a CSV may name: converted."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    for name in ("a.wav", ".x/b.wav", ".y.wav", "__MACOSX/._a.wav", "._c.wav"):
        (in_dir / name).parent.mkdir(parents=True, exist_ok=True)
        wavfile.write(in_dir / name, 8000, np.zeros(800, np.int16))
    for fork in ("__MACOSX/._a.wav", "._c.wav"):
        (in_dir / fork).write_bytes(b"\0\5\26\7 resource fork")
    assert resample.main(["--soxr", "--jobs", "1", str(in_dir), str(out_dir)]) == 0
    made = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.wav"))
    assert made == [".x/b.wav", ".y.wav", "a.wav"]
    assert "not converted: 2 Mac resource fork(s), no audio" in capsys.readouterr().out


def test_fallback_converts_other_formats_through_libsndfile(tmp_path, capsys):
    """Without SoX: flac, ogg and mp3 convert (a 16-bit flac to the samples its wav would
    give), a flac cut short and a file no decoder takes fail, named, and WavPack is SoX's."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    (in_dir / "sub").mkdir(parents=True)
    rate = 44100
    noise = np.random.default_rng(2).normal(0, 3000, (2 * rate, 2)).round().astype(np.int16)
    soundfile.write(in_dir / "song.flac", noise, rate, subtype="PCM_16")
    wavfile.write(in_dir / "same song.wav", rate, noise)
    tone = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(rate) / rate)
    soundfile.write(in_dir / "sub" / "tone.ogg", tone, rate)
    soundfile.write(in_dir / "sub" / "call.MP3", tone, rate)
    whole = (in_dir / "song.flac").read_bytes()
    (in_dir / "cut.flac").write_bytes(whole[: len(whole) // 2])
    (in_dir / "junk.ogg").write_bytes(b"OggS" + bytes(200))
    (in_dir / "pack.wv").write_bytes(b"wvpk")
    soundfile.write(in_dir / "sub" / "phone.wav", tone, rate, subtype="ULAW")  # scipy: unknown
    ulaw = (in_dir / "sub" / "phone.wav").read_bytes()
    (in_dir / "cut phone.wav").write_bytes(ulaw[: len(ulaw) // 2])  # libsndfile reads to the cut

    assert resample.main(["--soxr", "--jobs", "2", str(in_dir), str(out_dir)]) == 1

    song, same_song = read_16k(out_dir / "song.wav"), read_16k(out_dir / "same song.wav")
    np.testing.assert_array_equal(song, same_song)
    for name in ("sub/tone.wav", "sub/call.wav", "sub/phone.wav"):
        tone_16k = read_16k(out_dir / name)
        assert abs(len(tone_16k) - 16000) <= 16, name
        peak = np.abs(tone_16k[1000:-1000]).max()
        assert peak == pytest.approx(0.3 * 32768, rel=0.05), name
    summary = capsys.readouterr().out.split("summary:")[1]
    assert "5 converted, 0 already done, 4 failed" in summary
    assert "cut phone.wav: truncated: less data than its header announces" in summary
    assert "cut.flac: damaged: decoding stopped at" in summary
    assert "junk.ogg: not readable audio" in summary
    assert "pack.wv: WavPack: only SoX converts this format" in summary
    assert sorted(p.name for p in out_dir.rglob("*.wav")) == [
        "call.wav", "phone.wav", "same song.wav", "song.wav", "tone.wav"
    ]  # fmt: skip
    assert not list(out_dir.rglob("*part"))


def test_a_format_sox_was_built_without_converts_through_libsndfile(tmp_path, monkeypatch):
    """Ogg Opus (no SoX handler in Debian's build), mp3 where libsox-fmt-mp3 is missing: SoX
    says 'no handler for', and soxr with libsndfile converts the file instead; SoX's other
    failures stay failures."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    tone = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(48000) / 48000)
    soundfile.write(in_dir / "call.opus", tone, 48000, format="OGG", subtype="OPUS")
    wavfile.write(in_dir / "damaged.wav", 16000, np.zeros(10, np.int16))

    def sox_without_handlers(source: Path, part: Path) -> str:
        if source.suffix == ".opus":
            raise resample.AudioError(source, "sox FAIL formats: no handler for detected file type")
        raise resample.AudioError(source, "sox FAIL: damaged")

    monkeypatch.setattr(resample, "sox_resample", sox_without_handlers)
    monkeypatch.setattr(resample.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    conversions, _, _ = resample.folder_conversions(in_dir, out_dir)
    out_dir.mkdir()
    failed = resample.resample_files(conversions, 1, out_dir)

    assert failed == [("damaged.wav", "sox FAIL: damaged")]
    converted = read_16k(out_dir / "call.wav")
    assert abs(len(converted) - 16000) <= 16
    assert np.abs(converted[1000:-1000]).max() == pytest.approx(0.3 * 32768, rel=0.1)


@needs_sox
def test_an_mp3_saved_as_wav_is_converted_by_its_content(tmp_path):
    """SoX goes by the name and refuses it ('RIFF header not found'); libsndfile reads it."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    tone = 0.3 * np.sin(2 * np.pi * 1000 * np.arange(44100) / 44100)
    soundfile.write(in_dir / "call.wav", tone, 44100, format="MP3")
    wavfile.write(in_dir / "damaged.wav", 16000, np.zeros(10, np.int16))
    (in_dir / "damaged.wav").write_bytes(b"RIFX" + (in_dir / "damaged.wav").read_bytes()[4:])
    conversions, _, _ = resample.folder_conversions(in_dir, out_dir)
    out_dir.mkdir()

    failed = resample.resample_files(conversions, 1, out_dir)

    assert [name for name, _ in failed] == ["damaged.wav"]
    converted = read_16k(out_dir / "call.wav")
    assert abs(len(converted) - 16000) <= 1200  # an mp3 decoder's padding
    assert np.abs(converted[2000:-2000]).max() == pytest.approx(0.3 * 32768, rel=0.1)


def test_fallback_converts_rounds_and_clips(tmp_path, capsys):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    full_scale = np.ones(4410, np.float32)  # float wav at +1.0 is 32768: clipped to 32767
    wavfile.write(in_dir / "loud.wav", 44100, full_scale)
    (out_dir / "sub").mkdir(parents=True)
    (out_dir / "sub" / "stale.wav.resample-part").write_bytes(b"half")

    assert resample.main(["--soxr", "--jobs", "1", str(in_dir), str(out_dir)]) == 0

    loud = read_16k(out_dir / "loud.wav")
    assert len(loud) == 1600 and loud[800] == 32767
    assert "warning: loud.wav: " in capsys.readouterr().err  # as SoX warns of clipping
    assert "samples clipped at full scale" in resample.soxr_resample(
        in_dir / "loud.wav", tmp_path / "x.wav"
    )
    assert not list(out_dir.rglob("*part"))
    assert resample.to_int16(np.array([-40000.0, -1.5, 0.4, 2.5, 40000.0]))[0].tolist() == [
        -32768, -2, 0, 2, 32767,
    ]  # fmt: skip


@needs_sox
def test_script_on_real_recordings(shared_data, tmp_path):
    in_dir = tmp_path / "in"
    chosen = [
        "odd_formats/BM003.wav",  # 300 kHz
        "odd_formats/WhiLbl0010_110411-DC-01.wav",  # stereo
        "odd_formats/fruitfly-song-multichannel.wav",  # 3 channels
        "birds/soundscape/audiomoth_dawn_20210502_040000.WAV",  # 48 kHz, upper-case extension
        "birds/bengalese_finch/bl26lb16.wav",  # 32 kHz
    ]
    for name in chosen:
        (in_dir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / name, in_dir / name)
    out_dir = tmp_path / "out"

    result = run_script(in_dir, out_dir)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 converted" in result.stdout
    for name in chosen:
        rate, original = wavfile.read(in_dir / name)
        output = read_16k(out_dir / Path(name).with_suffix(".wav"))
        assert abs(len(output) - len(original) * 16000 / rate) <= 1, name
        assert np.abs(output).max() > 0, name


def test_an_input_linked_into_the_output_folder_is_never_overwritten(tmp_path, capsys):
    """A folder or file link in IN_DIR leading into OUT_DIR (an unpacked archive's, say):
    its output would be the very file it reads."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    (out_dir / "sub").mkdir(parents=True)
    in_dir.mkdir()
    tone = (1000 * np.sin(np.arange(4410))).astype(np.int16)
    for name in ("sub/orig.wav", "a.wav"):
        wavfile.write(out_dir / name, 44100, tone)
    before = {name: (out_dir / name).read_bytes() for name in ("sub/orig.wav", "a.wav")}
    (in_dir / "sub").symlink_to(out_dir / "sub")
    (in_dir / "a.wav").symlink_to(out_dir / "a.wav")
    wavfile.write(in_dir / "b.wav", 44100, tone)

    assert resample.main(["--soxr", "--jobs", "1", str(in_dir), str(out_dir)]) == 1

    for name, content in before.items():
        assert (out_dir / name).read_bytes() == content, name
    summary = capsys.readouterr().out.split("summary:")[1]
    assert "1 converted, 0 already done, 2 failed" in summary
    assert f"a.wav: it is (through a link) {out_dir / 'a.wav'}, inside the output" in summary
    assert f"sub/orig.wav: it is (through a link) {out_dir / 'sub' / 'orig.wav'}" in summary


@pytest.mark.parametrize("with_sox", [True, False])
def test_a_planted_part_link_is_removed_not_written_through(
    plain_inputs, tmp_path, path_without_sox, with_sox
):
    if with_sox and shutil.which("sox") is None:
        pytest.skip("SoX is not installed")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "a.wav.resample-part").symlink_to(victim)
    result = run_script(plain_inputs, out_dir, env=None if with_sox else path_without_sox)
    assert result.returncode == 0, result.stdout + result.stderr
    assert victim.read_text() == "precious"
    assert len(read_16k(out_dir / "a.wav")) == 1600


@pytest.mark.parametrize("with_sox", [True, False])
def test_a_list_of_files_into_targets_of_its_own(tmp_path, monkeypatch, capsys, with_sox):
    """How prediction resamples: files from anywhere, each into a target it names, and the
    messages naming each file as the caller does."""
    if with_sox and shutil.which("sox") is None:
        pytest.skip("SoX is not installed")
    if not with_sox:
        monkeypatch.setenv("PATH", str(tmp_path / "no tools"))
    (tmp_path / "-a").mkdir()
    good, broken = tmp_path / "-a" / "good.wav", tmp_path / "broken.wav"
    wavfile.write(good, 8000, np.zeros(800, np.int16))
    broken.write_bytes(b"RIFF broken")
    monkeypatch.chdir(tmp_path)  # a relative name beginning with '-' is not an option to SoX
    conversions = [
        resample.Conversion(Path("-a/good.wav"), tmp_path / "cache" / "1.wav", "the good one"),
        resample.Conversion(broken, tmp_path / "cache" / "2.wav", "the broken one"),
    ]

    failed = resample.resample_files(conversions, 2, tmp_path / "cache")

    assert [name for name, _ in failed] == ["the broken one"]
    assert len(read_16k(tmp_path / "cache" / "1.wav")) == 1600
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".sources.json", "1.wav"]
    assert "1 converted, 0 already done, 1 failed" in capsys.readouterr().out
    resample.resample_files(conversions, 2, tmp_path / "cache")
    assert "0 converted, 1 already done, 1 failed" in capsys.readouterr().out


def test_linked_folders_are_followed_once(tmp_path):
    in_dir, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    in_dir.mkdir()
    elsewhere.mkdir()
    wavfile.write(elsewhere / "far.wav", 8000, np.zeros(800, np.int16))
    (in_dir / "linked").symlink_to(elsewhere)
    (elsewhere / "loop").symlink_to(in_dir)  # walked once, not forever

    conversions, collisions, _ = resample.folder_conversions(in_dir, tmp_path / "out")

    assert [c.name for c in conversions] == ["linked/far.wav"] and collisions == []


@pytest.mark.parametrize("with_sox", [True, False])
def test_a_link_in_the_output_tree_leading_outside_is_not_written_through(
    tmp_path, path_without_sox, with_sox
):
    if with_sox and shutil.which("sox") is None:
        pytest.skip("SoX is not installed")
    in_dir, out_dir, victim = tmp_path / "in", tmp_path / "out", tmp_path / "victim"
    for folder in (in_dir / "sub" / "deeper", out_dir, victim):
        folder.mkdir(parents=True)
    for name in ("a.wav", "sub/beta_0.wav", "sub/deeper/gamma.wav"):
        wavfile.write(in_dir / name, 8000, np.zeros(800, np.int16))
    (victim / "beta_0.wav.resample-part").write_text("precious")  # not a killed run's: left alone
    (out_dir / "sub").symlink_to(victim)

    result = run_script(in_dir, out_dir, env=None if with_sox else path_without_sox)

    assert result.returncode == 1, result.stdout + result.stderr
    assert [p.name for p in victim.iterdir()] == ["beta_0.wav.resample-part"]
    assert (victim / "beta_0.wav.resample-part").read_text() == "precious"
    assert len(read_16k(out_dir / "a.wav")) == 1600
    summary = result.stdout[result.stdout.index("summary:") :]
    assert "1 converted, 0 already done, 2 failed" in summary
    for name in ("sub/beta_0.wav", "sub/deeper/gamma.wav"):
        assert f"  {name}: its output folder" in summary and "outside" in summary


def test_a_link_in_the_output_tree_leading_to_another_output_folder_is_not_written_through(
    tmp_path,
):
    """out/a -> b (a work folder received from someone): a/x.wav would become b/x.wav, and
    the second conversion would replace the first's output while both were recorded done."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    for folder in (in_dir / "a", in_dir / "b", out_dir / "b"):
        folder.mkdir(parents=True)
    wavfile.write(in_dir / "a" / "x.wav", 8000, np.full(800, 1000, np.int16))
    wavfile.write(in_dir / "b" / "x.wav", 8000, np.zeros(400, np.int16))
    (out_dir / "a").symlink_to("b")

    result = run_script(in_dir, out_dir, "--jobs", "1")

    assert result.returncode == 1, result.stdout + result.stderr
    assert len(read_16k(out_dir / "b" / "x.wav")) == 800  # b's own audio, not a's
    summary = result.stdout[result.stdout.index("summary:") :]
    assert "1 converted, 0 already done, 1 failed" in summary
    assert "  a/x.wav: its output folder" in summary and "elsewhere in" in summary


def test_files_of_the_users_in_the_output_folder_are_left_alone(tmp_path, capsys):
    """OUT_DIR a folder of the user's: a download in progress (song.wav.part), a file at an
    output's name that resampling did not make, a lock file's name holding notes."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    for folder in (in_dir / "Downloads", out_dir / "Downloads"):
        folder.mkdir(parents=True)
    for name in ("a.wav", "b.wav", "c.wav", "Downloads/song.wav"):
        wavfile.write(in_dir / name, 8000, np.zeros(800, np.int16))
    users = {"a.wav": b"notes, not audio", "Downloads/song.wav.part": b"RIFF half a download"}
    for name, data in users.items():
        (out_dir / name).write_bytes(data)
    wavfile.write(out_dir / "b.wav", 44100, np.zeros(10, np.int16))  # a wav, not 16 kHz
    wavfile.write(out_dir / "c.wav", 16000, np.zeros(10, np.int16))  # a 16 kHz wav of theirs
    users["b.wav"], users["c.wav"] = (
        (out_dir / "b.wav").read_bytes(),
        (out_dir / "c.wav").read_bytes(),
    )
    run = ["--soxr", "--jobs", "1", str(in_dir), str(out_dir)]
    for _ in range(2):  # and again: the record the first run left names none of them
        assert resample.main(run) == 1
        output = capsys.readouterr().out
        for name in ("a.wav", "b.wav", "c.wav"):
            assert f"  {name}: {out_dir / name} exists and was not made by resampling" in output
        assert {name: (out_dir / name).read_bytes() for name in users} == users
    assert "1 converted, 0 already done, 3 failed" not in output  # the second run: done
    assert "0 converted, 1 already done, 3 failed" in output
    assert len(read_16k(out_dir / "Downloads/song.wav")) == 1600
    assert not (out_dir / ".sources.pending").exists()  # all it named is in the record


def test_an_output_a_kill_kept_out_of_the_record_is_made_again(tmp_path, capsys):
    """A kill -9 between an output's rename and the next write of the record: the next run
    knows the output from the journal, where a user's file of that name would stay."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    wavfile.write(in_dir / "a.wav", 8000, np.zeros(800, np.int16))
    # what a run killed after this output's rename leaves: the output, no record
    assert (
        resample.convert(
            resample.Conversion(in_dir / "a.wav", out_dir / "a.wav", "a.wav"), False, out_dir
        )[0]
        is None
    )
    assert not (out_dir / ".sources.json").exists()
    assert (out_dir / ".sources.pending").read_text() == resample.PENDING_HEADER + '"a.wav"\n'
    run = ["--soxr", "--jobs", "1", str(in_dir), str(out_dir)]
    capsys.readouterr()
    assert resample.main(run) == 0
    assert "1 converted, 0 already done, 0 failed" in capsys.readouterr().out
    assert not (out_dir / ".sources.pending").exists()
    assert resample.main(run) == 0
    assert "0 converted, 1 already done" in capsys.readouterr().out


def test_an_output_whose_conversion_again_failed_is_still_this_codes(tmp_path, capsys):
    """Its source replaced by a damaged file, an output's record entry was dropped and its
    conversion failed: from then on the output was taken for a user's file, for good."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for name in ("a.wav", "b.wav"):
        wavfile.write(in_dir / name, 8000, np.zeros(800, np.int16))
    run = ["--soxr", "--jobs", "1", str(in_dir), str(out_dir)]
    assert resample.main(run) == 0
    good = (in_dir / "a.wav").read_bytes()
    (in_dir / "a.wav").write_bytes(b"RIFF, damaged in a copy")
    assert resample.main(run) == 1
    (in_dir / "a.wav").write_bytes(good)
    capsys.readouterr()
    assert resample.main(run) == 0
    assert "1 converted, 1 already done, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["pipe", "link", "hard link"])
def test_a_journal_that_is_not_a_file_of_its_own_stops_the_run_unchanged(tmp_path, capsys, kind):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    wavfile.write(in_dir / "a.wav", 8000, np.zeros(800, np.int16))
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's")
    journal = out_dir / ".sources.pending"
    if kind == "pipe":
        os.mkfifo(journal)  # opening it to write would wait for a reader forever
    elif kind == "link":
        journal.symlink_to(victim)
    else:
        os.link(victim, journal)
    assert resample.main(["--soxr", "--jobs", "1", str(in_dir), str(out_dir)]) == 2
    assert ".sources.pending is not a file of its own" in capsys.readouterr().err
    assert victim.read_text() == "the user's" and not (out_dir / "a.wav").exists()


def test_a_journal_another_program_wrote_is_neither_trusted_nor_touched(tmp_path, capsys):
    """A file named as the journal but without its first line (a user's, another tool's) names
    no output made here: a user's keep.wav it lists is not replaced, and the file stays as it
    is, the run stopped before any work."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    wavfile.write(in_dir / "keep.wav", 8000, np.zeros(800, np.int16))
    (out_dir / "keep.wav").write_bytes(b"the user's own")
    journal = out_dir / ".sources.pending"
    for text in ('"keep.wav"\n', "my own notes\n", ""):
        journal.write_text(text)
        assert resample.main(["--soxr", "--jobs", "1", str(in_dir), str(out_dir)]) == 2
        assert "is not a journal this code wrote" in capsys.readouterr().err
        assert journal.read_text() == text
        assert (out_dir / "keep.wav").read_bytes() == b"the user's own"
    journal.unlink()  # without it, the user's file is refused by name, not replaced
    assert resample.main(["--soxr", "--jobs", "1", str(in_dir), str(out_dir)]) == 1
    assert "keep.wav exists and was not made by resampling" in capsys.readouterr().out
    assert (out_dir / "keep.wav").read_bytes() == b"the user's own"
    assert not journal.exists()


def test_a_journal_of_the_version_before_its_first_line_is_taken_over(tmp_path, capsys):
    """Beside this code's record, a journal of JSON strings (as the version before wrote it,
    its last line cut by a kill) is given its first line and read: the output it names is
    this code's and made again. A journal planted after the run's check is not written."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    wavfile.write(in_dir / "a.wav", 8000, np.zeros(800, np.int16))
    run = ["--soxr", "--jobs", "1", str(in_dir), str(out_dir)]
    assert resample.main(run) == 0
    (out_dir / ".sources.json").write_text(
        json.dumps({"format": resample.SOURCES_FORMAT, "outputs": {}})
    )  # a.wav's entry dropped, as before its conversion again
    journal = out_dir / ".sources.pending"
    journal.write_text('"a.wav"\n"b.w')
    capsys.readouterr()
    assert resample.main(run) == 0
    assert "1 converted, 0 already done, 0 failed" in capsys.readouterr().out
    assert not journal.exists()
    journal.write_text("the user's notes\n")
    with pytest.raises(OutputPathError, match="not a journal this code wrote"):
        resample.note_pending(out_dir, "a.wav")
    assert journal.read_text() == "the user's notes\n"
    for text in ("the user's notes, no line end", '"a.wav"\nnotes'):  # beside the record too
        journal.write_text(text)
        assert resample.main(run) == 2
        assert "is not a journal this code wrote" in capsys.readouterr().err
        assert journal.read_text() == text


def test_prune_removes_the_outputs_of_sources_gone_and_nothing_else(tmp_path, capsys):
    """--prune (doall.sh's work folder): an output whose source was deleted or moved is
    removed with its record; a user's file, outputs of other input folders, the output of a
    source that now fails, one whose folder is a link (to a user's folder), and a file a
    crafted record names that is no wav stay. Without it every output stays (the originals
    may be deleted once converted); with no input file at all, nothing is pruned."""
    in_dir, other_in, out_dir = tmp_path / "in", tmp_path / "other", tmp_path / "out"
    for folder in (in_dir / "dog", in_dir / "cat", in_dir / "owl", other_in):
        folder.mkdir(parents=True)
    for name in ("dog/a.wav", "dog/b.wav", "cat/c.wav", "cat/d.wav", "owl/f.wav"):
        wavfile.write(in_dir / name, 8000, np.zeros(800, np.int16))
    wavfile.write(other_in / "e.wav", 8000, np.zeros(800, np.int16))
    run = ["--soxr", "--jobs", "1", str(in_dir), str(out_dir)]
    assert resample.main(run) == 0
    assert resample.main(["--soxr", "--jobs", "1", str(other_in), str(out_dir)]) == 0
    (out_dir / "user.wav").write_bytes(b"the user's")
    (out_dir / "mine").mkdir()
    (out_dir / "mine" / "f.wav").write_bytes(b"the user's too")
    shutil.rmtree(out_dir / "owl")
    (out_dir / "owl").symlink_to("mine")  # owl/f.wav now leads to the user's mine/f.wav
    record = json.loads((out_dir / ".sources.json").read_text())
    (out_dir / "notes.txt").write_text("the user's notes")
    record["outputs"]["notes.txt"] = {**record["outputs"]["dog/a.wav"], "source": str(in_dir / "x")}
    (out_dir / ".sources.json").write_text(json.dumps(record))
    (in_dir / "dog" / "a.wav").unlink()  # deleted
    (in_dir / "dog" / "b.wav").rename(in_dir / "cat" / "b.wav")  # moved
    (in_dir / "cat" / "c.wav").write_bytes(b"RIFF, damaged since")  # fails now
    (in_dir / "owl" / "f.wav").unlink()
    assert resample.main(run) == 1  # without --prune: all stay
    assert (out_dir / "dog" / "a.wav").is_file()
    capsys.readouterr()
    assert resample.main([*run, "--prune"]) == 1
    assert "pruned: 2 output(s)" in capsys.readouterr().out
    left = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.wav"))
    assert left == ["cat/b.wav", "cat/c.wav", "cat/d.wav", "e.wav", "mine/f.wav", "user.wav"]
    assert (out_dir / "user.wav").read_bytes() == b"the user's"
    assert (out_dir / "mine" / "f.wav").read_bytes() == b"the user's too"
    assert (out_dir / "notes.txt").read_text() == "the user's notes"
    record = json.loads((out_dir / ".sources.json").read_text())["outputs"]
    assert sorted(record) == ["cat/b.wav", "cat/d.wav", "e.wav"]
    empty = tmp_path / "empty"  # an unmounted disk, say
    empty.mkdir()
    assert resample.main(["--soxr", "--jobs", "1", str(empty), str(out_dir), "--prune"]) == 0
    assert sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.wav")) == left


def test_a_recording_replaced_by_one_with_an_older_time_is_resampled_again(tmp_path, capsys):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    wavfile.write(in_dir / "a.wav", 8000, np.zeros(800, np.int16))
    run = ["--soxr", "--jobs", "1", str(in_dir), str(out_dir)]
    assert resample.main(run) == 0
    assert resample.main(run) == 0
    assert "0 converted, 1 already done" in capsys.readouterr().out

    # another recording in its place, with the older time cp -p, rsync -t, tar or unzip keep
    wavfile.write(in_dir / "a.wav", 8000, np.full(2400, 1000, np.int16))
    os.utime(in_dir / "a.wav", (946684800, 946684800))  # 2000-01-01
    assert resample.main(run) == 0

    assert "1 converted, 0 already done" in capsys.readouterr().out
    assert len(read_16k(out_dir / "a.wav")) == 4800
    assert (out_dir / "a.wav").stat().st_mtime_ns > 946684800 * 10**9  # its own: new to load_data


def test_a_recording_replaced_by_one_of_the_same_size_and_time_is_resampled_again(tmp_path, capsys):
    """Fixed-length clips of two tasks, as an archive leaves them: the same path, size and
    modification time, other audio. The new file's status-change time tells them apart."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    wavfile.write(in_dir / "a.wav", 8000, np.zeros(800, np.int16))
    os.utime(in_dir / "a.wav", (946684800, 946684800))
    run = ["--soxr", "--jobs", "1", str(in_dir), str(out_dir)]
    assert resample.main(run) == 0
    size = (in_dir / "a.wav").stat().st_size

    time.sleep(0.01)  # a status-change time of its own, on coarse clocks too
    wavfile.write(tmp_path / "other.wav", 8000, np.full(800, 1000, np.int16))
    os.utime(tmp_path / "other.wav", (946684800, 946684800))
    os.replace(tmp_path / "other.wav", in_dir / "a.wav")
    assert (in_dir / "a.wav").stat().st_size == size
    capsys.readouterr()
    assert resample.main(run) == 0

    assert "1 converted, 0 already done" in capsys.readouterr().out
    assert read_16k(out_dir / "a.wav").max() > 0  # the new audio


def test_a_record_of_the_older_version_converts_again_without_a_warning(tmp_path, capsys):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    write_task(in_dir, 800)
    run = ["--soxr", "-j", "1", str(in_dir), str(out_dir)]
    assert resample.main(run) == 0
    record = json.loads((out_dir / ".sources.json").read_text())
    record["format"] = "preprocess/resample.py sources, version 1"
    for entry in record["outputs"].values():
        del entry["ctime_ns"]
    (out_dir / ".sources.json").write_text(json.dumps(record))
    capsys.readouterr()

    assert resample.main(run) == 0

    out, err = capsys.readouterr()
    assert "2 converted, 0 already done" in out and "warning" not in err


ZIP_TIME = 315532800  # 1980-01-01, the time Python's zipfile gives every member by default


def write_task(folder: Path, samples: int) -> None:
    """A task's recordings: the same names as any other task's, with its own audio (samples at
    8 kHz each) and zipfile's time."""
    for name in ("a.wav", "sub/b.wav"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        wavfile.write(folder / name, 8000, np.full(samples, 1000, np.int16))
        os.utime(folder / name, (ZIP_TIME, ZIP_TIME))


def sources_of(out_dir: Path) -> dict:
    return json.loads((out_dir / ".sources.json").read_text())["outputs"]


def test_another_task_with_the_same_names_and_times_is_converted_again(tmp_path, capsys):
    out_dir = tmp_path / "out"
    write_task(tmp_path / "t1", 800)
    write_task(tmp_path / "t3", 2400)
    assert resample.main(["--soxr", "-j", "1", str(tmp_path / "t1"), str(out_dir)]) == 0
    started = time.time_ns()

    assert resample.main(["--soxr", "-j", "1", str(tmp_path / "t3"), str(out_dir)]) == 0

    assert "2 converted, 0 already done, 0 failed" in capsys.readouterr().out
    for name in ("a.wav", "sub/b.wav"):
        assert len(read_16k(out_dir / name)) == 4800, name  # t3's audio, not t1's
        # its own time, not its source's: load_data sees a changed recording and extracts it
        assert (out_dir / name).stat().st_mtime_ns >= started - 10**9, name
        assert sources_of(out_dir)[name]["source"] == str((tmp_path / "t3" / name).resolve())


def times_of(out_dir: Path) -> dict[str, int]:
    """{file in out_dir: its modification time}, the lock (which each run takes) aside."""
    files = (p for p in out_dir.rglob("*") if p.is_file() and p.name != ".resample.lock")
    return {p.relative_to(out_dir).as_posix(): p.stat().st_mtime_ns for p in files}


def test_an_unchanged_rerun_converts_nothing_and_an_unrecorded_output_once(tmp_path, capsys):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    write_task(in_dir, 800)
    run = ["--soxr", "-j", "1", str(in_dir), str(out_dir)]
    assert resample.main(run) == 0
    assert sources_of(out_dir) == {
        name: {
            "source": str((in_dir / name).resolve()),
            "size": 1644,
            "mtime_ns": ZIP_TIME * 10**9,
            "ctime_ns": (in_dir / name).stat().st_ctime_ns,
        }
        for name in ("a.wav", "sub/b.wav")
    }
    written = times_of(out_dir)
    capsys.readouterr()

    assert resample.main(run) == 0
    assert "0 converted, 2 already done" in capsys.readouterr().out
    assert times_of(out_dir) == written  # the outputs and their record too

    record = json.loads((out_dir / ".sources.json").read_text())
    record["format"] = "preprocess/resample.py sources, version 1"  # an older version's
    (out_dir / ".sources.json").write_text(json.dumps(record))
    assert resample.main(run) == 0
    assert resample.main(run) == 0
    out = capsys.readouterr().out
    assert "2 converted, 0 already done" in out and "0 converted, 2 already done" in out


@pytest.mark.parametrize("entry", ['{"size": 1}', "[]"])
def test_a_damaged_record_is_ignored_with_a_warning(tmp_path, capsys, entry):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    write_task(in_dir, 800)
    run = ["--soxr", "-j", "1", str(in_dir), str(out_dir)]
    assert resample.main(run) == 0
    damaged = f'{{"format": "{resample.SOURCES_FORMAT}", "outputs": {{"a.wav": {entry}}}}}'
    (out_dir / ".sources.json").write_text(damaged)
    capsys.readouterr()

    assert resample.main(run) == 0

    captured = capsys.readouterr()
    assert "2 converted, 0 already done" in captured.out
    assert f"warning: {out_dir / '.sources.json'} is damaged" in captured.err
    assert sorted(sources_of(out_dir)) == ["a.wav", "sub/b.wav"]


@pytest.mark.parametrize(
    "content", ["{not json", '{"format": "other"}', "[1, 2]", '{"a.wav": {"size": 1}}']
)
def test_another_programs_record_stops_the_run_and_is_kept(tmp_path, capsys, content):
    """OUT_DIR a folder of the user's, whose .sources.json another tool wrote."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    write_task(in_dir, 800)
    out_dir.mkdir()
    (out_dir / ".sources.json").write_text(content)

    assert resample.main(["--soxr", "-j", "1", str(in_dir), str(out_dir)]) == 2

    error = capsys.readouterr().err
    assert f"error: {out_dir / '.sources.json'} is not a record of preprocess/resample.py" in error
    assert (out_dir / ".sources.json").read_text() == content
    assert not list(out_dir.rglob("*.wav"))


def test_an_interrupted_run_keeps_the_record_of_what_it_finished(tmp_path, monkeypatch, capsys):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    write_task(in_dir, 800)
    wavfile.write(in_dir / "z.wav", 8000, np.zeros(800, np.int16))  # converted last
    soxr_resample = resample.soxr_resample

    def interrupted_at_z(source: Path, part: Path) -> str:
        if source.name == "z.wav":
            raise KeyboardInterrupt
        return soxr_resample(source, part)

    monkeypatch.setattr(resample, "soxr_resample", interrupted_at_z)
    run = ["--soxr", "-j", "1", str(in_dir), str(out_dir)]
    assert resample.main(run) == 130
    assert sorted(sources_of(out_dir)) == ["a.wav", "sub/b.wav"]
    assert not (out_dir / "z.wav").exists()
    capsys.readouterr()

    monkeypatch.setattr(resample, "soxr_resample", soxr_resample)
    assert resample.main(run) == 0
    assert "1 converted, 2 already done" in capsys.readouterr().out


def test_a_second_run_into_the_same_folder_stops_and_touches_nothing(
    plain_inputs, tmp_path, capsys, lock_held_elsewhere
):
    out_dir = tmp_path / "out"
    pid = lock_held_elsewhere(out_dir / ".resample.lock")  # a first run, converting
    (out_dir / "a.wav.resample-part").write_bytes(b"RIFF being written by the first run")

    assert resample.main(["--soxr", str(plain_inputs), str(out_dir)]) == 2

    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert str(out_dir) in err and f"pid {pid}" in err
    assert sorted(p.name for p in out_dir.iterdir()) == [".resample.lock", "a.wav.resample-part"]
    assert (out_dir / "a.wav.resample-part").read_bytes() == b"RIFF being written by the first run"
