"""Give each concurrently running job its own GPU.

    python -m diffprune.gpu_slots run [--slots N|auto] [--lock-dir DIR] -- CMD ARGS...
    python -m diffprune.gpu_slots status [--slots N|auto] [--lock-dir DIR]

Snakemake's ``--resources gpu=4`` caps how many GPU jobs run at once, but it does not say
*which* GPU a job should use. ``run`` does: it takes the first free slot (one lock file per
GPU, held with ``fcntl.flock``), sets ``CUDA_VISIBLE_DEVICES`` to that GPU and then *execs*
the command, so the command itself owns the lock through the inherited file descriptor.
When the command ends in any way (exit, crash, SIGKILL, out-of-memory kill) the kernel
closes the descriptor and the slot is free again: no stale lock files, no cleanup step.

How many slots (first match wins):
  ``--slots N`` (an integer; the workflow passes the config's ``execution.gpu_slots``),
  ``$DIFFPRUNE_GPU_SLOTS``, the devices listed in ``$CUDA_VISIBLE_DEVICES``,
  ``torch.cuda.device_count()``.
With 0 slots the command runs as is, without a device (the same DAG runs on CPU).

Inside a batch scheduler's allocation (SLURM, PBS, LSF) that already set
``CUDA_VISIBLE_DEVICES`` the scheduler has picked the device; ``run`` then leaves it alone
unless ``--slots`` or ``$DIFFPRUNE_GPU_SLOTS`` ask for slotting explicitly (e.g. one
multi-GPU allocation running a local Snakemake inside it).

Lock files live in ``--lock-dir``, else ``$DIFFPRUNE_GPU_LOCK_DIR``, else
``.snakemake/gpu-slots`` (relative to the working directory, i.e. the workflow's). Their
names carry the host name, so a lock directory on a shared file system never makes jobs on
different machines wait for each other.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import os
import socket
import sys
import time
from pathlib import Path

DEFAULT_LOCK_DIR = Path(".snakemake") / "gpu-slots"
SCHEDULER_JOB_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")
# Device nodes whose absence proves there is no GPU, so CPU machines never pay for importing
# torch (about a second per job) just to learn that there are zero devices.
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def _log(message: str) -> None:
    print(f"gpu_slots: {message}", file=sys.stderr, flush=True)


def parse_slots(value: str | int | None) -> int | None:
    """``"auto"`` / None / "" -> None (detect); otherwise a non-negative integer."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto", "none", "null")):
        return None
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"GPU slots must be a non-negative integer or 'auto', got {value!r}") from None
    if count < 0:
        raise ValueError(f"GPU slots must be a non-negative integer or 'auto', got {value!r}")
    return count


