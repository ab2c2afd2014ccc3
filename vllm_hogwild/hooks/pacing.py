"""Think while answering in the scheduler: the writer waits for the thoughts, and ends the group.

Called from ``hooks/scheduler.py`` (which patches ``Scheduler.schedule``,
``Scheduler._reserve_prefill_lookahead`` and ``Scheduler.update_from_output``); patches nothing
itself.

Once per step, before vLLM schedules, each think-while-answering group's ``Pacing``
(``async_pacing.py``) is fed the tokens its workers sampled since the last step. A writer that
does not write this step is *capped*: ``_reserve_prefill_lookahead`` (vLLM's own per-request cap,
where a running request capped to 0 new tokens is skipped for the step) lets it compute no
token past the cap. Its cap is what it has computed, and before it first writes, its prompt less
its last token: the group starts whole, the writer's prompt computed with the thinker's (vLLM
discards the sample of a prompt not computed to its end), and the writer's first token is
sampled only when it first writes, from a view that holds the thoughts so far. A capped writer
is a member of its group absent from the batch; the planner places its tokens as any absent
worker's.

When the writer ends (its end of turn or ``max_tokens``), the answer is done: its thinker ends
with it (finish reason ``stop``), in the same step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from vllm_hogwild.async_pacing import Pacing
from vllm_hogwild.async_prompts import THINKER, WRITER
from vllm_hogwild.worker_requests import stamp_of


@dataclass
class Paced:
    """One group's pacing and how many of each worker's output tokens it was fed."""

    pacing: Pacing
    fed: list[int] = field(default_factory=lambda: [0, 0])
    writer_id: str | None = None
    thinker_id: str | None = None


def caps(paced: dict[str, Paced], groups: dict[str, list[Any]], decode: Callable[[int], str],
         waiting: Any) -> dict[str, int]:
    """This step's caps (writer request id -> most tokens it may have computed by the step's
    end), with every group's pacing brought up to date; ``paced`` loses the groups gone."""
    out = {}
    for key in [k for k in paced if k not in groups]:
        del paced[key]
    for key, reqs in groups.items():
        stamp = stamp_of(reqs[0].sampling_params)
        if not stamp.flag.is_async:
            continue
        by_worker = {stamp_of(r.sampling_params).worker: r for r in reqs}
        writer, thinker = by_worker.get(WRITER), by_worker.get(THINKER)
        if writer is None:
            continue  # the writer has ended; its thinker ends with it (end_thinkers)
        record = paced.get(key)
        if record is None:
            record = paced[key] = Paced(Pacing(stamp.flag.boundary))
        record.writer_id = writer.request_id
        if thinker is not None:
            record.thinker_id = thinker.request_id
        started = writer.status != waiting
        new = []
        for w, request in ((WRITER, writer), (THINKER, thinker)):
            tokens = [] if request is None else request.output_token_ids[record.fed[w]:]
            record.fed[w] += len(tokens)
            new.append([decode(t) for t in tokens])
        writes = record.pacing.update(new[WRITER], new[THINKER], thinker_done=started and thinker is None)
        if not writes:
            out[writer.request_id] = max(writer.num_computed_tokens, writer.num_prompt_tokens - 1)
    return out


def cap(caps: dict[str, int], request: Any, num_computed_tokens: int, num_new_tokens: int) -> int:
    """A request's new tokens this step under its cap, if it has one."""
    most = caps.get(request.request_id)
    return num_new_tokens if most is None else max(0, min(num_new_tokens, most - num_computed_tokens))


def end_thinkers(sched: Any, paced: dict[str, Paced], outputs: dict[int, Any]) -> None:
    """End the thinker of every group whose writer ended in this step's update, and say so in the
    step's outputs (its last output of the step carries the finish reason)."""
    from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs
    from vllm.v1.request import RequestStatus

    for record in list(paced.values()):  # (ending a thinker frees its group: its record goes)
        thinker = sched.requests.get(record.thinker_id) if record.thinker_id else None
        writer = sched.requests.get(record.writer_id) if record.writer_id else None
        if thinker is None or thinker.is_finished() or (writer is not None and not writer.is_finished()):
            continue
        sched.finish_requests([thinker.request_id], RequestStatus.FINISHED_STOPPED)
        reason = thinker.get_finished_reason()
        batch = outputs.setdefault(thinker.client_index, EngineCoreOutputs())
        mine = [o for o in batch.outputs if o.request_id == thinker.request_id]
        if mine:
            mine[-1].finish_reason = reason
        else:
            batch.outputs.append(EngineCoreOutput(request_id=thinker.request_id, new_token_ids=[],
                                                  finish_reason=reason))

