"""Files attached to a user message: paths in, text blocks out.

Contract:

- `gather(paths, stdin=..., max_files=50, max_bytes=1_000_000, truncate=False,
  attached=(), cwd=...)` turns what the user named into a `Gathered`: the
  `Attachment`s (path as the user wrote it, size, sha256 of the bytes, decoded text,
  an optional note, whether it was truncated) in order, and `notes`, every line the
  user should see about them. Relative paths are read from `cwd`
  (default: the current directory) and a leading `~` is expanded. Each path is
  - a file: taken as it is (a pipe such as `<(cmd)` or `/dev/stdin` too, read up
    to the byte cap);
  - a directory: its files, recursively, sorted by path. Inside a git work tree
    (and `git` on PATH) the files are those `git ls-files --cached --others
    --exclude-standard` lists, so `.gitignore` is honoured and a note counts what it
    left out (a work tree git refuses, owned by another user, gets the plain walk
    and a note saying so); elsewhere a walk that skips hidden directories (`.git`, `.venv`, ...),
    `node_modules`, `__pycache__` and virtual environments (a `pyvenv.cfg` inside),
    never follows a symbolic link to a directory, and skips FIFOs, sockets and
    devices, each with a note. A walked file's path is the directory as written
    joined with the file's path inside it (`src/` gives `src/app.py`, `.` gives
    `app.py`);
  - `-`: the bytes of `stdin()`, named `stdin` (once per call); empty stdin raises
    `UsageError` (a pipe that gave nothing is a mistake, not a file);
  - a glob pattern, when no file has that name: the files `glob_paths` finds
    (`.gitignore` is not consulted for a pattern; vendor directories and symbolic
    links to directories that the pattern does not name are left out, noted).
- Binary files (a NUL byte in the first 8 KiB, or not UTF-8 and more than 30% of
  the first 8 KiB undecodable or control characters) are skipped with one note for
  all of them. Other text that is not UTF-8 is decoded with U+FFFD for the bad bytes
  and a note (on the attachment and in `notes`, naming the path). A leading UTF-8
  byte order mark is dropped from the text (not from size or sha256). A file found
  twice (a directory and a file in it), or one of `attached` (files already attached
  to the same message, by their resolved path), is attached once, with a note.
- Caps: files are taken in order while at most `max_files` are kept and the kept
  bytes stay within `max_bytes`. A text file the caps would leave out, or cut, raises
  `UsageError` naming the cap (`--max-files` / `--max-bytes`, the flags that carry
  them) and `--truncate-files`, unless `truncate`: then the file that would pass
  `max_bytes` is truncated to the bytes left (whole UTF-8 characters;
  `Attachment.truncated`, with its `full_size` when known), the files after it and
  those past `max_files` are left out, and a note says each. Binary files never
  count against the caps (only their first 8 KiB are read).
- A path that cannot be read (missing, a broken symbolic link, a symbolic link
  loop, no permission, an unlistable directory) raises `UsageError` naming it, in
  one line; so does a glob that matches no file.
- `render(attachments, message)` is the text of the user message; `describe` gives
  what history keeps of each attachment (a truncated one adds `"truncated": true` and
  `"full_size"`, null when unknown); `block_spans` finds each block in a
  rendered message again (so that `/context` can count each one's tokens).

The rendered format (quoted by README)::

    <file path="src/app.py">
    ...file text...
    </file>

    <file path="notes.md">
    ...file text...
    </file>

    the user's message

One block per attachment, in order, separated by a blank line, then the user's
message after a blank line (nothing when the message is empty). The text is followed
by a newline unless it already ends with one (empty text: the closing tag follows
the opening line). Inside the text every `</file>` is written `<\\/file>`, so that
the first `</file>` after an opening line always closes its block; the escape is
one-way (text that already holds `<\\/file>` keeps it). In the path attribute a
backslash and a double quote are escaped with a backslash, and control characters
are written `\\n`, `\\r`, `\\t` or `\\xHH`.

A truncated file's opening line says so, and how much of it is there:
`<file path="big.txt" truncated="first 1000 of 52428800 bytes">` (`first 1000 bytes`
when the whole size is unknown: a pipe).

What this module deliberately does not know: tokens, tokenizers, context windows
and models (shortening a file that does not fit is packing's job); the CLI, flags
other than the cap names and `--truncate-files` in its messages, and the terminal (it
returns notes, it prints nothing); chat commands; history and storage (it gives
`describe`'s dicts and reads no database). It reads files and runs `git ls-files`, nothing else.
"""

