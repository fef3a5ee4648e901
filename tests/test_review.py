"""Reviewing a card: its diff per file (added, deleted, renamed and binary files named), paged and
bounded however large, per checkpoint, highlighted, in unified or side-by-side view; comments on
diff lines, refused when they point nowhere, and sent back to the agent as one follow-up. Every
test works on real throwaway repositories and real runs of command agents."""

from __future__ import annotations

import re

import pytest
from django.template.loader import render_to_string
from django.test import Client

from agents import runner, worktrees
from board import review
from board.models import Agent, Card, Column, DiffComment, Project, Run, RunState
from board.views import card_context
from tests.conftest import git

pytestmark = pytest.mark.django_db

OLD_PY = "".join(f"def f{i}():\n    return {i}\n\n" for i in range(1, 11))  # 30 lines
BINARY = bytes(range(256)) * 4


@pytest.fixture
def client():
    return Client(HTTP_HOST="127.0.0.1", raise_request_exception=True)


def htmx(client, url, data):
    return client.post(url, data, HTTP_HX_REQUEST="true")


@pytest.fixture
def repo(make_repo):
    """A repository whose main holds a Python file, a text file, a file to delete and a binary."""
    path = make_repo("review-repo")
    (path / "old.py").write_text(OLD_PY)
    (path / "notes.txt").write_text("".join(f"note {i}\n" for i in range(1, 21)))
    (path / "gone.txt").write_text("to be deleted\n")
    (path / "blob.bin").write_bytes(BINARY)
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "Files to review")
    return path


@pytest.fixture
def project_on(board_dirs):
    def make(path) -> Project:
        return Project.objects.create(name=path.name, repo_path=str(path), base_branch="main", branch_prefix="agent")

    return make


# One change of each kind: old.py renamed to new.py with one line changed, gone.txt deleted,
# blob.bin changed, notes.txt edited in two places, added.md and a name with quotes added.
EVERY_KIND = (
    "git mv old.py new.py && sed -i 's/return 5$/return 50/' new.py && git rm -q gone.txt"
    " && printf 'x' >> blob.bin && sed -i 's/^note 3$/note three/; s/^note 17$/note seventeen/' notes.txt"
    " && printf '# Added\\n<script>alert(1)</script>\\n' > added.md && echo hi > 'say \"hi\".txt'"
    " && echo changed everything"
)


def reviewed_card(project: Project, command: str, title: str = "Change files") -> Card:
    """A card of a command agent running ``command`` whose first run has ended in Review."""
    agent = Agent.objects.create(name=f"agent-{Agent.objects.count() + 1}", kind=Agent.Kind.COMMAND, command=command)
    card = Card.create(project, title, "Do it", agent)
    runner.execute(card.start().pk)
    card.refresh_from_db()
    assert card.current_run.state == RunState.SUCCEEDED, card.current_run.error
    assert card.column == Column.REVIEW
    return card


@pytest.fixture
def card(repo, project_on):
    return reviewed_card(project_on(repo), EVERY_KIND)


def page_of(client, card, query: str = "") -> str:
    response = client.get(f"/cards/{card.pk}/diff{query}")
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


# --- The git layer ---------------------------------------------------------------------------


def test_changed_files_names_added_deleted_renamed_and_binary_files(card):
    old, new = worktrees.branch_range(card.project.repo_path, "main", card.branch)
    files = {f.path: f for f in worktrees.changed_files(card.project.repo_path, old, new)}
    assert set(files) == {"new.py", "gone.txt", "blob.bin", "notes.txt", "added.md", 'say "hi".txt'}
    assert files["new.py"].status == "renamed" and files["new.py"].old_path == "old.py"
    assert (files["new.py"].added, files["new.py"].deleted) == (1, 1)
    assert files["gone.txt"].status == "deleted" and files["gone.txt"].deleted == 1
    assert files["blob.bin"].binary and files["blob.bin"].status == "modified"
    assert files["added.md"].status == "added" and files["added.md"].old_path == "" and files["added.md"].added == 2
    assert (files["notes.txt"].added, files["notes.txt"].deleted) == (2, 2)
    assert not any(f.binary for name, f in files.items() if name != "blob.bin")


