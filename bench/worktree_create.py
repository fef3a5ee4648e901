"""Benchmark: creating a card's worktree the board's way against plain `git worktree add`.

For repositories of 10,000 and 100,000 files (made here, in a temporary folder), it times the
board's path (agents.worktrees: free names, ensure_worktree, prepare_worktree, copy_ignored_files
with nothing to copy: what the runner does for a new card) and plain `git worktree add -b`, in
the same run, alternating, several rounds each, and prints the medians in seconds and their
ratio. Target (issue 3): ratio at most 1.2. The last line is `ratio_100k: <number>`.

Run from the repository root after the README's setup: .venv/bin/python bench/worktree_create.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents import worktrees  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
GIT = ["git", "-c", "user.name=Bench", "-c", "user.email=bench@example.invalid"]


def make_repo(root: Path, files: int) -> Path:
    """A repository with ``files`` small files, 100 a folder, in one commit."""
    repo = root / f"repo-{files}"
    repo.mkdir()
    subprocess.run([*GIT, "init", "-q", "-b", "main"], cwd=repo, check=True)
    for i in range(files):
        folder = repo / f"d{i // 100:05d}"
        if i % 100 == 0:
            folder.mkdir()
        (folder / f"f{i % 100:03d}.txt").write_text(f"file {i}\n")
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "Many files"], cwd=repo, check=True)
    return repo


def board_path(repo: Path, place: Path, n: int) -> float:
    started = time.perf_counter()
    branch, path = worktrees.free_names(str(repo), "agent", n, f"Bench card {n}", str(place))
    tree = worktrees.ensure_worktree(str(repo), "main", branch, path)
    worktrees.prepare_worktree(tree.path)
    worktrees.copy_ignored_files(str(repo), tree.path, [])
    return time.perf_counter() - started


def plain_git(repo: Path, place: Path, n: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["git", "worktree", "add", "-q", "-b", f"plain/{n}", str(place / f"plain-{n}"), "main"],
        cwd=repo, check=True, capture_output=True,
    )
    return time.perf_counter() - started


def measure(files: int, root: Path) -> float:
    made = time.perf_counter()
    repo = make_repo(root, files)
    print(f"repository of {files} files made in {time.perf_counter() - made:.1f} s", flush=True)
    place = root / f"worktrees-{files}"
    place.mkdir()
    board, plain = [], []
    for n in range(1, ROUNDS + 1):
        # Alternate which goes first, so the page cache favours neither.
        if n % 2:
            board.append(board_path(repo, place, n))
            plain.append(plain_git(repo, place, n))
        else:
            plain.append(plain_git(repo, place, n))
            board.append(board_path(repo, place, n))
    board_s, plain_s = statistics.median(board), statistics.median(plain)
    ratio = board_s / plain_s
    print(f"files: {files}  board_s: {board_s:.3f}  plain_git_s: {plain_s:.3f}  ratio: {ratio:.3f}  (median of {ROUNDS})")
    return ratio


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-worktree-") as tmp:
        root = Path(tmp)
        ratio_10k = measure(10_000, root)
        ratio_100k = measure(100_000, root)
    print(f"ratio_10k: {ratio_10k:.3f}")
    print(f"ratio_100k: {ratio_100k:.3f}")


if __name__ == "__main__":
    main()