from __future__ import annotations

import errno
import glob as globmod
import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatcli.errors import ChatcliError, UsageError

SNIFF_BYTES = 8192
"""How much of a file decides whether it is binary."""

BINARY_SHARE = 0.3
"""Not UTF-8 and more than this share of odd characters in the sniffed part: binary."""

VENDOR_DIRS = frozenset({"node_modules", "__pycache__"})
"""Directories a walk skips besides hidden ones and virtual environments."""

OPEN_TAG = '<file path="'
CLOSE_TAG = "</file>"
ESCAPED_CLOSE_TAG = "<\\/file>"
TRUNCATED_ATTR = ' truncated="'
_GLOB_CHARS = frozenset("*?[")
_LISTED = 5  # names shown in a note before "and N more"


@dataclass(frozen=True)
class Attachment:
    """One file as it enters a user message."""

    path: str  # as the user wrote it, or the walked directory joined with the inner path
    size: int  # bytes read (on disk for a regular file)
    sha256: str  # of those bytes
    text: str  # decoded
    note: str | None = None  # e.g. not UTF-8, decoded with replacement
    truncated: bool = False  # only its first `size` bytes are attached (--truncate-files)
    full_size: int | None = None  # a truncated file's whole size (None: unknown, a pipe)
    # the resolved path ("" for stdin), to know a file attached again; not compared
    real: str = field(default="", compare=False, repr=False)


@dataclass
class Gathered:
    """What `gather` took, and every line the user should see about it."""

    attachments: list[Attachment] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Found:
    shown: str  # the future Attachment.path
    fs: Path | None  # None: stdin
    regular: bool  # a regular file (its size is known before reading it)