def test_the_diff_of_a_commit_is_against_its_first_parent(card):
    repo = card.project.repo_path
    first = card.current_run.commits[0]
    text = worktrees.diff_of_commit(repo, first)
    assert "rename from old.py" in text and "rename to new.py" in text
    assert "Binary files a/blob.bin and b/blob.bin differ" in text
    assert text == worktrees.diff_between(repo, git(repo, "rev-parse", f"{first}^").strip(), first)


def test_a_checkpoint_range_refuses_commits_that_are_not_the_branchs_own(card, repo):
    main = git(repo, "rev-parse", "main").strip()
    git(repo, "branch", "other", "main")
    git(repo, "commit", "-q", "--allow-empty", "-m", "elsewhere")  # on main, after the branch left it
    for rev in (main, git(repo, "rev-parse", "main").strip(), "HEAD", "main", "zzzz", "deadbeef", "-p", ""):
        with pytest.raises(worktrees.CommitNotOnBranch):
            worktrees.checkpoint_range(str(repo), "main", card.branch, rev)
    mine = card.current_run.commits[-1]
    assert worktrees.checkpoint_range(str(repo), "main", card.branch, mine[:8])[1] == mine


# --- The diff on the card page -----------------------------------------------------------------


def test_the_card_page_names_each_kind_of_file_and_sums_up_the_diff(client, card):
    page = client.get(f"/cards/{card.pk}/").content.decode()
    diff = page[page.index('id="diff"'):page.index('id="review-comments"')]
    assert "6 files</strong>" in diff and "+6</span>" in diff and "−4</span>" in diff
    assert "old.py → new.py" in diff and ">renamed<" in diff
    assert ">deleted<" in diff and "gone.txt" in diff
    assert ">binary<" in diff and "Binary file: its contents are not shown." in diff
    assert ">added<" in diff and 'say &quot;hi&quot;.txt' in diff, "a quoted git path is shown as the file is named"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in diff and "<script>alert(1)" not in diff


def test_lines_are_highlighted_by_file_name_with_their_numbers(client, card):
    page = page_of(client, card)
    new_py = page[page.index('data-path="new.py"'):]
    new_py = new_py[:new_py.index("</table>")]
    assert '<span class="k">return</span>' in new_py, "Python is highlighted as Python"
    # The changed line: old line 14 deleted, new line 14 added, in one hunk with its context.
    assert re.search(r'<tr class="ln del"><td class="num"><button[^>]*data-side="old" data-line="14"', new_py)
    assert re.search(r'<tr class="ln add"><td class="num"></td><td class="num"><button[^>]*data-side="new" data-line="14"', new_py)
    assert '<span class="mi">50</span>' in new_py
    notes = page[page.index('data-path="notes.txt"'):]
    assert notes[:notes.index("</table>")].count('<tr class="hunk">') == 2, "two changes far apart are two hunks"


def test_side_by_side_pairs_each_deleted_line_with_the_added_line_that_replaced_it(client, card):
    page = page_of(client, card, "?view=split")
    assert 'data-view="split"' in page and 'class="diff-table split"' in page
    notes = page[page.index('data-path="notes.txt"'):]
    notes = notes[:notes.index("</table>")]
    row = re.search(r'<tr class="ln">((?:(?!</tr>).)*data-line="3"(?:(?!</tr>).)*)</tr>', notes, re.S).group(1)
    assert 'data-side="old" data-line="3"' in row and 'data-side="new" data-line="3"' in row
    assert "note 3" in row and "note three" in row
    assert '<td class="code del">' in row and '<td class="code add">' in row


def test_the_chosen_view_is_remembered_for_the_next_pages(client, card):
    response = client.get(f"/cards/{card.pk}/diff?view=split")
    assert response.cookies["diff_view"].value == "split"
    assert 'class="diff-table split"' in client.get(f"/cards/{card.pk}/").content.decode()
    assert 'class="diff-table split"' in page_of(client, card)
    assert 'class="diff-table unified"' in page_of(client, card, "?view=unified")
    assert 'class="diff-table unified"' in client.get(f"/cards/{card.pk}/").content.decode()


