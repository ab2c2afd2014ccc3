"""vllm-hogwild: Hogwild! Inference (W workers over one shared KV cache) as a vLLM plugin.

Pure logic (no vLLM, no torch): ``params`` (the request flag), ``worker_requests`` (what
each worker's request holds, and its stamp), ``layouts``, ``steps``, ``group``, ``planner``,
``admission``, ``prompts`` and ``protocol``. vLLM hooks: ``hooks`` (one module per seam),
the attention backends ``cpu_backend`` and ``cuda_backend`` (with ``attention``), and
``runtime``. Also ``models`` (the embedded SmolLM2) and ``cli``. The design:
``docs/design.md``.
"""

__version__ = "0.1.0"
