"""Reviewing a card's work: the diff of its branch against where it left the base branch (or of
one checkpoint against its parent), as a file list and pages of highlighted lines ready to render,
and the lead's comments on diff lines, checked against that diff and quoted for the agent.

Git is read only through the git layer (agents.worktrees), patches are parsed with unidiff and
lines highlighted with Pygments. Whatever the diff's size, one page costs at most PAGE_FILES
files, about PAGE_LINES changed lines, PAGE_ROWS rendered rows (FILE_ROWS for one file) of at most
LINE_CHARS characters each; a file with more than HUGE_FILE_LINES changed lines is not even read
for a page (its plain-text diff is one link away), and the file list shows FILE_LIST_MAX files.
"""

from __future__ import annotations

import codecs
import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_for_filename
from pygments.util import ClassNotFound
from unidiff import PatchSet
from unidiff.errors import UnidiffParseError

from agents import clones, shared_remote, worktrees

PAGE_FILES = 20  # files on one page of a diff at most
PAGE_LINES = 3_000  # changed lines (added + deleted) on one page, unless one file alone has more
PAGE_ROWS = 6_000  # rows (lines and hunk headers) rendered on one page, about
FILE_ROWS = 2_000  # rows of one file rendered before it is cut with a note
MIN_FILE_ROWS = 100  # rows a file still gets on a page whose PAGE_ROWS are spent
LINE_CHARS = 1_000  # characters of one line rendered; the rest is cut with "…"
HUGE_FILE_LINES = 20_000  # changed lines past which a file's patch is not read for a page at all
FILE_LIST_MAX = 1_000  # files named in the file list; the pages reach the rest
VIEWS = ("unified", "split")


class ReviewError(Exception):
    """A request about a card's diff that cannot be answered; ``str(e)`` is a sentence to show."""


class BadQuery(ReviewError):
    """Garbage in a diff request (a page that is not a number, an unknown view, a commit that is
    not hexadecimal): 400."""


class NotInDiff(ReviewError):
    """What was asked for is not there: a commit that is not one of the branch's, a page or a
    file the diff does not have: 404."""


class LineNotInDiff(ReviewError):
    """A comment on a path, line or side the diff does not show: 422."""


@dataclass(frozen=True)
class DiffQuery:
    """Which diff of a card to show: ``commit`` "" for the whole branch, else a checkpoint's (full
    or abbreviated) sha; ``page`` from 1; ``view`` "unified" or "split" (side by side)."""

    commit: str = ""
    page: int = 1
    view: str = "unified"

    @classmethod
    def parse(cls, params: Mapping[str, str], default_view: str = "unified") -> DiffQuery:
        """From request parameters ``commit``, ``page`` and ``view`` (each optional; ``view``
        falls back to ``default_view``, such as the remembered choice, when it is valid). Raises
        BadQuery for garbage."""
        commit = (params.get("commit") or "").strip()
        if commit and not (4 <= len(commit) <= 64 and all(c in "0123456789abcdefABCDEF" for c in commit)):
            raise BadQuery("commit must be a commit id (4 to 64 hexadecimal digits).")
        raw_page = (params.get("page") or "1").strip()
        if not raw_page.isdigit() or not 1 <= int(raw_page) <= 1_000_000:
            raise BadQuery("page must be a whole number from 1.")
        view = params.get("view") or (default_view if default_view in VIEWS else "unified")
        if view not in VIEWS:
            raise BadQuery("view must be 'unified' or 'split'.")
        return cls(commit=commit.lower(), page=int(raw_page), view=view)


@dataclass
class Row:
    """One rendered row of a file's diff: ``kind`` "hunk" (a hunk's header), "context", "add" or
    "del"; line numbers ``old`` and ``new`` (None where the side has no line); ``html``, the
    line highlighted and escaped; ``comments`` made on it (either side)."""

    kind: str
    old: int | None
    new: int | None
    html: SafeString
    comments: list = field(default_factory=list)


@dataclass
class SplitRow:
    """A row of the side-by-side view: the old side's row (a deleted or context line) on the left,
    the new side's (an added or context line) on the right; either may be None. A hunk header or
    a context line is the same Row on both sides."""

    left: Row | None
    right: Row | None

    @property
    def hunk(self) -> bool:
        return self.left is not None and self.left.kind == "hunk"

    @property
    def comments(self) -> list:
        left = self.left.comments if self.left else []
        right = self.right.comments if self.right and self.right is not self.left else []
        return left + right