def test_a_push_of_the_diff_is_a_small_panel_that_loads_its_page_itself(card, monkeypatch):
    def no_git(*args, **kwargs):
        raise AssertionError("a push must not read the diff")

    monkeypatch.setattr(worktrees, "changed_files", no_git)
    monkeypatch.setattr(worktrees, "diff_between", no_git)
    html = render_to_string("board/card_detail.html#diff", {**card_context(card, ("header", "commits", "diff")), "oob": True})
    assert 'id="diff"' in html and 'hx-swap-oob="true"' in html
    assert f'hx-get="/cards/{card.pk}/diff"' in html and 'hx-trigger="load"' in html
    assert len(html) < 1000


def big_branch(repo, files: int, lines_each: int, branch: str = "agent/big") -> None:
    """A branch off main adding ``files`` files of ``lines_each`` lines each."""
    git(repo, "checkout", "-q", "-b", branch)
    folder = repo / "many"
    folder.mkdir()
    for i in range(files):
        (folder / f"file{i:03}.py").write_text("".join(f"value_{i}_{n} = {n}\n" for n in range(lines_each)))
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "Many files")
    git(repo, "checkout", "-q", "main")


def test_a_diff_of_300_files_and_10000_lines_is_paged_and_every_page_is_bounded(client, make_repo, project_on):
    repo = make_repo("big")
    big_branch(repo, 300, 34)  # 10,200 lines
    project = project_on(repo)
    card = Card.create(project, "Big", "", None)
    Card.objects.filter(pk=card.pk).update(branch="agent/big", column=Column.REVIEW)
    card.refresh_from_db()

    first = review.diff_page(card, review.DiffQuery())
    assert len(first.entries) == 300 and first.added == 10_200
    assert first.pages >= 10_200 // review.PAGE_LINES
    seen = []
    for number in range(1, first.pages + 1):
        page = review.diff_page(card, review.DiffQuery(page=number))
        assert 0 < len(page.files) <= review.PAGE_FILES
        assert sum(f.entry.file.added for f in page.files) <= review.PAGE_LINES
        assert page.rows <= review.PAGE_ROWS
        assert all(f.rows and not f.cut for f in page.files)
        seen += [f.entry.file.path for f in page.files]
    assert seen == [e.file.path for e in first.entries], "every file is on exactly one page, in order"

    html = client.get(f"/cards/{card.pk}/").content.decode()
    assert f"page 1 of {first.pages}" in html and "many/file299.py" in html, "the file list names every file"
    assert html.count('class="diff-file"') == len(first.files)
    assert len(html) < 1_500_000
    second = page_of(client, card, "?page=2")
    assert f'id="diff-file-{len(first.files) + 1}"' in second and 'id="diff-file-1"' not in second
    assert client.get(f"/cards/{card.pk}/diff?page={first.pages + 1}").status_code == 404


def test_a_huge_file_is_cut_with_a_note_and_its_whole_diff_is_a_link_away(client, make_repo, project_on, monkeypatch):
    repo = make_repo("huge")
    big_branch(repo, 2, 5_000)
    card = Card.create(project_on(repo), "Huge", "", None)
    Card.objects.filter(pk=card.pk).update(branch="agent/big")
    card.refresh_from_db()
    monkeypatch.setattr(review, "HUGE_FILE_LINES", 5_000)
    page = review.diff_page(card, review.DiffQuery())
    cut = page.files[0]
    assert cut.cut and len(cut.rows) == review.FILE_ROWS and "Cut: the first 2,000 lines" in cut.note
    monkeypatch.setattr(review, "HUGE_FILE_LINES", 4_000)
    page = review.diff_page(card, review.DiffQuery())
    assert page.files[0].rows == [] and "5,000 changed lines: too many to show here." in page.files[0].note

    html = page_of(client, card)
    assert "See this file's whole diff as plain text." in html
    raw = client.get(f"/cards/{card.pk}/diff/raw?path=many/file000.py")
    assert raw.status_code == 200 and raw["Content-Type"].startswith("text/plain")
    assert raw.content.decode().count("\n+value_0_") == 5_000
    assert client.get(f"/cards/{card.pk}/diff/raw?path=README.md").status_code == 404
    assert client.get(f"/cards/{card.pk}/diff/raw").status_code == 400


