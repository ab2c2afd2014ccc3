"""Plot kernel_bench.py results: decode time per method, by W, one panel per layout and context.

    python -m benchmarks.gpu.plot_kernel benchmarks/results/kernel_h100.json
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {"ours": "fragment kernel (1 group)", "ours_fused_merge": "fragment kernel, fused merge",
          "ours_unpacked": "fragment kernel, shared fragments unpacked",
          "key_map_per_step": "key map (once per step, all layers)",
          "paged_independent": "paged decode, W independent",
          "sdpa_independent": "SDPA, W independent", "naive_rerotate": "gather + re-rotate + SDPA"}


def main(path: str) -> None:
    result = json.load(open(path))
    for r in result["decode"]:
        r.setdefault("layout", "contiguous")  # runs before the combined layout was timed
    layouts = sorted({r["layout"] for r in result["decode"]}, key=lambda x: x != "contiguous")
    contexts = sorted({r["context"] for r in result["decode"]})
    fig, axes = plt.subplots(len(layouts), len(contexts), figsize=(5 * len(contexts), 4 * len(layouts)),
                             squeeze=False)
    for row, layout in enumerate(layouts):
        for ax, c in zip(axes[row], contexts):
            rows = sorted((r for r in result["decode"] if r["context"] == c and r["layout"] == layout),
                          key=lambda r: r["workers"])
            ws = [r["workers"] for r in rows]
            for key, label in ((k, v) for k, v in LABELS.items() if rows and k in rows[0]["ms"]):
                ax.plot(ws, [r["ms"][key] * 1e3 for r in rows], marker="o", label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(ws, [str(w) for w in ws])
            ax.set_title(f"{layout} layout, {c // 1024}k shared tokens")
            ax.set_xlabel("workers W")
            ax.set_ylabel("decode attention, us (median)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{result['device']}: 32 q / 8 KV heads, head_dim 128, bf16")
    fig.tight_layout()
    out = path.rsplit(".", 1)[0] + ".png"
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main(sys.argv[1])