@dataclass
class FileEntry:
    """A file of a diff's file list: the git layer's ChangedFile, its place (``index`` from 1) and
    the ``page`` it is shown on."""

    file: worktrees.ChangedFile
    index: int
    page: int

    @property
    def anchor(self) -> str:
        return f"diff-file-{self.index}"

    @property
    def renamed(self) -> bool:
        return bool(self.file.old_path) and self.file.old_path != self.file.path


@dataclass
class FileView:
    """A file shown on a page: its entry, its rows (unified) and a note (binary, too large, cut,
    nothing but a rename or mode change). ``cut``: the rows stop before the file's diff ends."""

    entry: FileEntry
    rows: list[Row] = field(default_factory=list)
    note: str = ""
    cut: bool = False

    @functools.cached_property
    def split_rows(self) -> list[SplitRow]:
        """The rows paired for the side-by-side view: a run of deleted lines next to the added
        lines that follow it."""
        out: list[SplitRow] = []
        rows, i = self.rows, 0
        while i < len(rows):
            if rows[i].kind in ("hunk", "context"):
                out.append(SplitRow(rows[i], rows[i]))
                i += 1
                continue
            deleted, added = [], []
            while i < len(rows) and rows[i].kind == "del":
                deleted.append(rows[i])
                i += 1
            while i < len(rows) and rows[i].kind == "add":
                added.append(rows[i])
                i += 1
            for k in range(max(len(deleted), len(added))):
                out.append(SplitRow(deleted[k] if k < len(deleted) else None, added[k] if k < len(added) else None))
        return out


@dataclass
class DiffPage:
    """One page of a card's diff: ``files`` on this page, ``entries`` (every file, for the list),
    ``pages`` in all, totals of ``added`` and ``deleted`` lines, ``commit`` (the checkpoint's full
    sha, "" for the whole branch) and a ``note`` when there is nothing to show (no branch, no
    change, a git error)."""

    query: DiffQuery
    commit: str = ""
    landed_change: bool = False  # the diff is the commit the card landed as (see landed_as_one_commit)
    entries: list[FileEntry] = field(default_factory=list)
    files: list[FileView] = field(default_factory=list)
    pages: int = 1
    note: str = ""

    @property
    def added(self) -> int:
        return sum(e.file.added for e in self.entries)

    @property
    def deleted(self) -> int:
        return sum(e.file.deleted for e in self.entries)

    @property
    def listed(self) -> list[FileEntry]:
        return self.entries[:FILE_LIST_MAX]

    @property
    def unlisted(self) -> int:
        return max(0, len(self.entries) - FILE_LIST_MAX)

    @property
    def previous_page(self) -> int | None:
        return self.query.page - 1 if self.query.page > 1 else None

    @property
    def next_page(self) -> int | None:
        return self.query.page + 1 if self.query.page < self.pages else None

    @property
    def rows(self) -> int:
        return sum(len(f.rows) for f in self.files)


def paginate(files: list[worktrees.ChangedFile]) -> list[int]:
    """The page (from 1) of each of ``files``, in order: a new page starts after PAGE_FILES files
    or before a file that would take the page past PAGE_LINES changed lines (a file larger than
    that has a page of its own)."""
    pages, page, count, lines = [], 1, 0, 0
    for f in files:
        weight = max(1, f.added + f.deleted)
        if count and (count >= PAGE_FILES or lines + weight > PAGE_LINES):
            page, count, lines = page + 1, 0, 0
        pages.append(page)
        count += 1
        lines += weight
    return pages


def _git_path(path: str) -> str:
    # git quotes a path holding quotes, backslashes or control characters C-style ("a\"b\tc");
    # unidiff hands it on as it is.
    if len(path) > 1 and path[0] == path[-1] == '"':
        return codecs.escape_decode(path[1:-1].encode("utf-8"))[0].decode("utf-8", "replace")
    return path


@functools.lru_cache(maxsize=512)
def _lexer(name: str):
    """Pygments' lexer for a file name (plain text when it knows none). Lines are never stripped,
    so that the highlighted lines stay in step with the diff's."""
    try:
        return get_lexer_for_filename(name, stripnl=False, stripall=False, ensurenl=True)
    except ClassNotFound:
        return TextLexer(stripnl=False, ensurenl=True)


