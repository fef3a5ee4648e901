import ctypes
import ctypes.util
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from agents import runner
from agents.command import terminate_all
from board.models import Run

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of what is left at shutdown
RECONCILE_EVERY = 5.0  # seconds between checks for runs whose worker died


def worker_alive(host: str, pid: int | None) -> bool:
    """Whether the worker that claimed a run still lives. Runs claimed on another node (another
    BOARD_NODE_NAME: another host, or another board on this machine with its own data folder) are
    assumed alive: only that node can tell."""
    if host != settings.BOARD_NODE_NAME:
        return True
    return pid is not None and psutil.pid_exists(pid)


def left_by_a_dead_worker(host: str, pid: int | None) -> bool:
    """At start-up, whether a run claimed by (``host``, ``pid``) has lost its worker. Runs of
    other nodes (see worker_alive) are theirs to judge. On its own data folder (SQLite, the folder
    locked) nothing of this node runs yet, so every run of this node is dead: checking pids would
    take a pid reused since a reboot for the old worker. On a shared database (DATABASE_URL) other
    worker processes of this node may be running their runs (a plain qcluster beside
    `board --no-web`, a second worker service), so only a run whose pid is gone is dead."""
    if settings.DATABASE_URL:
        return not worker_alive(host, pid)
    return not worker_alive(host, None)  # no pid of this node's is alive yet


def set_parent_death_signal(signum: int) -> None:
    """Ask Linux to send ``signum`` to this process when its parent dies, however that happens
    (prctl PR_SET_PDEATHSIG, man 2 prctl; a no-op where there is no such call). Forked children
    do not inherit it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signum)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _die_with_parent() -> None:
    """In the web server, before exec: SIGKILL it when the board dies."""
    set_parent_death_signal(signal.SIGKILL)


def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
    """The process and all its descendants, agents in their own sessions included; taken before
    any signal is sent, since children of a dead parent are re-parented and lost from view."""
    try:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _lock_holders(path) -> str:
    """The processes that have the lock file open, as "pid (command)" items, for the message."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and any(f.path == str(path) for f in proc.open_files()):
                found.append(f"{proc.pid} ({' '.join((proc.info['cmdline'] or [])[:4])})")
        except (psutil.Error, OSError):
            continue
    return ", ".join(found)


