"""User-Mode Linux for real-guest runs: fetch it from Debian's packages, cached, without touching
the system's apt state (see README, "A real Linux guest").

`fetch()` downloads `user-mode-linux`, `libc6` and `busybox-static` from Debian's development
suite through a private apt configuration, extracts them into one directory and writes a copy of
`linux.uml` whose ELF interpreter and rpath point at the extracted libc (the stable suites' UML
builds die on this host's kernel; the development suite's needs a newer glibc than the host's).
`python -m vballoon.uml fetch` runs it from a shell. Booting lives in `vballoon.umlguest`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SUITE = "sid"
PACKAGES = ("user-mode-linux", "libc6", "busybox-static")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Bumped when the layout of the cache changes, so an old cache is rebuilt rather than misread.
CACHE_FORMAT = 1
APT_TIMEOUT_S = 600


class UmlError(RuntimeError):
    """UML could not be fetched or prepared (a bad download, a missing tool)."""


class UmlUnavailable(UmlError):
    """Debian's package registry could not be reached: callers may skip, saying so."""


@dataclass(frozen=True)
class Uml:
    """A fetched, runnable User-Mode Linux."""

    root: Path  # the extracted packages
    kernel: Path  # linux.uml, patched to the extracted libc
    busybox: Path  # busybox-static: the guest's shell and tools
    modules: Path  # /usr/lib/uml/modules/<version> inside root
    version: str  # the user-mode-linux package version

    @property
    def balloon_module(self) -> Path:
        """The virtio_balloon module of this kernel."""
        return self.modules / "kernel" / "drivers" / "virtio" / "virtio_balloon.ko"


def default_dir() -> Path:
    """Where UML is cached: `$VBALLOON_UML_DIR` or `~/.cache/vballoon/uml`."""
    env = os.environ.get("VBALLOON_UML_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "vballoon" / "uml"


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cached(dest: Path | None = None) -> Uml | None:
    """The UML in `dest` if a complete fetch is there, else None (never touches the network)."""
    dest = Path(dest) if dest is not None else default_dir()
    try:
        meta = json.loads((dest / "READY.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != CACHE_FORMAT:
        return None
    uml = _layout(dest, str(meta.get("version", "?")))
    if uml is None or not os.access(uml.kernel, os.X_OK):
        return None
    return uml


def fetch(
    dest: Path | str | None = None,
    *,
    mirror: str | None = None,
    refresh: bool = False,
    log: Callable[[str], None] = _log_stderr,
) -> Uml:
    """Fetch UML into `dest` (default `$VBALLOON_UML_DIR` or ~/.cache/vballoon/uml), once.

    Idempotent: a complete earlier fetch is returned as is unless `refresh`. Concurrent callers
    (parallel test runs) serialise on a lock file. Raises UmlUnavailable when the registry
    cannot be reached, UmlError for anything else that goes wrong.
    """
    dest = Path(dest) if dest is not None else default_dir()
    mirror = mirror or os.environ.get("VBALLOON_DEBIAN_MIRROR") or DEFAULT_MIRROR
    dest.mkdir(parents=True, exist_ok=True)
    with _locked(dest / ".lock"):
        if not refresh:
            found = cached(dest)
            if found is not None:
                return found
        (dest / "READY.json").unlink(missing_ok=True)
        patchelf = _ensure_patchelf(log)
        debs = _download(dest, mirror, log)
        root = dest / "root"
        staging = dest / "root.new"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(staging)], f"extracting {deb.name}")
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
        version = _deb_version(next(d for d in debs if d.name.startswith("user-mode-linux_")))
        _patch_kernel(dest, root, patchelf)
        uml = _layout(dest, version)
        if uml is None:
            raise UmlError(f"the extracted packages in {root} lack linux.uml, busybox or modules")
        (dest / "READY.json").write_text(
            json.dumps({"format": CACHE_FORMAT, "version": version, "mirror": mirror})
        )
        log(f"UML {version} ready in {dest}")
        return uml


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd: list[str], what: str, **kw: object) -> subprocess.CompletedProcess[str]:
    try:
        r = subprocess.run(
            cmd, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False, **kw
        )  # type: ignore[call-overload]
    except FileNotFoundError as e:
        raise UmlError(f"{what}: {cmd[0]} is not installed") from e
    except subprocess.TimeoutExpired as e:
        raise UmlUnavailable(f"{what}: {cmd[0]} gave no answer in {APT_TIMEOUT_S} s") from e
    if r.returncode != 0:
        raise UmlError(f"{what} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-2000:]}")
    return r


