"""Launcher check: each rank waits for SIGINT (the launcher passes Ctrl-C on) and exits cleanly, like a trainer."""
import os
import signal
import sys
import time

rank = os.environ["RANK"]


def on_sigint(signum, frame):
    print(f"rank {rank} got SIGINT, saving", flush=True)
    sys.exit(0)


signal.signal(signal.SIGINT, on_sigint)
print(f"rank {rank} ready", flush=True)
time.sleep(30)
print(f"rank {rank} never interrupted", flush=True)