def gather(
    paths: Sequence[str],
    *,
    stdin: Callable[[], bytes] | None = None,
    max_files: int = 50,
    max_bytes: int = 1_000_000,
    truncate: bool = False,
    attached: Sequence[Attachment] = (),
    cwd: Path | None = None,
) -> Gathered:
    """The attachments the user named by `paths` (see the module docstring)."""
    if max_files < 1:
        raise UsageError(f"--max-files must be at least 1 (got {max_files})",
                         "give the number of files to attach at most")
    if max_bytes < 1:
        raise UsageError(f"--max-bytes must be at least 1 (got {max_bytes})",
                         "give the number of bytes to attach at most")
    base = Path.cwd() if cwd is None else Path(cwd)
    out = Gathered()
    found: list[_Found] = []
    seen: set[str] = {a.real for a in attached if a.real}
    twice: list[str] = []
    stdin_named = False
    for arg in paths:
        if not arg:
            raise UsageError("a file to attach is named by an empty path",
                             "name a file, a directory, a glob pattern, or - for stdin")
        if arg == "-":
            if stdin is None:
                raise UsageError("- stands for stdin, but there is no stdin to read here",
                                 "pipe the text into chatcli, or name a file")
            if stdin_named:
                raise UsageError("- is named twice: stdin can be read only once",
                                 "name - once")
            stdin_named = True
            found.append(_Found("stdin", None, False))
            continue
        for item in _expand(arg, base, out.notes):
            key = os.path.realpath(item.fs or "")
            if key in seen:
                twice.append(item.shown)
                continue
            seen.add(key)
            found.append(item)

    binary: list[str] = []
    total = 0
    for i, item in enumerate(found):
        kept = len(out.attachments)
        if kept == max_files:
            rest = [x for x in found[i:] if x.fs is None or not _binary(x)]
            binary += [x.shown for x in found[i:] if x not in rest]
            if not rest:
                break
            if not truncate:
                raise UsageError(
                    f"{_count(kept + len(rest), 'text file')} to attach: more than the cap "
                    f"--max-files {max_files}",
                    f"raise --max-files, or add --truncate-files to attach the first "
                    f"{max_files} and leave out the rest")
            out.notes.append(
                f"kept {kept} of {_count(len(found), 'file')} found: cap --max-files "
                f"{max_files}; raise it to take more")
            break
        room = max_bytes - total
        data, size = _read(item, stdin, room, truncate)
        if data is None and size is None:
            binary.append(item.shown)
            continue
        if size == 0 and item.fs is None:
            raise UsageError("stdin (-f -) is empty: there is no file to attach",
                             "pipe the file's text into chatcli, e.g. chatcli ask -f - "
                             "\"Summarize.\" < notes.txt")
        whole = data is not None and size == len(data)
        if not whole:
            what = f"{size} bytes" if size is not None and size >= 0 else f"over {room} bytes"
            after = f", after {_count(kept, 'file')} of {total} bytes" if kept else ""
            if not truncate:
                raise UsageError(
                    f"{_shown(item.shown)} ({what}) would pass the cap --max-bytes "
                    f"{max_bytes}{after}",
                    "raise --max-bytes, or add --truncate-files to cut the files there")
            data = _whole_characters(data or b"")
            left = [x.shown for x in found[i + 1:]]
            decoded = _decode(data) if data else None
            if decoded is None:
                left.insert(0, item.shown)
            else:
                text, note = decoded
                full = size if size is not None and size >= 0 else None
                out.attachments.append(Attachment(
                    item.shown, len(data), hashlib.sha256(data).hexdigest(), text, note,
                    truncated=True, full_size=full, real=_real(item)))
                of = f" of {full}" if full is not None else ""
                out.notes.append(f"{_shown(item.shown)}: truncated to its first {len(data)}"
                                 f"{of} bytes by the cap --max-bytes {max_bytes}")
                if note is not None:
                    out.notes.append(f"{_shown(item.shown)}: {note}")
            if left:
                out.notes.append(
                    f"left out {_count(len(left), 'file')}: the cap --max-bytes {max_bytes} "
                    f"is reached: {_names(left)}")
            break
        assert data is not None
        decoded = _decode(data)
        if decoded is None:
            binary.append(item.shown)
            continue
        text, note = decoded
        out.attachments.append(Attachment(
            item.shown, len(data), hashlib.sha256(data).hexdigest(), text, note,
            real=_real(item)))
        total += len(data)
        if note is not None:
            out.notes.append(f"{_shown(item.shown)}: {note}")
    if binary:
        out.notes.append(f"skipped {_count(len(binary), 'binary file')}: {_names(binary)}")
    if twice:
        out.notes.append(
            f"left out {_count(len(twice), 'repeat')} of files already attached: "
            f"{_names(twice)}")
    return out


def glob_paths(pattern: str, *, cwd: Path | None = None) -> list[str]:
    """The files `pattern` matches, sorted, written as the pattern writes them.

    Python's glob rules, with `**` for any number of directories: wildcards do not
    match hidden names. Directories that match are left out (a pattern names files),
    and so are files inside `node_modules`, `__pycache__`, a virtual environment or
    a symbolic link to a directory, unless the pattern names that directory
    literally. No match raises `UsageError`.
    """
    base = Path.cwd() if cwd is None else Path(cwd)
    return _glob(pattern, base)[0]


def render(attachments: Sequence[Attachment], message: str) -> str:
    """The user message: one block per attachment, then `message` (module docstring)."""
    parts = [_block(a) for a in attachments]
    if message:
        parts.append(message)
    return "\n\n".join(parts)


