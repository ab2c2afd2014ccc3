"""Which of the vLLM internals the plugin patches for a supported release (``vllm_hogwild.releases``) are
missing or re-signed in another release's source. Reads source only: the other release need not run here.

    python scripts/vllm_drift.py 0.34.0              # fetches that release's wheel (pip) and reads its .py files
    python scripts/vllm_drift.py /path/to/src        # a folder holding that release's vllm/ package
    python scripts/vllm_drift.py 0.34.0 --against 0.32

Exit status 1 if anything moved."""
import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vllm_hogwild import releases  # noqa: E402


def source_of(version: str) -> str:
    """The .py files of vLLM ``version``'s wheel, unpacked once under the cache."""
    root = Path(os.environ.get("VLLM_HOGWILD_CACHE", Path.home() / ".cache" / "vllm-hogwild")) / f"vllm-src-{version}"
    if not (root / "vllm" / "__init__.py").exists():
        wheels = root / "wheel"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"vllm=={version}",
                        "-d", str(wheels)], check=True)
        with zipfile.ZipFile(next(wheels.glob("vllm-*.whl"))) as z:
            z.extractall(root, [n for n in z.namelist() if n.startswith("vllm/") and n.endswith(".py")])
    return str(root)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("release", help="a vLLM version to fetch, or a folder holding its vllm/ package")
    ap.add_argument("--against", default=sorted(releases.RELEASES)[-1], choices=sorted(releases.RELEASES),
                    help="the supported release whose list of targets to check (default: the newest)")
    args = ap.parse_args()
    root = args.release if os.path.isdir(args.release) else source_of(args.release)
    want = releases.targets(args.against)
    problems = releases.check(root, want)
    print(f"{len(want) - len(problems)} of {len(want)} targets of vLLM {args.against} unchanged in {root}")
    for line in problems:
        print("  " + line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