def test_a_very_long_line_is_cut_on_the_page(client, make_repo, project_on):
    repo = make_repo("long-line")
    git(repo, "checkout", "-q", "-b", "agent/long")
    (repo / "min.js").write_text("var a=" + "1+" * 50_000 + "1;\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "minified")
    git(repo, "checkout", "-q", "main")
    card = Card.create(project_on(repo), "Long", "", None)
    Card.objects.filter(pk=card.pk).update(branch="agent/long")
    html = page_of(client, card)
    assert 'class="cut"' in html and len(html) < 30_000


# --- Checkpoints -------------------------------------------------------------------------------


@pytest.fixture
def two_checkpoints(repo, project_on):
    """A card whose branch has two commits: the first adds first.txt, the second second.txt."""
    card = reviewed_card(project_on(repo), "echo one > first.txt && git add first.txt && git commit -qm 'First' "
                                           "&& echo two > second.txt && git add second.txt && git commit -qm 'Second'")
    assert len(card.current_run.commits) == 2
    return card


def test_each_checkpoint_has_its_own_diff_linked_from_the_list(client, two_checkpoints):
    card = two_checkpoints
    first, second = card.current_run.commits
    page = client.get(f"/cards/{card.pk}/").content.decode()
    assert f'hx-get="/cards/{card.pk}/diff?commit={first}"' in page and f'hx-get="/cards/{card.pk}/diff?commit={second}"' in page
    whole = page_of(client, card)
    assert "first.txt" in whole and "second.txt" in whole
    one = page_of(client, card, f"?commit={first}")
    assert "first.txt" in one and "second.txt" not in one and f"Checkpoint <code title=\"{first}\">" in one
    two = page_of(client, card, f"?commit={second[:12]}")
    assert "second.txt" in two and "first.txt" not in two and f'data-commit="{second}"' in two
    assert "second.txt" in client.get(f"/cards/{card.pk}/?commit={second}").content.decode()


def test_a_foreign_commit_is_404_and_garbage_is_400_never_500(client, two_checkpoints, repo):
    card = two_checkpoints
    base = git(repo, "rev-parse", "main").strip()
    git(repo, "checkout", "-q", "-b", "elsewhere", "main")
    git(repo, "commit", "-q", "--allow-empty", "-m", "not the card's")
    foreign = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "checkout", "-q", "main")
    for sha in (base, foreign, "0" * 40, "abcd"):
        assert client.get(f"/cards/{card.pk}/diff?commit={sha}").status_code == 404, sha
        assert client.get(f"/cards/{card.pk}/?commit={sha}").status_code == 404, sha
    for query in ("commit=HEAD", "commit=main", "commit=-p", "commit=%00", "page=0", "page=abc", "page=-1", "view=wide"):
        assert client.get(f"/cards/{card.pk}/diff?{query}").status_code == 400, query
        assert client.get(f"/cards/{card.pk}/?{query}").status_code == 400, query
    assert client.get(f"/cards/{card.pk}/diff/raw?path=first.txt&commit={foreign}").status_code == 404


# --- Comments ----------------------------------------------------------------------------------


def comment(client, card, path, line, side="new", text="Please fix", commit=""):
    return htmx(client, f"/cards/{card.pk}/comments",
                {"path": path, "line": line, "side": side, "text": text, "commit": commit, "view": "unified"})


def test_a_comment_on_a_line_is_stored_and_shown_under_that_line_and_in_the_list(client, card):
    response = comment(client, card, "new.py", 14, "new", "Why fifty?")
    assert response.status_code == 200
    saved = DiffComment.objects.get()
    assert (saved.path, saved.line, saved.side, saved.text, saved.commit, saved.sent_run) == ("new.py", 14, "new", "Why fifty?", "", None)
    answer = response.content.decode()
    assert answer.startswith('<tr class="comments-row">') and f'id="comment-{saved.pk}"' in answer
    assert '<template><section id="review-comments" class="panel" hx-swap-oob="true">' in answer
    assert "Send 1 comment back to the agent" in answer

    page = page_of(client, card)
    new_py = page[page.index('data-path="new.py"'):]
    line, shown = new_py.index('data-side="new" data-line="14"'), new_py.index("Why fifty?")
    assert line < shown < new_py.index("</tr>", new_py.index("Why fifty?")) < new_py.index('data-line="15"'), \
        "the comment sits under its line"
    card_page = client.get(f"/cards/{card.pk}/").content.decode()
    listed = card_page[card_page.index('id="review-comments"'):]
    assert "new.py:14 (new side)" in listed and "Why fifty?" in listed


