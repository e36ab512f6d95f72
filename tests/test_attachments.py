"""chatcli.attachments: paths in, attachments and notes out, rendered blocks and their spans.

Every test builds its files in tmp_path and checks exact values: the paths taken and
their order, every note, sizes and sha256 (against hashlib on the bytes written), the
rendered text and the block offsets. Git runs with no user or system configuration
and cannot find a repository above tmp_path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from chatcli.attachments import (
    Attachment,
    Gathered,
    block_spans,
    describe,
    gather,
    glob_paths,
    render,
)
from chatcli.errors import ChatcliError, UsageError

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@pytest.fixture(autouse=True)
def quiet_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))


def write(root: Path, files: dict[str, bytes | str]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)


def paths(g: Gathered) -> list[str]:
    return [a.path for a in g.attachments]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def attachment(path: str, text: str) -> Attachment:
    data = text.encode()
    return Attachment(path, len(data), sha(data), text)


# -- directories -----------------------------------------------------------------


@needs_git
def test_git_work_tree_honours_gitignore(tmp_path: Path) -> None:
    import subprocess

    repo = tmp_path / "repo"
    write(repo, {
        ".gitignore": "*.log\nbuild/\n",
        "a.py": "print(1)\n",
        "app.log": "log\n",
        "build/out.txt": "out\n",
        "src/nested/deep.py": "deep\n",
        "src/util.py": "u\n",
        ".github/ci.yml": "on: push\n",
    })
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "a.py"], cwd=repo, check=True)  # one tracked, the rest untracked

    g = gather(["repo"], cwd=tmp_path)
    assert paths(g) == ["repo/.github/ci.yml", "repo/.gitignore", "repo/a.py",
                        "repo/src/nested/deep.py", "repo/src/util.py"]
    assert g.notes == ["left out 1 file and 1 directory under repo that .gitignore ignores"]
    a = g.attachments[2]
    assert (a.size, a.sha256, a.text, a.note) == (9, sha(b"print(1)\n"), "print(1)\n", None)

    # A subdirectory of the work tree; the walked paths keep the directory as written.
    g = gather(["repo/src/"], cwd=tmp_path)
    assert paths(g) == ["repo/src/nested/deep.py", "repo/src/util.py"]
    assert g.notes == []

    # "." inside the work tree: paths relative to it.
    g = gather(["."], cwd=repo / "src")
    assert paths(g) == ["nested/deep.py", "util.py"]

    # An ignored directory named on its own: nothing, and the note says why.
    g = gather(["repo/build"], cwd=tmp_path)
    assert g.attachments == []
    assert g.notes[-1] == ("repo/build: no files to attach (.gitignore ignores them: name "
                           "them, or use a glob, to take them)")
    assert len(g.notes) == 2 and "that .gitignore ignores" in g.notes[0]

    # A tracked file deleted from the work tree is left out, noted.
    (repo / "a.py").unlink()
    g = gather(["repo"], cwd=tmp_path)
    assert "repo/a.py" not in paths(g)
    assert g.notes[-1] == "left out 1 tracked file missing from the work tree: repo/a.py"


def test_walk_outside_git_skips_hidden_and_vendor_dirs(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no git: the plain walk
    write(tmp_path / "proj", {
        "b.md": "# B\n",
        "a.txt": "a\n",
        ".env": "KEY=1\n",
        "sub/c.py": "c = 3\n",
        "sub/deeper/d.py": "d = 4\n",
        ".git/config": "[core]\n",
        ".venv/lib/x.py": "x\n",
        "node_modules/m/index.js": "m\n",
        "sub/__pycache__/c.cpython-311.pyc": "not really bytecode\n",
        "env/pyvenv.cfg": "home = /usr\n",
        "env/lib/y.py": "y\n",
    })
    (tmp_path / "proj" / "linked").symlink_to("sub")
    os.mkfifo(tmp_path / "proj" / "pipe")  # read, it would block: left out

    g = gather(["proj/"], cwd=tmp_path)
    assert paths(g) == ["proj/.env", "proj/a.txt", "proj/b.md", "proj/sub/c.py",
                        "proj/sub/deeper/d.py"]
    assert g.notes == [
        "left out 5 hidden or vendor directories: proj/.git, proj/.venv, proj/env, "
        "proj/node_modules, proj/sub/__pycache__",
        "did not enter 1 linked directory (symbolic link or submodule): proj/linked",
        "left out 1 special file (FIFO, socket or device): proj/pipe",
    ]
    # A hidden directory the user names is walked.
    assert paths(gather(["proj/.venv"], cwd=tmp_path)) == ["proj/.venv/lib/x.py"]
    # An empty directory.
    (tmp_path / "empty").mkdir()
    assert gather(["empty"], cwd=tmp_path) == Gathered([], ["empty: no files to attach"])


def test_file_named_twice_is_attached_once(tmp_path: Path) -> None:
    write(tmp_path, {"d/a.txt": "a\n", "d/b.txt": "b\n"})
    g = gather(["d/b.txt", "d", "./d/a.txt"], cwd=tmp_path)
    assert paths(g) == ["d/b.txt", "d/a.txt"]
    assert g.notes == ["left out 2 repeats of files already attached: d/b.txt, ./d/a.txt"]


# -- binary, encodings, stdin ----------------------------------------------------


def test_binary_files_skipped_with_one_note(tmp_path: Path) -> None:
    write(tmp_path, {
        "d/blob.bin": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
        "d/noise.dat": bytes(range(0x80, 0x100)) * 4,  # no NUL, but no text either
        "d/text.txt": "plain\n",
        "one.bin": b"ab\0cd",
    })
    g = gather(["d", "one.bin"], cwd=tmp_path)
    assert paths(g) == ["d/text.txt"]
    assert g.notes == ["skipped 3 binary files: d/blob.bin, d/noise.dat, one.bin"]


def test_non_utf8_text_decoded_with_replacement_and_a_note(tmp_path: Path) -> None:
    data = "café crème\n".encode("latin-1")
    write(tmp_path, {"latin1.txt": data, "bom.txt": b"\xef\xbb\xbfhello\n"})
    g = gather(["latin1.txt", "bom.txt"], cwd=tmp_path)
    note = "not UTF-8 (first bad byte at offset 3): invalid bytes replaced with U+FFFD"
    assert g.attachments == [
        Attachment("latin1.txt", 11, sha(data), "caf\ufffd cr\ufffdme\n", note),
        Attachment("bom.txt", 9, sha(b"\xef\xbb\xbfhello\n"), "hello\n", None),
    ]
    assert g.notes == [f"latin1.txt: {note}"]


def test_stdin(tmp_path: Path) -> None:
    data = "piped text ✓\n".encode()
    g = gather(["-"], stdin=lambda: data, cwd=tmp_path)
    assert g == Gathered([Attachment("stdin", 15, sha(data), "piped text ✓\n", None)], [])

    assert gather(["-"], stdin=lambda: b"\0\1\2").notes == ["skipped 1 binary file: stdin"]

    with pytest.raises(UsageError) as e:
        gather(["-"], stdin=None)
    assert e.value.message == "- stands for stdin, but there is no stdin to read here"
    with pytest.raises(UsageError) as e:
        gather(["-", "-"], stdin=lambda: b"x")
    assert e.value.message == "- is named twice: stdin can be read only once"

    # an empty pipe is a mistake (the command before it failed), not an empty file
    with pytest.raises(UsageError) as e:
        gather(["-"], stdin=lambda: b"")
    assert (e.value.message, e.value.hint) == (
        "stdin (-f -) is empty: there is no file to attach",
        'pipe the file\'s text into chatcli, e.g. chatcli ask -f - "Summarize." < notes.txt')


@pytest.mark.skipif(not Path("/dev/fd").is_dir(), reason="no /dev/fd")
def test_pipe_named_as_a_file(tmp_path: Path) -> None:
    """`-f <(cmd)` hands chatcli a pipe: read up to the byte cap."""
    for data, cap in ((b"from a pipe\n", 100), (b"x" * 50, 10)):
        r, w = os.pipe()
        os.write(w, data)
        os.close(w)
        try:
            g = gather([f"/dev/fd/{r}"], max_bytes=cap, truncate=True)
        finally:
            os.close(r)
        if cap == 100:
            assert g == Gathered([Attachment(f"/dev/fd/{r}", 12, sha(data), "from a pipe\n")], [])
        else:  # truncated: the whole size of a pipe is not known
            assert g == Gathered([Attachment(f"/dev/fd/{r}", 10, sha(b"x" * 10), "x" * 10,
                                             truncated=True, full_size=None)],
                                 [f"/dev/fd/{r}: truncated to its first 10 bytes by the cap "
                                  "--max-bytes 10"])
    r, w = os.pipe()
    os.write(w, b"x" * 50)
    os.close(w)
    try:
        with pytest.raises(UsageError) as e:
            gather([f"/dev/fd/{r}"], max_bytes=10)
    finally:
        os.close(r)
    assert (e.value.message, e.value.hint) == (
        f"/dev/fd/{r} (over 10 bytes) would pass the cap --max-bytes 10",
        "raise --max-bytes, or add --truncate-files to cut the files there")


# -- caps ------------------------------------------------------------------------


def test_caps_refuse_unless_truncation_is_allowed(tmp_path: Path) -> None:
    write(tmp_path, {f"d/f{i}.txt": f"line {i}\n" for i in range(5)})  # 7 bytes each
    with pytest.raises(UsageError) as e:
        gather(["d"], max_files=2, cwd=tmp_path)
    assert (e.value.message, e.value.hint) == (
        "5 text files to attach: more than the cap --max-files 2",
        "raise --max-files, or add --truncate-files to attach the first 2 and leave out the "
        "rest")
    with pytest.raises(UsageError) as e:
        gather(["d"], max_bytes=20, cwd=tmp_path)
    assert (e.value.message, e.value.hint) == (
        "d/f2.txt (7 bytes) would pass the cap --max-bytes 20, after 2 files of 14 bytes",
        "raise --max-bytes, or add --truncate-files to cut the files there")
    write(tmp_path, {"big.txt": "x" * 5000})
    with pytest.raises(UsageError) as e:
        gather(["big.txt"], max_bytes=1000, cwd=tmp_path)
    assert e.value.message == "big.txt (5000 bytes) would pass the cap --max-bytes 1000"

    # Truncation allowed: the files past --max-files are left out, noted ...
    g = gather(["d"], max_files=2, truncate=True, cwd=tmp_path)
    assert paths(g) == ["d/f0.txt", "d/f1.txt"]
    assert g.notes == ["kept 2 of 5 files found: cap --max-files 2; raise it to take more"]
    # ... the file at the byte cap is cut there (marked), and the ones after it left out
    g = gather(["d"], max_bytes=20, truncate=True, cwd=tmp_path)
    assert g.attachments[:2] == [attachment("d/f0.txt", "line 0\n"),
                                 attachment("d/f1.txt", "line 1\n")]
    assert g.attachments[2] == Attachment("d/f2.txt", 6, sha(b"line 2"), "line 2",
                                          truncated=True, full_size=7)
    assert g.notes == ["d/f2.txt: truncated to its first 6 of 7 bytes by the cap --max-bytes 20",
                       "left out 2 files: the cap --max-bytes 20 is reached: d/f3.txt, d/f4.txt"]

    # Exactly at the caps: everything, no note.
    assert gather(["d"], max_files=5, max_bytes=35, cwd=tmp_path).notes == []

    # Binary files never count against the caps, however large, before or after the cap.
    write(tmp_path, {"e/a.bin": b"\0" * 100_000, "e/b.txt": "0123456789", "e/c.bin": b"\0"})
    g = gather(["e"], max_files=1, max_bytes=10, cwd=tmp_path)
    assert paths(g) == ["e/b.txt"]
    assert g.notes == ["skipped 2 binary files: e/a.bin, e/c.bin"]


def test_truncation_keeps_whole_characters(tmp_path: Path) -> None:
    data = "héllo wörld\n".encode()  # é and ö take two bytes each
    write(tmp_path, {"u.txt": data})
    g = gather(["u.txt"], max_bytes=2, truncate=True, cwd=tmp_path)  # 'h' and half of 'é'
    assert g.attachments == [Attachment("u.txt", 1, sha(b"h"), "h", truncated=True,
                                        full_size=len(data))]
    g = gather(["u.txt"], max_bytes=3, truncate=True, cwd=tmp_path)
    assert g.attachments[0].text == "hé" and g.attachments[0].size == 3
    # nothing fits: the file is left out, not attached empty
    write(tmp_path, {"emoji.txt": "🙂 smile\n"})
    g = gather(["emoji.txt"], max_bytes=3, truncate=True, cwd=tmp_path)
    assert g == Gathered([], ["left out 1 file: the cap --max-bytes 3 is reached: emoji.txt"])
    # stdin: its whole size is known
    g = gather(["-"], stdin=lambda: b"abcdef", max_bytes=4, truncate=True)
    assert g.attachments == [Attachment("stdin", 4, sha(b"abcd"), "abcd", truncated=True,
                                        full_size=6)]


def test_a_file_already_attached_is_left_out(tmp_path: Path) -> None:
    """/read of a file the next message already has (by any path to it): noted, not taken."""
    write(tmp_path, {"d/a.txt": "a\n", "d/b.txt": "b\n"})
    first = gather(["d/a.txt"], cwd=tmp_path).attachments
    g = gather(["./d/a.txt", "d"], attached=first, cwd=tmp_path)
    assert paths(g) == ["d/b.txt"]
    assert g.notes == ["left out 2 repeats of files already attached: ./d/a.txt, d/a.txt"]

    with pytest.raises(UsageError, match=r"^--max-files must be at least 1 \(got 0\)$"):
        gather(["d"], max_files=0, cwd=tmp_path)


# -- unreadable paths ------------------------------------------------------------


def test_unreadable_paths_are_errors_naming_them(tmp_path: Path) -> None:
    (tmp_path / "gone.txt").symlink_to("missing.txt")
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    write(tmp_path, {"d/ok.txt": "ok\n"})
    (tmp_path / "d" / "dangling").symlink_to("/nonexistent/target")

    cases = {
        "gone.txt": "cannot read gone.txt: no such file or directory "
                    "(a symbolic link to missing.txt)",
        "nope.txt": "cannot read nope.txt: no such file or directory",
        "a": "cannot read a: too many levels of symbolic links",
        "d": "cannot read d/dangling: no such file or directory "
             "(a symbolic link to /nonexistent/target)",
    }
    for arg, message in cases.items():
        with pytest.raises(UsageError) as e:
            gather(["d/ok.txt", arg], cwd=tmp_path)
        assert e.value.message == message
        assert e.value.exit_code == 2 and e.value.hint and "\n" not in e.value.hint
    with pytest.raises(UsageError) as e:
        gather(["new\nline.txt"], cwd=tmp_path)
    assert e.value.message == "cannot read new\\nline.txt: no such file or directory"
    with pytest.raises(UsageError) as e:
        gather([""], cwd=tmp_path)
    assert e.value.message == "a file to attach is named by an empty path"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_for_permissions(tmp_path: Path) -> None:
    write(tmp_path, {"secret.txt": "s\n", "d/locked/x.txt": "x\n"})
    (tmp_path / "secret.txt").chmod(0)
    (tmp_path / "d" / "locked").chmod(0)
    try:
        with pytest.raises(UsageError) as e:
            gather(["secret.txt"], cwd=tmp_path)
        assert e.value.message == "cannot read secret.txt: permission denied"
        with pytest.raises(UsageError) as e:
            gather(["d"], cwd=tmp_path)
        assert e.value.message == "cannot read d/locked: permission denied"
    finally:
        (tmp_path / "d" / "locked").chmod(0o755)


# -- globs -----------------------------------------------------------------------


def test_glob_expansion_and_no_match(tmp_path: Path) -> None:
    write(tmp_path, {
        "src/a.py": "a\n",
        "src/pkg/b.py": "b\n",
        "src/pkg/c.txt": "c\n",
        "src/.hidden/h.py": "h\n",
        "node_modules/x/y.py": "y\n",
    })
    assert glob_paths("**/*.py", cwd=tmp_path) == ["src/a.py", "src/pkg/b.py"]
    assert glob_paths("src/*", cwd=tmp_path) == ["src/a.py"]  # directories are not files
    assert glob_paths("node_modules/**/*.py", cwd=tmp_path) == ["node_modules/x/y.py"]
    assert glob_paths(str(tmp_path / "src" / "p?g" / "[bc].*")) == [
        str(tmp_path / "src/pkg/b.py"), str(tmp_path / "src/pkg/c.txt")]

    g = gather(["**/*.py"], cwd=tmp_path)
    assert paths(g) == ["src/a.py", "src/pkg/b.py"]
    assert g.notes == ["left out 1 file in vendor or linked directories that **/*.py matches: "
                       "node_modules/x/y.py"]
    assert g.attachments[1] == attachment("src/pkg/b.py", "b\n")

    with pytest.raises(UsageError) as e:
        glob_paths("**/*.rs", cwd=tmp_path)
    assert e.value.message == "no file matches **/*.rs"
    with pytest.raises(UsageError) as e:
        gather(["*.js", "src/a.py"], cwd=tmp_path)
    assert e.value.message == "no file matches *.js"
    with pytest.raises(UsageError) as e:
        gather(["**/y.py"], cwd=tmp_path)
    assert e.value.message == "no file matches **/y.py"
    assert e.value.hint == ("1 match in vendor or linked directories (name the directory in "
                            "the pattern to take them)")

    # A file whose name looks like a pattern is that file.
    write(tmp_path, {"odd[1].txt": "odd\n"})
    assert paths(gather(["odd[1].txt"], cwd=tmp_path)) == ["odd[1].txt"]


# -- render, describe, block_spans -----------------------------------------------


def test_render_format_and_escape() -> None:
    blocks = [
        attachment("src/app.py", "print('</file>')\n"),
        attachment('odd "name".txt', "no newline"),
        attachment("empty.txt", ""),
    ]
    expected = (
        '<file path="src/app.py">\n'
        "print('<\\/file>')\n"
        "</file>\n"
        "\n"
        '<file path="odd \\"name\\".txt">\n'
        "no newline\n"
        "</file>\n"
        "\n"
        '<file path="empty.txt">\n'
        "</file>\n"
        "\n"
        "Explain."
    )
    assert render(blocks, "Explain.") == expected
    assert render(blocks[:1], "") == '<file path="src/app.py">\nprint(\'<\\/file>\')\n</file>'
    assert render([], "just text") == "just text"


def test_block_spans_offsets() -> None:
    blocks = [
        attachment("src/app.py", "print('</file>')\n"),
        attachment('odd "name".txt', "no newline"),
        attachment("empty.txt", ""),
    ]
    text = render(blocks, "Explain.")
    spans = block_spans(text)
    assert spans == [("src/app.py", 0, 50), ('odd "name".txt', 52, 101), ("empty.txt", 103, 134)]
    assert text[134:] == "\n\nExplain."
    assert [text[s:e] for _, s, e in spans] == [render([b], "") for b in blocks]
    assert block_spans(render(blocks, "")) == spans

    # Control characters in a path round-trip through the attribute.
    weird = attachment("a\nb\\c\x01.txt", "x\n")
    text = render([weird], "")
    assert text == '<file path="a\\nb\\\\c\\x01.txt">\nx\n</file>'
    assert block_spans(text) == [("a\nb\\c\x01.txt", 0, len(text))]

    # A message that itself begins like a block: `count` reads only the recorded blocks.
    message = '<file path="fake">\nhi\n</file>'
    text = render(blocks[2:], message)
    assert block_spans(text) == [("empty.txt", 0, 31), ("fake", 33, 62)]
    assert block_spans(text, count=1) == [("empty.txt", 0, 31)]
    assert block_spans("no blocks") == []

    # A truncated file's opening line says so; its span is found all the same.
    cut = Attachment("big.txt", 4, sha(b"abcd"), "abcd", truncated=True, full_size=9)
    text = render([cut, Attachment("pipe", 2, sha(b"ab"), "ab", truncated=True)], "Sum?")
    assert text == ('<file path="big.txt" truncated="first 4 of 9 bytes">\nabcd\n</file>\n\n'
                    '<file path="pipe" truncated="first 2 bytes">\nab\n</file>\n\nSum?')
    assert block_spans(text) == [("big.txt", 0, 65), ("pipe", 67, 122)]
    assert block_spans('<file path="x" truncated="oops>\nab\n</file>') == []
    with pytest.raises(ChatcliError) as e:
        block_spans(render(blocks[:1], "hi"), count=2)
    assert e.value.message == "the message holds 1 of the 2 file blocks recorded for it"


def test_describe_and_sha256(tmp_path: Path) -> None:
    data = "ünï\ncode\n".encode()
    write(tmp_path, {"u.txt": data})
    g = gather(["u.txt"], cwd=tmp_path)
    assert describe(g.attachments) == [
        {"path": "u.txt", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    cut = gather(["u.txt"], max_bytes=4, truncate=True, cwd=tmp_path).attachments  # "ün"
    assert describe(cut) == [{"path": "u.txt", "size": 3, "sha256": sha(data[:3]),
                              "truncated": True, "full_size": len(data)}]
    assert g.attachments[0].sha256 == hashlib.sha256((tmp_path / "u.txt").read_bytes()).hexdigest()
