import os
import signal

from django.core.management import call_command
from django.core.management.base import BaseCommand

from board.management.commands.board import set_parent_death_signal


class Command(BaseCommand):
    help = (
        "The board's workers: django-q2's qcluster, ended whole (every process of its group) when the "
        "board that started it dies, however it dies. Started by `manage.py board`; not for use alone."
    )

    def handle(self, *args, **options):
        # django-q2 handles SIGTERM and SIGINT itself (a graceful stop that waits for running
        # tasks); SIGUSR1 is free, and means: the board is gone, end the whole group now. The
        # agents, in sessions of their own, are ended by the next board's start-up.
        signal.signal(signal.SIGUSR1, lambda signum, frame: os.killpg(0, signal.SIGKILL))
        set_parent_death_signal(signal.SIGUSR1)
        if os.getppid() == 1:  # the board died before the signal was set up
            os.killpg(0, signal.SIGKILL)
        call_command("qcluster")
