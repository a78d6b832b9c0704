"""Boot a User-Mode Linux guest with the host's root (hostfs, read-mostly) and drive it.

The init script (busybox-static's sh) mounts /proc and /sys, then runs the commands the host
writes into a directory both sides see (hostfs shares the host's /): `cmd.N` runs, its output
goes to `out.N` and its exit status to `rc.N`, renamed into place when complete. The guest's
RAM file lives in a `TMPDIR` this object owns, so its allocated blocks can be measured.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vballoon.uml import Uml, fetch

INIT = """#!{busybox} sh
B={busybox}
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
export PATH={bindir}:/usr/sbin:/usr/bin:/sbin:/bin
D={cmddir}
echo vballoon-guest-ready > $D/ready
n=0
while :; do
  if [ -e $D/cmd.$n ]; then
    sh $D/cmd.$n > $D/out.$n.tmp 2>&1
    echo $? > $D/rc.$n.tmp
    mv $D/out.$n.tmp $D/out.$n
    mv $D/rc.$n.tmp $D/rc.$n
    n=$((n + 1))
  else
    usleep {poll_us}
  fi
done
"""


class UmlGuestError(RuntimeError):
    """The guest did not boot, died, or a command did not finish in time."""


class UmlGuestTimeout(UmlGuestError, TimeoutError):
    """The guest did not answer in time; `timeout` is the seconds waited."""

    def __init__(self, message: str, timeout: float) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass(frozen=True)
class Command:
    rc: int
    out: str


def _mem_arg(mem: str | int) -> str:
    return f"{mem // (1 << 20)}M" if isinstance(mem, int) else mem


class UmlGuest:
    """A running UML guest; a context manager that always leaves no process behind.

    `balloon_socket` connects `virtio_uml` to a vhost-user backend (device id 5) listening there.
    """

    def __init__(
        self,
        uml: Uml | None = None,
        *,
        mem: str | int = "512M",
        balloon_socket: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        extra_args: tuple[str, ...] = (),
        boot_timeout: float = 60.0,
        poll_ms: int = 20,
        ramdir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.uml = uml if uml is not None else fetch()
        self.mem = _mem_arg(mem)
        self.balloon_socket = os.fspath(balloon_socket) if balloon_socket else None
        self._own_tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="vballoon-uml-")
            workdir = self._own_tmp.name
        self.workdir = Path(workdir)
        self.cmddir = self.workdir / "cmd"
        # TMPDIR: UML's RAM file goes here (on tmpfs, e.g. /dev/shm, it is shmem, as a memfd).
        self.ramdir = Path(ramdir) if ramdir is not None else self.workdir / "ram"
        self.bindir = self.workdir / "bin"
        self.extra_args = extra_args
        self.boot_timeout = boot_timeout
        self.poll_ms = poll_ms
        self.proc: subprocess.Popen[bytes] | None = None
        self.boot_secs: float | None = None
        self._n = 0
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------------------------
    def __enter__(self) -> UmlGuest:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command_line(self) -> list[str]:
        """The kernel's command line, arguments included."""
        args = [
            str(self.uml.kernel),
            f"mem={self.mem}",
            "root=/dev/root",
            "rootfstype=hostfs",
            "hostfs=/",
            "rw",
            f"init={self.workdir / 'init.sh'}",
            f"uml_dir={self.workdir / 'umid'}",
            "con=null",
            "con0=fd:0,fd:1",
        ]
        if self.balloon_socket:
            args.append(f"virtio_uml.device={self.balloon_socket}:5")
        return args + list(self.extra_args)

    def start(self) -> None:
        """Boots the guest and waits until its init is ready for commands."""
        if self.proc is not None:
            raise UmlGuestError("this guest was started already")
        for d in (self.cmddir, self.ramdir, self.bindir, self.workdir / "umid"):
            d.mkdir(parents=True, exist_ok=True)
        busybox = str(self.uml.busybox)
        # busybox --install -s puts every applet (insmod, awk, usleep...) on the guest's PATH.
        subprocess.run([busybox, "--install", "-s", str(self.bindir)], check=True)
        init = self.workdir / "init.sh"
        init.write_text(
            INIT.format(
                busybox=busybox,
                bindir=self.bindir,
                cmddir=self.cmddir,
                poll_us=self.poll_ms * 1000,
            )
        )
        init.chmod(0o755)
        env = {**os.environ, "TMPDIR": str(self.ramdir)}
        t0 = time.monotonic()
        # A session of its own: UML forks helper processes, all killed with the group.
        self.proc = subprocess.Popen(
            self.command_line(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name="uml-console", daemon=True)
        self._reader.start()
        try:
            self._wait_file(self.cmddir / "ready", self.boot_timeout, "boot")
        except BaseException:
            self.kill()
            raise
        self.boot_secs = time.monotonic() - t0

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._lock:
                self._lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def pid(self) -> int:
        """The UML kernel's process id."""
        if self.proc is None:
            raise UmlGuestError("the guest is not running")
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the guest is still running."""
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """Everything the guest printed on its console so far."""
        with self._lock:
            return "\n".join(self._lines)

    def poweroff(self, timeout: float = 20.0) -> bool:
        """Power the guest off from inside (sysrq o); True if it stopped within `timeout`."""
        if not self.alive():
            return True
        self.send("echo o > /proc/sysrq-trigger")
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        """SIGKILL the guest's whole process group and reap it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        # The group's other processes (UML's ptraced children) die a moment later: wait.
        deadline = time.monotonic() + 10
        while self.group_pids() and time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            time.sleep(0.01)
        if self._reader is not None:
            self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def close(self) -> None:
        """Powers the guest off (killing it if it hangs); idempotent."""
        try:
            if self.alive() and not self._stopped():
                self.poweroff(timeout=10)
        except UmlGuestError:
            pass
        finally:
            # Even after a clean power-off, helpers of the group may linger: kill them all.
            self.kill()
            if self._own_tmp is not None:
                self._own_tmp.cleanup()
                self._own_tmp = None

    def _stopped(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
        except OSError:
            return False

    def group_pids(self) -> list[int]:
        """Host processes still in the guest's process group (empty once closed)."""
        if self.proc is None:
            return []
        pgid = self.proc.pid
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getpgid(int(entry)) == pgid:
                    found.append(int(entry))
            except ProcessLookupError:
                continue
        return found

    # -- commands ---------------------------------------------------------------------------
    def send(self, script: str) -> int:
        """Queue a shell script to run in the guest; returns its number (no wait)."""
        if not self.alive():
            raise UmlGuestError(f"the guest is not running; console tail:\n{self._tail()}")
        n = self._n
        self._n += 1
        tmp = self.cmddir / f".cmd.{n}"
        tmp.write_text(script + "\n")
        tmp.rename(self.cmddir / f"cmd.{n}")  # atomic: the guest never sees half a script
        return n

    def result(self, n: int, timeout: float = 60.0) -> Command:
        """The result of command `n`, waiting up to `timeout` seconds for it."""
        rc_file = self.cmddir / f"rc.{n}"
        self._wait_file(rc_file, timeout, f"command {n}")
        return Command(
            rc=int(rc_file.read_text().strip() or "-1"),
            out=(self.cmddir / f"out.{n}").read_text(errors="replace"),
        )

    def run(self, script: str, timeout: float = 60.0, check: bool = True) -> Command:
        """Run a shell script in the guest and wait; UmlGuestError if it fails and `check`."""
        r = self.result(self.send(script), timeout)
        if check and r.rc != 0:
            raise UmlGuestError(f"guest command failed ({r.rc}): {script!r}\n{r.out}")
        return r

    def _wait_file(self, path: Path, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if not self.alive():
                raise UmlGuestError(f"the guest died during {what}; console tail:\n{self._tail()}")
            if time.monotonic() > deadline:
                msg = f"{what}: no answer in {timeout} s; console:\n{self._tail()}"
                raise UmlGuestTimeout(msg, timeout)
            time.sleep(0.005)

    def _tail(self, n: int = 40) -> str:
        with self._lock:
            return "\n".join(self._lines[-n:])

    # -- guest facts ------------------------------------------------------------------------
    def meminfo(self) -> dict[str, int]:
        """The guest's /proc/meminfo, in bytes (counts without a unit as they are)."""
        out = self.run("cat /proc/meminfo").out
        info = {}
        for line in out.splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if not parts:
                continue
            value = int(parts[0])
            info[key.strip()] = value * 1024 if parts[1:] == ["kB"] else value
        return info

    def load_balloon(self, timeout: float = 30.0) -> Command:
        """Loads the guest's virtio_balloon driver."""
        return self.run(f"insmod {self.uml.balloon_module}", timeout)

    def unload_balloon(self, timeout: float = 60.0) -> Command:
        """Unloads the guest's virtio_balloon driver (it deflates first)."""
        return self.run("rmmod virtio_balloon", timeout)

    def ram_file(self) -> Path:
        """UML's RAM file (unlinked by UML): its /proc/<pid>/fd entry."""
        for fd in sorted(os.listdir(f"/proc/{self.pid}/fd"), key=int):
            link = f"/proc/{self.pid}/fd/{fd}"
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target.startswith(str(self.ramdir)):
                return Path(link)
        raise UmlGuestError(f"no RAM file of the guest under {self.ramdir}")

    def ram_allocated_bytes(self) -> int:
        """Bytes of the guest's RAM file that hold blocks on the host (st_blocks * 512)."""
        return os.stat(self.ram_file()).st_blocks * 512

    def cpu_secs(self) -> float:
        """CPU time (user + system) used so far by the guest's processes on the host."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.group_pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (man 5 proc)
        return total / tick

    def ram_size_bytes(self) -> int:
        """Size of the guest's RAM file, bytes."""
        return os.stat(self.ram_file()).st_size