_FORMATTER = HtmlFormatter(nowrap=True)


def highlight_lines(lines: list[str], path: str) -> list[str]:
    """``lines`` (without line ends) highlighted as one piece of the file ``path`` (Pygments, by
    file name), as one HTML string per line; Pygments escapes every character. Each line's spans
    are closed on that line. Falls back to plain escaped lines if the lexer fails."""
    if not lines:
        return []
    try:
        html = highlight("\n".join(lines) + "\n", _lexer(path.rsplit("/", 1)[-1]), _FORMATTER)
        out = html.split("\n")
        if out and out[-1] == "":
            out.pop()
        if len(out) == len(lines):
            return out
    except Exception:  # noqa: BLE001 - a lexer's bug must not cost the lead the diff
        pass
    return [str(escape(line)) for line in lines]


def _clip(value: str) -> tuple[str, bool]:
    text = value.rstrip("\n").rstrip("\r")
    if len(text) > LINE_CHARS:
        return text[:LINE_CHARS], True
    return text, False


def _rows(patched, path: str, limit: int) -> tuple[list[Row], bool]:
    """The rows of one parsed file (unidiff PatchedFile), at most ``limit``; and whether it was
    cut. Each hunk's old and new sides are highlighted as pieces of code of their own."""
    rows: list[Row] = []
    for hunk in patched:
        if len(rows) >= limit:
            return rows, True
        header = f"@@ -{hunk.source_start},{hunk.source_length} +{hunk.target_start},{hunk.target_length} @@"
        if hunk.section_header:
            header += f" {hunk.section_header}"
        rows.append(Row("hunk", None, None, escape(header)))
        body = [line for line in hunk if line.line_type in ("+", "-", " ")]
        room = limit - len(rows)
        cut = len(body) > room
        body = body[:room]
        texts = [_clip(line.value) for line in body]
        old = iter(highlight_lines([t for (t, _), line in zip(texts, body) if line.line_type != "+"], path))
        new = iter(highlight_lines([t for (t, _), line in zip(texts, body) if line.line_type != "-"], path))
        for line, (_, clipped) in zip(body, texts):
            if line.line_type == "-":
                kind, html = "del", next(old)
            elif line.line_type == "+":
                kind, html = "add", next(new)
            else:
                next(old)
                kind, html = "context", next(new)
            if clipped:
                html += '<span class="cut" title="Line cut: see the plain-text diff">…</span>'
            rows.append(Row(kind, line.source_line_no, line.target_line_no, mark_safe(html)))  # noqa: S308 - Pygments escaped it
        if cut:
            return rows, True
    return rows, False


def _parse(text: str) -> dict[str, object]:
    """The files of a patch by path (unidiff), "" → {}. Raises ReviewError when unidiff cannot
    read it."""
    if not text:
        return {}
    try:
        return {_git_path(f.path): f for f in PatchSet(text)}
    except UnidiffParseError as exc:
        raise ReviewError(f"The diff could not be read: {exc}") from exc


def _paths(files: Iterable[worktrees.ChangedFile]) -> list[str]:
    # A renamed file's old path too, or git shows it as added with no rename to pair it with.
    paths: list[str] = []
    for f in files:
        for p in (f.path, f.old_path):
            if p and p not in paths:
                paths.append(p)
    return paths


def landed_as_one_commit(card) -> bool:
    """Whether the card landed as one commit on the base (a merge or squash landing, as its
    "card" event records): its diff is then that commit's change, since the merged branch no
    longer differs from the base (or is deleted). A rebase landing replays several commits,
    so its card keeps the branch's own diff."""
    if not card.landed_commit:
        return False
    from board.models import Event  # the review reads the domain's record of the landing

    event = Event.objects.filter(card_id=card.pk, kind="card", data__landed=card.landed_commit).order_by("-id").first()
    return bool(event and event.data.get("mode") in ("merge", "squash"))


