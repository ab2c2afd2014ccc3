"""Shutdown: a server stopped with streams in flight ends them, so that it can exit.

Patches ``AsyncLLM.shutdown``.

vLLM 0.32 stops the engine on SIGTERM (``--shutdown-timeout 0``: abort), then asks the HTTP
server to shut down, which waits for every open connection to close. But the task that feeds
the requests' output queues is cancelled without a word to them, so a stream in flight
waits forever and the server never exits (seen with plain requests as much as with groups:
``benchmarks/serving/soak.py`` sends SIGTERM with a burst of streams running). Before the engine
goes, every request still waiting for output is handed ``EngineDeadError``, as vLLM does
when its output handler fails: each stream ends with an error chunk and ``[DONE]``.
"""

from __future__ import annotations

from vllm_hogwild.hooks.patching import wrap


def install() -> None:
    from vllm.v1.engine.async_llm import AsyncLLM

    wrap(AsyncLLM, "shutdown", _shutdown)


def _shutdown(original):
    from vllm.v1.engine.exceptions import EngineDeadError

    def wrapper(self, *args, **kwargs):
        handler = getattr(self, "output_handler", None)
        processor = getattr(self, "output_processor", None)
        if handler is not None and processor is not None and not handler.done():
            loop = handler.get_loop()  # the queues belong to the server's event loop
            if loop.is_running() and not loop.is_closed():
                loop.call_soon_threadsafe(processor.propagate_error, EngineDeadError())
        return original(self, *args, **kwargs)

    return wrapper
