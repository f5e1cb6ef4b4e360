"""Launcher check: rank 1 fails at once, rank 0 would sleep for a minute; the launcher must stop rank 0 and fail."""
import os
import sys
import time

rank = int(os.environ["RANK"])
print(f"hello from rank {rank} of {os.environ['WORLD_SIZE']} local {os.environ['LOCAL_RANK']} "
      f"port {os.environ['MASTER_PORT']}", flush=True)
if rank == 1:
    sys.exit(7)
time.sleep(60)
print("rank 0 was not stopped", flush=True)