def source(card) -> tuple[str, str, str]:
    """Where the card's diff is read: ``(repository, base, branch)``. Single host: the project's
    checkout, its base branch and the card's local branch. Multi-host (``Project.remote_url``
    set): this process's clone of the shared remote, fetched at most every few seconds or at
    once when the card's run ended since the last fetch (agents.shared_remote.web_clone), with
    the remote-tracking refs of the base and of the card's pushed branch, so the web needs no
    worktree of the card. Raises worktrees.GitError (the remote cannot be read; BranchNotFound
    while the card's branch is not pushed yet)."""
    project = card.project
    if not shared_remote.is_multi_host(project):
        return project.repo_path, project.base_branch, card.branch
    run = card.current_run
    ended = run.ended_at.timestamp() if run is not None and run.ended_at else None
    repo = shared_remote.web_clone(project, changed_at=ended)
    if card.branch and clones.remote_tip(repo, card.branch) is None:
        raise worktrees.BranchNotFound(
            f"Nothing of {card.branch} is on the shared remote yet: a run pushes the card's branch when it ends."
        )
    return repo, clones.tracking_ref(project.base_branch), clones.tracking_ref(card.branch) if card.branch else ""


def _repo(card) -> str:
    return source(card)[0]


def checkpoints(card) -> list[worktrees.Commit]:
    """The commits of the card's branch since its latest run's base, oldest first: from the
    card's worktree on a single host, from the pushed branch in multi-host mode (the web has no
    worktree of the card there). [] when there is none yet or git cannot tell."""
    run = card.current_run
    if not (run and run.base_commit and card.branch):
        return []
    try:
        if shared_remote.is_multi_host(card.project):
            return clones.pushed_commits(_repo(card), run.base_commit, card.branch)
        if card.worktree_path and os.path.isdir(card.worktree_path):
            return worktrees.new_commits(card.worktree_path, run.base_commit)
    except worktrees.GitError:
        pass
    return []


def diff_range(card, commit: str = "", landed: bool | None = None) -> tuple[str, str]:
    """``(old, new)`` shas of the card's diff: where its branch left the base branch and the
    branch's tip, a checkpoint's parent and the checkpoint, or the landing commit's change when
    ``landed`` (``landed_as_one_commit``, read here when None). Raises NotInDiff for a commit that
    is not one of the branch's, worktrees.GitError for the rest (no branch, a missing base)."""
    repo, base, branch = source(card)
    try:
        if commit:
            return worktrees.checkpoint_range(repo, base, branch, commit)
        if landed if landed is not None else landed_as_one_commit(card):
            return worktrees.commit_range(repo, card.landed_commit)
        return worktrees.branch_range(repo, base, branch)
    except worktrees.CommitNotOnBranch as exc:
        raise NotInDiff(str(exc)) from exc


def diff_page(card, query: DiffQuery, comments: Iterable | None = None) -> DiffPage:
    """Page ``query.page`` of the card's diff (``query.commit``'s, or the whole branch's), with
    ``comments`` (DiffComments; by default the card's unsent ones on this diff) placed under their
    lines. Git's failures become the page's ``note``. Raises NotInDiff for a commit not on the
    branch or a page past the last."""
    page = DiffPage(query=query)
    if not card.branch:
        page.note = "No branch yet: start the card."
        return page
    page.landed_change = not query.commit and landed_as_one_commit(card)
    try:
        old, new = diff_range(card, query.commit, landed=page.landed_change)
        files = worktrees.changed_files(_repo(card), old, new)
    except worktrees.GitError as exc:
        page.note = str(exc)
        return page
    page.commit = new if query.commit else ""
    if not files:
        page.note = "This checkpoint changed no file." if query.commit else "No changes against the base branch yet."
        return page
    numbers = paginate(files)
    page.entries = [FileEntry(f, i, n) for i, (f, n) in enumerate(zip(files, numbers), 1)]
    page.pages = numbers[-1]
    if query.page > page.pages:
        raise NotInDiff(f"There is no page {query.page}: this diff has {page.pages} page{'s' if page.pages != 1 else ''}.")
    if comments is None:
        comments = card.comments.filter(sent_run=None, commit=page.commit)
    by_line: dict[tuple[str, str, int], list] = {}
    for comment in comments:
        by_line.setdefault((comment.path, comment.side, comment.line), []).append(comment)
    try:
        page.files = _file_views(_repo(card), old, new, [e for e in page.entries if e.page == query.page], by_line)
    except (worktrees.GitError, ReviewError) as exc:
        page.note = str(exc)
    return page


def _readable(entry: FileEntry) -> bool:
    f = entry.file
    return not f.binary and f.added + f.deleted <= HUGE_FILE_LINES