def describe(attachments: Sequence[Attachment]) -> list[dict[str, object]]:
    """What history keeps of each attachment: path, size and sha256 (of the bytes
    attached); a truncated one adds `truncated` and its `full_size` (None: unknown)."""
    out: list[dict[str, object]] = []
    for a in attachments:
        record: dict[str, object] = {"path": a.path, "size": a.size, "sha256": a.sha256}
        if a.truncated:
            record.update(truncated=True, full_size=a.full_size)
        out.append(record)
    return out


def block_spans(rendered: str, count: int | None = None) -> list[tuple[str, int, int]]:
    """(path, start, end) of each file block at the head of a `render`ed message.

    `rendered[start:end]` is the block from its opening `<` to the end of `</file>`
    (the blank lines between blocks belong to none). Without `count`, every block
    that opens the message is found; a message whose own text begins like a block
    could then be taken for one, so give `count` (the number of attachments history
    recorded) to read exactly that many, or raise `ChatcliError` if there are fewer.
    """
    spans: list[tuple[str, int, int]] = []
    pos = 0
    while (count is None or len(spans) < count) and rendered.startswith(OPEN_TAG, pos):
        parsed = _read_attribute(rendered, pos + len(OPEN_TAG))
        if parsed is None:
            break
        path, quote = parsed
        line_end = _opening_end(rendered, quote)
        if line_end is None:
            break
        close = rendered.find(CLOSE_TAG, line_end)
        if close < 0 or rendered[close - 1] != "\n":
            break
        end = close + len(CLOSE_TAG)
        spans.append((path, pos, end))
        if not rendered.startswith("\n\n", end):
            break
        pos = end + 2
    if count is not None and len(spans) < count:
        raise ChatcliError(
            f"the message holds {len(spans)} of the {count} file blocks recorded for it",
            "the stored message and its attachment records disagree")
    return spans


def split_message(content: str, attachments: Sequence[Any]) -> tuple[str, str]:
    """A user message's words, and the file blocks before them (with their blank line):
    `head + words == content`. Without attachments, or blocks that disagree with them,
    the whole message is words."""
    if not attachments:
        return content, ""
    try:
        spans = block_spans(content, len(attachments))
    except ChatcliError:
        return content, ""
    end = spans[-1][2]
    words = content[end:].lstrip("\n")
    return words, content[: len(content) - len(words)]


def name_files(content: str) -> str:
    """A user message with each attached file's block shown as "[file PATH]", for a
    conversation shown again (`chat -c`, /switch)."""
    spans = block_spans(content)
    if not spans:
        return content
    words = content[spans[-1][2]:].lstrip("\n")
    return " ".join(f"[file {path}]" for path, _, _ in spans) + (f" {words}" if words else "")


# -- finding files ---------------------------------------------------------------


def _expand(arg: str, base: Path, notes: list[str]) -> list[_Found]:
    """The files one argument names (a file, a directory or a glob)."""
    fs = _resolve(arg, base)
    try:
        st = os.stat(fs)
    except FileNotFoundError as exc:
        if not os.path.lexists(fs) and _GLOB_CHARS & set(arg):
            matches, left_out = _glob(arg, base)
            if left_out:
                notes.append(
                    f"left out {_count(len(left_out), 'file')} in vendor or linked directories "
                    f"that {_shown(arg)} matches: {_names(left_out)}")
            return _sort_out([(m, _resolve(m, base)) for m in matches], notes)
        raise _unreadable(arg, fs, exc) from None
    except OSError as exc:
        raise _unreadable(arg, fs, exc) from None
    if stat.S_ISDIR(st.st_mode):
        return _walk(arg, fs, notes)
    return [_Found(arg, fs, stat.S_ISREG(st.st_mode))]


