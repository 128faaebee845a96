"""The floor every extraction benchmark compares against: bare forward passes, nothing else.

A backbone pass (no LM head, no capture hooks) that stops after the deepest layer needed,
over emovec's own length-bucketed, right-padded batches. ``workers=1`` runs one batch at a
time with all of torch's threads, as every peer does; ``workers=N`` runs N batches side by
side with the threads split between them, which is emovec's scheduling without its pooling.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import torch

from emovec.extraction import _batches, _threads_per_worker, right_padded
from emovec.hooks import StopForward, backbone, stopping_after


def floor_pass(lm, ids: list[list[int]], batch_size: int, deepest: int, workers: int = 1) -> None:
    pad = lm.tokenizer.pad_token_id
    body = backbone(lm.model)

    def one(batch: list[int]) -> None:
        input_ids, mask = right_padded([ids[i] for i in batch], pad)
        # Grad mode is per thread: each worker turns it off itself.
        with torch.no_grad(), contextlib.suppress(StopForward):
            body(input_ids=input_ids, attention_mask=mask, use_cache=False)

    with stopping_after(lm.layers, deepest):
        batches = list(_batches([len(x) for x in ids], batch_size))
        if workers == 1:
            for batch in batches:
                one(batch)
            return
        with _threads_per_worker(workers), ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(one, batch) for batch in batches]:
                future.result()