def _file_views(repo: str, old: str, new: str, entries: list[FileEntry], by_line: dict) -> list[FileView]:
    patched = _parse(worktrees.diff_between(repo, old, new, _paths(e.file for e in entries if _readable(e))))
    views, budget = [], PAGE_ROWS
    for entry in entries:
        f, view = entry.file, FileView(entry)
        views.append(view)
        if f.binary:
            view.note = "Binary file: its contents are not shown."
            continue
        if not _readable(entry):
            view.note = f"{f.added + f.deleted:,} changed lines: too many to show here."
            view.cut = True
            continue
        found = patched.get(f.path)
        if found is None or not len(found):
            view.note = {"renamed": "Renamed; the contents did not change.", "copied": "Copied; the contents did not change."}.get(
                f.status, "No line changed (the file's mode or type changed).")
            continue
        limit = min(FILE_ROWS, max(budget, MIN_FILE_ROWS))
        view.rows, view.cut = _rows(found, f.path, limit)
        budget -= len(view.rows)
        if view.cut:
            view.note = f"Cut: the first {len(view.rows):,} lines of this file's diff are shown."
        for row in view.rows:
            if row.kind in ("del", "context"):
                row.comments += by_line.get((f.path, "old", row.old), [])
            if row.kind in ("add", "context"):
                row.comments += by_line.get((f.path, "new", row.new), [])
    return views


def line_texts(card, commit: str, paths: Iterable[str]) -> dict[tuple[str, str, int], str]:
    """The lines of the card's diff (``commit``'s, or the whole branch's) in the files ``paths``:
    ``{(path, side, line number): text}``, side "old" for deleted and context lines, "new" for
    added and context lines. Raises NotInDiff, worktrees.GitError, ReviewError."""
    old, new = diff_range(card, commit)
    wanted = set(paths)
    files = [f for f in worktrees.changed_files(_repo(card), old, new) if f.path in wanted and not f.binary]
    if not files:
        return {}
    lines: dict[tuple[str, str, int], str] = {}
    for path, patched in _parse(worktrees.diff_between(_repo(card), old, new, _paths(files))).items():
        for hunk in patched:
            for line in hunk:
                text = line.value.rstrip("\n").rstrip("\r")
                if line.line_type in ("-", " "):
                    lines[(path, "old", line.source_line_no)] = text
                if line.line_type in ("+", " "):
                    lines[(path, "new", line.target_line_no)] = text
    return lines


def find_line(card, commit: str, path: str, side: str, line: int) -> str:
    """The text of line ``line`` on ``side`` ("old" or "new") of ``path`` in the card's diff
    (``commit``'s, or the whole branch's): what a comment may be made on. Raises LineNotInDiff
    when the diff does not show that line, NotInDiff for a commit not on the branch."""
    if not card.branch:
        raise LineNotInDiff("This card has no branch yet, so no diff to comment on.")
    try:
        lines = line_texts(card, commit, [path])
    except worktrees.GitError as exc:
        raise LineNotInDiff(str(exc)) from exc
    if (path, side, line) not in lines:
        where = "the old side" if side == "old" else "the new side"
        raise LineNotInDiff(f"Line {line} on {where} of {path} is not in this diff.")
    return lines[(path, side, line)]


def quote_lines(card, comments: Iterable) -> dict[int, str]:
    """The commented line's text for each of ``comments`` (DiffComments of ``card``), by comment
    id, read from the diff each was made on. Best effort: a comment whose line is no longer there
    (or whose diff cannot be read) is left out."""
    groups: dict[str, list] = {}
    for comment in comments:
        groups.setdefault(comment.commit, []).append(comment)
    quotes: dict[int, str] = {}
    for commit, group in groups.items():
        try:
            lines = line_texts(card, commit, {c.path for c in group})
        except (worktrees.GitError, ReviewError):
            continue
        for c in group:
            if (c.path, c.side, c.line) in lines:
                quotes[c.pk] = lines[(c.path, c.side, c.line)]
    return quotes


def file_diff(card, commit: str, path: str) -> str:
    """The whole plain-text diff of one file of the card's diff (``commit``'s, or the whole
    branch's): what a cut file links to. Raises NotInDiff when the file is not in that diff,
    worktrees.GitError."""
    if not card.branch:
        raise NotInDiff("This card has no branch yet.")
    old, new = diff_range(card, commit)
    files = [f for f in worktrees.changed_files(_repo(card), old, new) if f.path == path]
    if not files:
        raise NotInDiff(f"{path} is not in this diff.")
    return worktrees.diff_between(_repo(card), old, new, _paths(files))
