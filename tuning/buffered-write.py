"""Buffered write throughput and CPU, one GiB at a time: shows whether page-cache growth is
cheap on this machine (on a VM with free page reporting it is not: tuning/RESULTS.md, "This
VM's free page reporting").

Usage: python3 tuning/buffered-write.py FILE GIB
Run it inside a memory cgroup to see the cost when the page cache recycles its own pages.
"""
import os
import sys
import time


def main():
    path, gib = sys.argv[1], int(sys.argv[2])
    buf = b"\xa5" * (1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for g in range(gib):
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(1024):
                os.write(fd, buf)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"GiB {g + 1}: {1024 / wall:.0f} MiB/s, cpu {cpu:.2f} s", flush=True)
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()