def visible_devices(env: dict[str, str] | None = None) -> list[str] | None:
    """Device ids listed in ``CUDA_VISIBLE_DEVICES`` (None when unset; [] when it hides all)."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" not in env:
        return None
    ids = [part.strip() for part in env["CUDA_VISIBLE_DEVICES"].split(",") if part.strip()]
    # CUDA stops at the first invalid id; "-1" is the conventional "no GPU".
    return [] if not ids or ids[0] == "-1" else ids


def detect_device_count() -> int:
    if not any(os.path.exists(node) for node in GPU_DEVICE_NODES):
        return 0
    try:
        import torch  # noqa: PLC0415 (only where a GPU may exist)
    except ImportError:
        return 0
    return torch.cuda.device_count()


def resolve_devices(slots: int | None, env: dict[str, str] | None = None) -> tuple[list[str], str]:
    """(device ids to hand out, where the number came from). [] means: run on CPU.

    When ``CUDA_VISIBLE_DEVICES`` already restricts the devices, slots map onto that list
    (slot i -> its i-th entry), so ``CUDA_VISIBLE_DEVICES=2,3`` with two slots uses GPUs 2, 3.
    """
    env = os.environ if env is None else env
    visible = visible_devices(env)
    origin = "--slots"
    if slots is None and env.get("DIFFPRUNE_GPU_SLOTS", "").strip():
        slots, origin = parse_slots(env["DIFFPRUNE_GPU_SLOTS"]), "$DIFFPRUNE_GPU_SLOTS"
    if slots is None:
        if visible is not None:
            return visible, "$CUDA_VISIBLE_DEVICES"
        return [str(i) for i in range(detect_device_count())], "torch.cuda.device_count()"
    if visible is None:
        return [str(i) for i in range(slots)], origin
    if slots > len(visible):
        _log(f"{origin} asks for {slots} slots but CUDA_VISIBLE_DEVICES lists {len(visible)} "
             f"device(s); using {len(visible)}")
    return visible[:slots], origin


def lock_file(lock_dir: Path, device: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device)
    return lock_dir / f"{socket.gethostname()}-gpu{safe}.lock"


def try_acquire(path: Path) -> int | None:
    """An open descriptor holding an exclusive flock on ``path``, or None if someone holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    # Who holds it, for `status` and for a human looking at the folder; the lock itself is
    # the flock, not this text.
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def acquire(devices: list[str], lock_dir: Path, poll_seconds: float = 0.5,
            timeout: float | None = None) -> tuple[int, str]:
    """Block until one of ``devices`` is free; return (locked descriptor, device id)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    announced = False
    while True:
        for device in devices:
            fd = try_acquire(lock_file(lock_dir, device))
            if fd is not None:
                return fd, device
        if timeout is not None and time.monotonic() - started > timeout:
            raise TimeoutError(f"no GPU slot became free within {timeout:.0f} s ({lock_dir})")
        if not announced:
            _log(f"all {len(devices)} GPU slot(s) busy, waiting for one ({lock_dir})")
            announced = True
        time.sleep(poll_seconds)


def slot_status(devices: list[str], lock_dir: Path) -> list[tuple[str, str | None]]:
    """[(device, holder pid or None)] without taking any slot for longer than a probe."""
    rows = []
    for device in devices:
        path = lock_file(lock_dir, device)
        if not path.exists():
            rows.append((device, None))
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                rows.append((device, None))
            except OSError:
                rows.append((device, Path(path).read_text().strip() or "?"))
        finally:
            os.close(fd)
    return rows


def run(command: list[str], slots: int | None, lock_dir: Path, timeout: float | None = None) -> None:
    """Exec ``command`` on a free GPU slot (never returns unless exec fails)."""
    if not command:
        raise SystemExit("gpu_slots run: no command given (usage: run [--slots N] -- CMD ...)")
    explicit = slots is not None or bool(os.environ.get("DIFFPRUNE_GPU_SLOTS", "").strip())
    in_allocation = any(os.environ.get(var) for var in SCHEDULER_JOB_VARS)
    if in_allocation and not explicit and visible_devices() is not None:
        _log(f"scheduler-assigned device(s) CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}")
        os.execvp(command[0], command)
    devices, origin = resolve_devices(slots)
    if not devices:
        os.execvp(command[0], command)
    fd, device = acquire(devices, lock_dir, timeout=timeout)
    # The exec'd command inherits the locked descriptor: the slot is held exactly as long as
    # the job (and anything it forks) lives.
    os.set_inheritable(fd, True)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=device)
    _log(f"slot {device} of {len(devices)} ({origin}) -> CUDA_VISIBLE_DEVICES={device}")
    os.execvpe(command[0], command, env)


def default_lock_dir() -> Path:
    return Path(os.environ.get("DIFFPRUNE_GPU_LOCK_DIR") or DEFAULT_LOCK_DIR)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffprune.gpu_slots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb, help_text in (("run", "run a command on a free GPU slot"),
                            ("status", "list the slots and which process holds each")):
        p = sub.add_parser(verb, help=help_text)
        p.add_argument("--slots", default="auto",
                       help="number of GPU slots, or 'auto' (env / CUDA_VISIBLE_DEVICES / torch)")
        p.add_argument("--lock-dir", type=Path, default=None,
                       help=f"folder of the per-slot lock files (default $DIFFPRUNE_GPU_LOCK_DIR or {DEFAULT_LOCK_DIR})")
        if verb == "run":
            p.add_argument("--timeout", type=float, default=None,
                           help="give up after waiting this many seconds for a free slot")
            p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = parser.parse_args(argv)
    lock_dir = args.lock_dir or default_lock_dir()
    try:
        slots = parse_slots(args.slots)
    except ValueError as error:
        parser.error(str(error))
    if args.verb == "run":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        run(command, slots, lock_dir, timeout=args.timeout)
    else:
        devices, origin = resolve_devices(slots)
        print(f"{len(devices)} slot(s) from {origin}; locks in {lock_dir}")
        for device, holder in slot_status(devices, lock_dir):
            print(f"  gpu {device}: {'free' if holder is None else f'held by pid {holder}'}")


if __name__ == "__main__":
    main()
