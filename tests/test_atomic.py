"""bench.atomic: the one file writer (atomic replace, appended lines) and its path guard."""

import multiprocessing
import os
import stat

import pytest

from bench import atomic

WRITERS, LINES = 4, 200


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_replaces_the_file_with_an_ordinary_mode(tmp_path):
    target = tmp_path / "sub" / "run.json"
    atomic.write_text(target, "first")
    atomic.write_text(target, "second")
    assert target.read_text() == "second"
    assert _listing(target.parent) == ["run.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary_file(tmp_path, error):
    target = tmp_path / "leaderboard.csv"
    target.write_text("old contents\n")
    with pytest.raises(error):
        with atomic.atomic_path(target, suffix=".csv") as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith(".csv")
            tmp.write_text("half of the new")
            raise error("interrupted")
    assert target.read_text() == "old contents\n"
    assert _listing(tmp_path) == ["leaderboard.csv"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "targets.csv"
    target.write_text("old\n")

    def write(fh):
        fh.write("partial")
        raise ValueError("writer failed")

    with pytest.raises(ValueError, match="writer failed"):
        atomic.write_with(target, write)
    assert target.read_text() == "old\n"
    assert _listing(tmp_path) == ["targets.csv"]


def test_an_interrupted_first_write_leaves_nothing(tmp_path):
    with pytest.raises(OSError):
        with atomic.atomic_path(tmp_path / "new.png", suffix=".png"):
            raise OSError("disk full")
    assert _listing(tmp_path) == []


def _append_many(path, writer):
    for i in range(LINES):
        atomic.append_line(path, f"writer={writer} line={i:04d} " + chr(ord("a") + writer) * 300)


def test_append_line_from_several_processes_keeps_every_line_whole(tmp_path):
    path = tmp_path / "rows.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, w)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    data = path.read_text()
    assert data.endswith("\n")
    lines = data.splitlines()
    assert len(lines) == WRITERS * LINES
    expected = {f"writer={w} line={i:04d} " + chr(ord("a") + w) * 300 for w in range(WRITERS) for i in range(LINES)}
    assert set(lines) == expected
    for w in range(WRITERS):  # each writer's lines in its own order
        own = [line for line in lines if line.startswith(f"writer={w} ")]
        assert own == sorted(own)


NASTY = ["../escaped", "/abs", "a/b", "", ".", "..", "x" * 300, "tab\tname", "nul\x00", "../../../etc/passwd",
         "a\\b", "~", ".hidden", "..\\..\\x", "sp ace", "ünï", "-", "a/../../b"]


@pytest.mark.parametrize("name", NASTY)
def test_safe_name_is_one_ordinary_path_component(name):
    safe = atomic.safe_name(name)
    assert safe not in ("", ".", "..")
    assert not safe.startswith(".")
    assert "/" not in safe and "\\" not in safe and "\x00" not in safe and "\t" not in safe
    assert len(safe) <= atomic.MAX_NAME


@pytest.mark.parametrize("suffix", ["", ".png", ".npz"])
@pytest.mark.parametrize("name", NASTY)
def test_inside_never_leaves_the_folder(tmp_path, name, suffix):
    folder = tmp_path / "out"
    folder.mkdir()
    path = atomic.inside(folder, name, suffix)
    assert path.parent == folder
    assert path.resolve().parent == folder.resolve()
    assert path.name.endswith(suffix)
    atomic.write_text(path, "x")  # and it can be written there
    assert _listing(folder) == [path.name]
    assert _listing(tmp_path) == ["out"]