class Command(BaseCommand):
    help = (
        "Start the board: the web server (daphne) and the workers (django-q2) together; Ctrl-C stops both. "
        "With --no-web, only the workers (a team server's worker service; docs/team-server.md)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.BOARD_HOST, help="Address to listen on (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=settings.BOARD_PORT, help="Port (default 8300).")
        parser.add_argument("--workers", type=int, default=settings.BOARD_WORKERS, help="Parallel agent runs.")
        parser.add_argument(
            "--no-web", action="store_true",
            help="Run only the workers, with the board's start-up and checks for runs whose worker died; "
                 "the web server runs apart (daphne), as on a team server.",
        )

    def handle(self, *args, host, port, workers, no_web=False, **options):
        if workers < 1:
            raise CommandError("--workers must be at least 1.")
        if not 0 < port < 65536:
            raise CommandError("--port must be between 1 and 65535.")
        if host not in ("127.0.0.1", "localhost", "::1") and not no_web:
            self.stderr.write(
                f"Listening on {host}: everyone must log in (README, \"Sharing it\"). Make the first account with "
                "manage.py createsuperuser, and add the names people use to DJANGO_ALLOWED_HOSTS."
            )
        self._lock = self._take_data_folder()
        if not no_web:
            self._check_port_free(host, port)
        call_command("migrate", interactive=False, verbosity=0)
        # A run still marked running whose worker is gone has lost its process.
        stale = runner.interrupt_orphans(lambda host_, pid: not left_by_a_dead_worker(host_, pid), reason="the board stopped while it ran")
        if stale:
            self.stdout.write(f"Marked {stale} run(s) left running by a previous board as interrupted.")
        for path in runner.sweep_worktrees():
            self.stdout.write(f"Removed the worktree {path}, which no card owns.")
        # A task the previous board's workers had taken but not run would wait for its retry
        # (hours); handing queued runs out again is safe, since a run is claimed once. Runs held
        # for a project's parallel limit go only as far as the project has free slots.
        Run.objects.hand_out_queued()
        # BOARD_HOST too: the web server's settings then require a login off loopback (BOARD_LOGIN_REQUIRED);
        # and BOARD_PORT, so the workers' webhook links (BOARD_PUBLIC_URL's default) name the real port.
        env = {**os.environ, "BOARD_WORKERS": str(workers), "PYTHONUNBUFFERED": "1", "BOARD_HOST": host,
               "BOARD_PORT": str(port)}
        base = str(settings.BASE_DIR)
        # Own sessions: a Ctrl-C in the terminal reaches only this process, which then stops the
        # children in order instead of all of them racing.
        # The children hold the data folder's lock too (pass_fds), so that while any of them is
        # left (this process killed with -9, say) no second board starts on the same folder; and
        # they are killed when this process dies (PR_SET_PDEATHSIG).
        options = dict(cwd=base, env=env, start_new_session=True, pass_fds=(self._lock.fileno(),))
        self.children = [] if no_web else [
            subprocess.Popen(
                [sys.executable, "-m", "daphne", "-v", "0", "-b", host, "-p", str(port), "config.asgi:application"],
                preexec_fn=_die_with_parent, **options,
            ),
        ]
        # board_workers arranges its own end with the board, for its whole process group.
        self.children.append(subprocess.Popen([sys.executable, "manage.py", "board_workers"], **options))
        self.stopping = False
        # Ctrl-C, a kill, or the terminal closing: all stop the board the same orderly way.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        code = 0
        try:
            if no_web:
                self.stdout.write(
                    f"Board workers running: {workers} worker(s) on {socket.gethostname()}; data in {settings.DATA_DIR}. "
                    "Press Ctrl-C to stop."
                )
            elif not self._wait_for_port(host, port):
                raise CommandError(f"The web server did not start on {host}:{port} (is the port in use?).")
            else:
                # 0.0.0.0 is no address to open: this machine reaches a wildcard bind on loopback,
                # which DJANGO_ALLOWED_HOSTS always admits.
                shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else f"[{host}]" if ":" in host else host
                self.stdout.write(
                    f"Board running at http://{shown}:{port}/ with {workers} worker(s); data in {settings.DATA_DIR}. "
                    "Press Ctrl-C to stop."
                )
            self.stdout.flush()
            last_check = time.monotonic()
            while not self.stopping:
                time.sleep(0.2)
                dead = [p for p in self.children if p.poll() is not None]
                if dead:
                    self.stderr.write(f"A board process exited (status {dead[0].returncode}); stopping.")
                    code = 1
                    break
                if time.monotonic() - last_check > RECONCILE_EVERY:
                    last_check = time.monotonic()
                    runner.interrupt_orphans(worker_alive, reason="its worker process died")
                    # A safety net: a release that failed after a run ended must not leave runs
                    # held beside a free slot.
                    Run.objects.release_all_held()
        finally:
            self._stop_all()
        if code:
            sys.exit(code)

    def _take_data_folder(self):
        """Hold an exclusive lock on the data folder for as long as this board runs: a second
        board on the same folder would mark this one's runs interrupted and race its workers."""
        path = settings.DATA_DIR / "board.lock"
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holders = _lock_holders(path)
            raise CommandError(
                f"A board is already running on the data folder {settings.DATA_DIR} "
                f"(process {handle.read().strip() or 'unknown'}; processes holding it: {holders or 'unknown'}). "
                "Stop it first, or set BOARD_DATA_DIR to another folder."
            )
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle

    def _check_port_free(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise CommandError(f"Cannot listen on {host}:{port}: {exc.strerror}. Choose another port with --port.")

    def _on_signal(self, signum, frame):
        self.stopping = True

    def _wait_for_port(self, host: str, port: int, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            if any(p.poll() is not None for p in self.children):
                return False
            try:
                with socket.create_connection((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port), 0.5):
                    return True
            except OSError:
                time.sleep(0.2)
        return False

    def _stop_all(self) -> None:
        terminate_all([p for child in self.children for p in _tree(child)], STOP_GRACE)
        for child in self.children:
            child.poll()
        stopped = runner.interrupt_orphans(worker_alive, reason="the board was stopped while it ran")
        self.stdout.write("Board stopped." + (f" {stopped} run(s) interrupted." if stopped else ""))