def _walk(arg: str, root: Path, notes: list[str]) -> list[_Found]:
    """The files under a directory the user named, with notes on what was left out."""
    where = _shown(arg)
    listed = _git_files(root, notes, where)
    if listed is None:
        rels, skipped, linked = _plain_walk(arg, root)
        if skipped:
            notes.append(f"left out {_count(len(skipped), 'hidden or vendor directory')}: "
                         f"{_names(sorted(skipped))}")
    else:
        rels, (files, dirs) = listed
        linked = []
        if files or dirs:
            what = " and ".join(
                _count(n, word) for n, word in ((files, "file"), (dirs, "directory")) if n)
            notes.append(f"left out {what} under {where} that .gitignore ignores")
    found = _sort_out([(_join(arg, rel), root / rel) for rel in rels], notes,
                      tracked=listed is not None, linked=linked)
    if not found:
        ignored_all = listed is not None and listed[1] != (0, 0)
        notes.append(f"{where}: no files to attach" + (
            " (.gitignore ignores them: name them, or use a glob, to take them)"
            if ignored_all else ""))
    return found


def _sort_out(entries: list[tuple[str, Path]], notes: list[str], *, tracked: bool = False,
              linked: list[str] | None = None) -> list[_Found]:
    """The regular files among (shown, path) `entries`; notes on the others.

    Directories (a link to one, a submodule) and special files are left out with a
    note; so are `tracked` entries (listed by git) deleted from the work tree. Any
    other entry that cannot be read raises `UsageError`.
    """
    found: list[_Found] = []
    linked = list(linked or [])
    special: list[str] = []
    missing: list[str] = []
    for shown, fs in entries:
        try:
            st = os.stat(fs)
        except OSError as exc:
            if tracked and not os.path.lexists(fs):
                missing.append(shown)
                continue
            raise _unreadable(shown, fs, exc) from None
        if stat.S_ISDIR(st.st_mode):
            linked.append(shown)
        elif not stat.S_ISREG(st.st_mode):
            special.append(shown)
        else:
            found.append(_Found(shown, fs, True))
    if linked:
        notes.append(f"did not enter {_count(len(linked), 'linked directory')} "
                     f"(symbolic link or submodule): {_names(sorted(linked))}")
    if special:
        notes.append(f"left out {_count(len(special), 'special file')} (FIFO, socket or "
                     f"device): {_names(special)}")
    if missing:
        notes.append(f"left out {_count(len(missing), 'tracked file')} missing from the work "
                     f"tree: {_names(missing)}")
    return found