def test_comments_on_old_lines_of_a_renamed_file_and_on_a_checkpoint_are_accepted(client, two_checkpoints, card):
    assert comment(client, card, "new.py", 14, "old", "Keep five").status_code == 200
    assert comment(client, card, "gone.txt", 1, "old", "Why delete this?").status_code == 200
    assert comment(client, card, 'say "hi".txt', 1, "new", "Odd name").status_code == 200
    first = two_checkpoints.current_run.commits[0]
    assert comment(client, two_checkpoints, "first.txt", 1, "new", "On the first", first[:10]).status_code == 200
    assert DiffComment.objects.get(card=two_checkpoints).commit == first, "stored with the full sha"
    assert "On the first" in page_of(client, two_checkpoints, f"?commit={first}")
    assert "On the first" not in page_of(client, two_checkpoints), "a checkpoint's comment shows on its own diff"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"text": "  "}, "Write a comment."),
        ({"path": "README.md"}, "is not in this diff"),
        ({"path": "nowhere.py"}, "is not in this diff"),
        ({"line": 2}, "Line 2 on the new side of new.py is not in this diff."),
        ({"line": 14, "side": "old", "path": "added.md"}, "is not in this diff"),
        ({"path": "blob.bin", "line": 1}, "is not in this diff"),
        ({"side": "both"}, "The side must be old or new."),
        ({"line": "abc"}, "The line number must be a whole number from 1."),
        ({"line": 0}, "greater than or equal to 1"),
        ({"path": ""}, "The path is missing."),
        ({"commit": "not-a-sha"}, "The commit must be a commit id"),
        ({"commit": "0" * 40}, "is not a commit of the branch"),
    ],
)
def test_garbage_comments_are_refused_with_the_reason_and_nothing_is_stored(client, card, fields, message):
    data = {"path": "new.py", "line": 14, "side": "new", "text": "A comment", "commit": "", "view": "unified", **fields}
    response = htmx(client, f"/cards/{card.pk}/comments", data)
    assert response.status_code == 422
    body = response.content.decode()
    assert message.replace('"', "&quot;") in body.replace("&#x27;", "'"), body
    assert 'class="comment-form"' in body, "the form comes back with what was typed"
    assert not DiffComment.objects.exists()


def test_an_unsent_comment_can_be_deleted_and_a_sent_one_cannot(client, card):
    comment(client, card, "new.py", 14, "new", "First")
    comment(client, card, "notes.txt", 3, "new", "Second")
    first, second = DiffComment.objects.order_by("id")
    response = htmx(client, f"/cards/{card.pk}/comments/{first.pk}/delete", {})
    assert response.status_code == 200
    assert f'<div id="comment-{first.pk}" hx-swap-oob="delete">' in response.content.decode()
    assert "Send 1 comment back" in response.content.decode()
    assert list(DiffComment.objects.all()) == [second]
    second.sent_run = card.current_run
    second.save()
    response = htmx(client, f"/cards/{card.pk}/comments/{second.pk}/delete", {})
    assert response.status_code == 409 and "sent to the agent already" in response.content.decode()
    assert DiffComment.objects.filter(pk=second.pk).exists()
    assert client.post(f"/cards/{card.pk}/comments/99999/delete").status_code == 404


# --- Sending comments back -----------------------------------------------------------------------


ECHO_PROMPT = (
    "if [ -e first.txt ]; then printf '%s\\n' \"$CARD_PROMPT\" > prompt-seen.txt; "
    "else seq 1 30 > first.txt; seq 1 10 > second.txt; fi; echo done"
)