def _ensure_patchelf(log: Callable[[str], None]) -> str:
    """patchelf from Debian's packages: installed with apt-get when missing (we run as root)."""
    found = shutil.which("patchelf")
    if found:
        return found
    if os.geteuid() != 0:
        raise UmlError("patchelf is missing: install it (apt-get install patchelf)")
    log("installing patchelf (apt-get install -y patchelf)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "patchelf"]
    r = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        # The system's package lists may be missing or stale: refresh them once and retry.
        _run(["apt-get", "update", "-q"], "apt-get update (system lists)", env=env)
        _run(install, "apt-get install patchelf", env=env)
    found = shutil.which("patchelf")
    if not found:
        raise UmlError("patchelf is still missing after apt-get install")
    return found


def _apt_options(dest: Path, mirror: str) -> list[str]:
    """A private apt configuration: its own sources, lists and cache, nothing system-wide."""
    apt = dest / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    signed = f"[signed-by={KEYRING}] " if os.path.exists(KEYRING) else ""
    sources = apt / "sources.list"
    sources.write_text(f"deb {signed}{mirror} {SUITE} main\n")
    return [
        "-q",
        "-o",
        f"Dir::Etc::sourcelist={sources}",
        "-o",
        "Dir::Etc::sourceparts=-",
        "-o",
        f"Dir::State::Lists={apt / 'lists'}",
        "-o",
        f"Dir::Cache={apt / 'cache'}",
        "-o",
        "APT::Get::List-Cleanup=0",
        # Only the package index is needed, not the app-store metadata or translations.
        "-o",
        "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
        "-o",
        "Acquire::Languages=none",
        # Downloads land in a root-owned directory the _apt user cannot write.
        "-o",
        "APT::Sandbox::User=root",
    ]


def _download(dest: Path, mirror: str, log: Callable[[str], None]) -> list[Path]:
    opts = _apt_options(dest, mirror)
    log(f"apt-get update ({mirror} {SUITE}, private lists in {dest / 'apt'})")
    try:
        up = subprocess.run(
            ["apt-get", *opts, "update"],
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as e:
        raise UmlError("apt-get is not installed: UML is fetched from Debian's packages") from e
    except subprocess.TimeoutExpired as e:
        raise UmlUnavailable(f"apt-get update: {mirror} gave no answer in time") from e
    # apt-get update exits 0 when an index failed to download: the lists tell whether it worked.
    lists = list((dest / "apt" / "lists").glob(f"*_dists_{SUITE}_main_binary-*_Packages*"))
    if up.returncode != 0 or not lists:
        msg = "\n".join(
            line for line in (up.stdout + up.stderr).splitlines() if line[:2] in ("W:", "E:")
        )
        raise UmlUnavailable(f"cannot reach Debian's package registry at {mirror}: {msg.strip()}")
    debs_dir = dest / "debs"
    shutil.rmtree(debs_dir, ignore_errors=True)
    debs_dir.mkdir()
    log(f"apt-get download {' '.join(PACKAGES)}")
    try:
        dl = subprocess.run(
            ["apt-get", *opts, "download", *PACKAGES],
            cwd=debs_dir,
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise UmlUnavailable("apt-get download: the registry gave no answer in time") from e
    if dl.returncode != 0:
        text = (dl.stdout + dl.stderr).strip()[-2000:]
        kind = UmlUnavailable if "Failed to fetch" in text else UmlError
        raise kind(f"apt-get download failed ({dl.returncode}): {text}")
    debs = sorted(debs_dir.glob("*.deb"))
    names = {d.name.split("_", 1)[0] for d in debs}
    if names != set(PACKAGES):
        raise UmlError(f"apt-get download gave {sorted(names)}, expected {sorted(PACKAGES)}")
    return debs


def _deb_version(deb: Path) -> str:
    r = _run(["dpkg-deb", "-f", str(deb), "Version"], f"reading {deb.name}")
    return r.stdout.strip()


def _patch_kernel(dest: Path, root: Path, patchelf: str) -> None:
    """A copy of linux.uml that loads the extracted libc (running it through that ld.so by
    hand does not work: UML then miscomputes its memory layout)."""
    libdir = root / "usr" / "lib" / "x86_64-linux-gnu"
    interp = libdir / "ld-linux-x86-64.so.2"
    if not interp.exists():
        raise UmlError(f"the extracted libc6 has no {interp}")
    tmp = dest / "linux.uml.new"
    shutil.copy2(root / "usr" / "bin" / "linux.uml", tmp)
    _run(
        [patchelf, "--set-interpreter", str(interp), "--set-rpath", str(libdir), str(tmp)],
        "patchelf linux.uml",
    )
    tmp.chmod(0o755)
    tmp.rename(dest / "linux.uml")


def _layout(dest: Path, version: str) -> Uml | None:
    root = dest / "root"
    kernel = dest / "linux.uml"
    busybox = root / "usr" / "bin" / "busybox"
    mod_root = root / "usr" / "lib" / "uml" / "modules"
    try:
        versions = sorted(p for p in mod_root.iterdir() if p.is_dir())
    except OSError:
        return None
    if not versions or not kernel.exists() or not busybox.exists():
        return None
    return Uml(root=root, kernel=kernel, busybox=busybox, modules=versions[-1], version=version)


def main(argv: list[str] | None = None) -> int:
    """`python -m vballoon.uml fetch|path`."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m vballoon.uml", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="fetch UML into the cache (idempotent), print its paths")
    f.add_argument("--dir", default=None, help="cache directory (default: $VBALLOON_UML_DIR)")
    f.add_argument("--refresh", action="store_true", help="download again even if cached")
    args = p.parse_args(argv)
    try:
        uml = fetch(args.dir, refresh=args.refresh)
    except UmlError as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2 if isinstance(e, UmlUnavailable) else 1
    print(json.dumps({k: str(v) for k, v in uml.__dict__.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