def _git_files(root: Path, notes: list[str],
               where: str) -> tuple[list[str], tuple[int, int]] | None:
    """Paths under `root` that git does not ignore, and (files, directories) it ignores.

    None when git is missing or `root` is not inside a work tree (with a note when git
    refuses a work tree that another user owns).
    """
    if shutil.which("git") is None:
        return None
    env = {k: v for k, v in os.environ.items()
           if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}

    refused: list[str] = []

    def ls(*flags: str) -> list[str] | None:
        try:
            done = subprocess.run(
                ["git", "ls-files", *flags, "--exclude-standard", "-z"],
                cwd=root, env=env, capture_output=True, check=False, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return None
        if done.returncode != 0:
            if b"safe.directory" in done.stderr and not refused:
                refused.append(where)
                notes.append(f"{where}: git refuses this work tree (another user owns it), "
                             "so .gitignore is not honoured")
            return None
        return [os.fsdecode(p) for p in done.stdout.split(b"\0") if p]

    listed = ls("--cached", "--others")
    if listed is None:
        return None
    ignored = ls("--others", "--ignored", "--directory") or []
    dirs = sum(1 for p in ignored if p.endswith("/"))
    return sorted(set(listed)), (len(ignored) - dirs, dirs)


def _plain_walk(arg: str, root: Path) -> tuple[list[str], list[str], list[str]]:
    """(files, skipped directories, linked directories) under `root`, outside git."""
    files: list[str] = []
    skipped: list[str] = []
    linked: list[str] = []

    def fail(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else root
        raise _unreadable(_join(arg, _rel(where, root)), where, exc)

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        keep = []
        for name in dirnames:
            full = Path(dirpath, name)
            if os.path.islink(full):
                linked.append(_join(arg, _rel(full, root)))
            elif _vendor(name, full):
                skipped.append(_join(arg, _rel(full, root)))
            else:
                keep.append(name)
        dirnames[:] = keep
        files.extend(_rel(Path(dirpath, name), root) for name in filenames)
    return sorted(files), skipped, linked


def _glob(pattern: str, base: Path) -> tuple[list[str], list[str]]:
    """(files kept, files left out in vendor or linked directories); raise when none
    is kept. A directory the pattern names literally is never left out."""
    named = set(Path(pattern).parts)
    vendor: dict[Path, bool] = {}
    kept: list[str] = []
    left_out: list[str] = []
    for match in sorted(set(globmod.glob(os.path.expanduser(pattern), root_dir=base,
                                         recursive=True))):
        fs = _resolve(match, base)
        if os.path.isdir(fs):
            continue
        in_vendor = False
        for parent in Path(match).parents:
            if parent.name in ("", ".", "..") or parent.name in named:
                continue
            full = _resolve(str(parent), base)
            if full not in vendor:
                vendor[full] = os.path.islink(full) or _vendor(parent.name, full)
            if vendor[full]:
                in_vendor = True
                break
        (left_out if in_vendor else kept).append(match)
    if not kept:
        hint = "patterns are relative to the current directory; ** spans directories"
        if left_out:
            hint = (f"{_count(len(left_out), 'match')} in vendor or linked directories "
                    "(name the directory in the pattern to take them)")
        raise UsageError(f"no file matches {_shown(pattern)}", hint)
    return kept, left_out


def _vendor(name: str, full: Path) -> bool:
    """A directory a walk does not enter: hidden, vendored, or a virtual environment."""
    return name.startswith(".") or name in VENDOR_DIRS or os.path.isfile(full / "pyvenv.cfg")


# -- reading ---------------------------------------------------------------------


def _read(item: _Found, stdin: Callable[[], bytes] | None, room: int,
          cut: bool = False) -> tuple[bytes | None, int | None]:
    """(bytes, size) of a text candidate; (None, None): binary. Over `room`, the size
    differs from the length of the bytes (size -1 when unknown, for a pipe): the bytes
    are its first `room` when `cut`, else None."""
    if item.fs is None:
        assert stdin is not None
        data = stdin()
        if b"\0" in data[:SNIFF_BYTES]:
            return None, None
        return (data, len(data)) if len(data) <= room else (
            data[:room] if cut else None, len(data))
    try:
        with open(item.fs, "rb") as f:
            head = f.read(SNIFF_BYTES)
            if b"\0" in head:
                return None, None
            if item.regular:
                size = os.fstat(f.fileno()).st_size
                if size > room:
                    return (head + f.read(max(room - len(head), 0)))[:room] if cut else None, size
                data = head + f.read()
            else:
                data = head + f.read(max(room - len(head), 0) + 1)
                if len(data) > room:
                    return data[:room] if cut else None, -1
    except OSError as exc:
        raise _unreadable(item.shown, item.fs, exc) from None
    return (data, len(data)) if len(data) <= room else (data[:room] if cut else None, len(data))


def _binary(item: _Found) -> bool:
    """Whether a file past the caps is binary (its first 8 KiB; unreadable: not)."""
    assert item.fs is not None
    try:
        with open(item.fs, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return False
    return b"\0" in head or (bool(head) and _decode(head) is None)


def _whole_characters(data: bytes) -> bytes:
    """`data` less a UTF-8 character that the cut split at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return data  # ASCII: nothing split
        if byte >= 0xC0:  # the lead byte of the last character
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data if back >= need else data[:-back]
    return data


def _real(item: _Found) -> str:
    return os.path.realpath(item.fs) if item.fs is not None else ""


def _decode(data: bytes) -> tuple[str, str | None] | None:
    """(text, note), or None for binary data."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff"), None
    except UnicodeDecodeError as exc:
        sample = data[:SNIFF_BYTES].decode("utf-8", errors="replace")
        odd = sum(1 for ch in sample
                  if ch == "\ufffd" or ch == "\x7f" or (ch < " " and ch not in "\t\n\r\f\v\b\x1b"))
        if odd > BINARY_SHARE * len(sample):
            return None
        note = (f"not UTF-8 (first bad byte at offset {exc.start}): "
                "invalid bytes replaced with U+FFFD")
        return data.decode("utf-8", errors="replace").removeprefix("\ufeff"), note


def _unreadable(shown: str, fs: Path, exc: OSError) -> UsageError:
    reason = exc.strerror or str(exc)
    reason = reason[:1].lower() + reason[1:]
    code = exc.errno
    if code == errno.ENOENT and os.path.islink(fs):
        reason += f" (a symbolic link to {_shown(os.readlink(fs))})"
    hint = {
        errno.ENOENT: "check the path; a glob pattern needs *, ? or [...]",
        errno.EACCES: "check its permissions, or leave it out",
        errno.EPERM: "check its permissions, or leave it out",
        errno.ELOOP: "a symbolic link leads back to itself: fix it or leave it out",
    }.get(code if code is not None else -1, "check the path, or leave it out")
    return UsageError(f"cannot read {_shown(shown)}: {reason}", hint)


# -- rendering -------------------------------------------------------------------


def _block(a: Attachment) -> str:
    body = a.text.replace(CLOSE_TAG, ESCAPED_CLOSE_TAG)
    if body and not body.endswith("\n"):
        body += "\n"
    cut = ""
    if a.truncated:
        of = f" of {a.full_size}" if a.full_size is not None else ""
        cut = f'{TRUNCATED_ATTR}first {a.size}{of} bytes"'
    return f'{OPEN_TAG}{_attribute(a.path)}"{cut}>\n{body}{CLOSE_TAG}'


def _opening_end(rendered: str, quote: int) -> int | None:
    """The index of the newline that ends an opening line whose path attribute closes
    at `quote` (a `truncated` attribute may follow it); None if it is not one."""
    if rendered.startswith('">\n', quote):
        return quote + 2
    if not rendered.startswith(TRUNCATED_ATTR, quote + 1):
        return None
    start = quote + 1 + len(TRUNCATED_ATTR)
    end = rendered.find('"', start)
    if end < 0 or "\n" in rendered[start:end] or not rendered.startswith('">\n', end):
        return None
    return end + 2


_ATTR_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_ATTR_UNESCAPES = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


def _attribute(path: str) -> str:
    out = []
    for ch in path:
        if ch in _ATTR_ESCAPES:
            out.append(_ATTR_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def _read_attribute(text: str, i: int) -> tuple[str, int] | None:
    """The unescaped path starting at `i` and the index of its closing quote."""
    out = []
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return "".join(out), i
        if ch == "\n":
            return None
        if ch == "\\":
            nxt = text[i + 1:i + 2]
            if nxt in _ATTR_UNESCAPES:
                out.append(_ATTR_UNESCAPES[nxt])
                i += 2
                continue
            if nxt == "x" and len(text[i + 2:i + 4]) == 2:
                try:
                    out.append(chr(int(text[i + 2:i + 4], 16)))
                except ValueError:
                    return None
                i += 4
                continue
            return None
        out.append(ch)
        i += 1
    return None


# -- small helpers ---------------------------------------------------------------


def _resolve(path: str, base: Path) -> Path:
    return base / os.path.expanduser(path)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _join(arg: str, rel: str) -> str:
    """The path the user sees for `rel` inside the directory they wrote as `arg`."""
    if rel in ("", "."):
        return arg
    head = arg.rstrip("/")
    if head in ("", ".") and arg:
        return rel if head == "." else "/" + rel
    return f"{head}/{rel}"


def _shown(path: str) -> str:
    """`path` on one line: control characters escaped."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in path)


def _count(n: int, word: str) -> str:
    if n == 1:
        return f"1 {word}"
    if word.endswith("y"):
        return f"{n} {word[:-1]}ies"
    if word.endswith("ch"):
        return f"{n} {word}es"
    return f"{n} {word}s"


def _names(paths: Sequence[str]) -> str:
    shown = ", ".join(_shown(p) for p in paths[:_LISTED])
    more = len(paths) - _LISTED
    return f"{shown} and {more} more" if more > 0 else shown