def test_sending_comments_makes_one_follow_up_whose_prompt_holds_each_comment(client, repo, project_on):
    card = reviewed_card(project_on(repo), ECHO_PROMPT)
    runs_before = card.runs.count()
    comment(client, card, "first.txt", 7, "new", "Seven is wrong")
    comment(client, card, "second.txt", 10, "new", "Ten too\nand this second line")
    response = htmx(client, f"/cards/{card.pk}/comments/send", {"message": "Also add a test."})
    assert response.status_code == 200, response.content
    assert card.runs.count() == runs_before + 1, "exactly one follow-up run"
    run = card.runs.order_by("-id").first()
    card.refresh_from_db()
    assert card.current_run == run and run.state == RunState.QUEUED and run.previous_id is not None
    assert card.column == Column.IN_PROGRESS
    prompt = run.prompt
    assert "left 2 comments" in prompt
    assert "1. first.txt:7 (new side)\n   Line: 7\n   Seven is wrong" in prompt
    assert "2. second.txt:10 (new side)\n   Line: 10\n   Ten too\n   and this second line" in prompt
    assert prompt.rstrip().endswith("The lead also says:\nAlso add a test.")
    assert set(DiffComment.objects.values_list("sent_run", flat=True)) == {run.pk}
    answer = response.content.decode()
    assert f"run {run.pk}" in answer and 'id="card-header"' in answer and 'data-state="queued"' in answer
    assert all(f'<div id="comment-{c.pk}" hx-swap-oob="delete">' in answer for c in DiffComment.objects.all())

    runner.execute(run.pk)  # the agent gets the comments in its prompt
    card.refresh_from_db()
    assert card.current_run.state == RunState.SUCCEEDED and card.column == Column.REVIEW
    seen = git(repo, "show", f"{card.branch}:prompt-seen.txt")
    assert "first.txt:7 (new side)" in seen and "Seven is wrong" in seen and "Also add a test." in seen


def test_a_second_send_carries_only_the_comments_made_since(client, repo, project_on):
    card = reviewed_card(project_on(repo), ECHO_PROMPT)
    comment(client, card, "first.txt", 7, "new", "Seven is wrong")
    htmx(client, f"/cards/{card.pk}/comments/send", {})
    first_run = card.runs.order_by("-id").first()
    runner.execute(first_run.pk)
    card.refresh_from_db()
    assert card.column == Column.REVIEW

    comment(client, card, "first.txt", 30, "new", "Thirty too")
    response = htmx(client, f"/cards/{card.pk}/comments/send", {})
    assert response.status_code == 200
    second_run = card.runs.order_by("-id").first()
    assert second_run != first_run
    assert "left 1 comment on" in second_run.prompt and "first.txt:30" in second_run.prompt
    assert "Seven is wrong" not in second_run.prompt
    assert dict(DiffComment.objects.values_list("text", "sent_run")) == {"Seven is wrong": first_run.pk, "Thirty too": second_run.pk}


def test_sending_is_refused_with_nothing_to_send_while_running_and_outside_review(client, repo, project_on):
    card = reviewed_card(project_on(repo), ECHO_PROMPT)
    response = htmx(client, f"/cards/{card.pk}/comments/send", {})
    assert response.status_code == 409 and "There are no comments to send" in response.content.decode()

    comment(client, card, "first.txt", 7, "new", "Seven is wrong")
    card.start(follow_up="Something else first")  # running now
    runs = card.runs.count()
    response = htmx(client, f"/cards/{card.pk}/comments/send", {})
    assert response.status_code == 409 and "Only a card in Review takes a follow-up." in response.content.decode()
    assert card.runs.count() == runs and DiffComment.objects.get().sent_run is None

    Run.objects.filter(card=card).update(state=RunState.SUCCEEDED)
    Card.objects.filter(pk=card.pk).update(column=Column.REVIEW)
    Run.objects.filter(pk=card.runs.order_by("-id").first().pk).update(state=RunState.RUNNING)
    response = htmx(client, f"/cards/{card.pk}/comments/send", {})
    assert response.status_code == 409 and "already running" in response.content.decode()
    assert DiffComment.objects.get().sent_run is None

    response = htmx(client, f"/cards/{card.pk}/comments/send", {"message": "x" * 100_001})
    assert response.status_code == 422
    assert client.get(f"/cards/{card.pk}/comments/send").status_code == 405


def test_the_follow_up_box_still_sends_a_card_back_without_comments(client, repo, project_on):
    card = reviewed_card(project_on(repo), ECHO_PROMPT)
    comment(client, card, "first.txt", 7, "new", "Kept for later")
    response = client.post(f"/cards/{card.pk}/follow-up", {"text": "Just rename it."})
    assert response.status_code == 302
    run = card.runs.order_by("-id").first()
    assert run.prompt == "Just rename it." and DiffComment.objects.get().sent_run is None

