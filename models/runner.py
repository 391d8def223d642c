"""One forward pass over a collated batch: backbone, pooler, head.

`SplitRunner` runs the backbone and applies the engine's pooler and the
family's head, so the pooling type can be overridden. `WholeModelRunner`
runs an unknown family's own forward and uses its logits as they come, with
the model's built-in pooling (no override possible).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from .heads import Heads
from .poolers import Pooler, all_tokens


@dataclass
class DeviceBatch:
    input_ids: torch.Tensor         # [B, L] right padded
    attention_mask: torch.Tensor    # [B, L]
    token_type_ids: torch.Tensor | None
    lengths: torch.Tensor           # [B]
    seq_rows: torch.Tensor | None   # rows pooled to one vector
    token_rows: torch.Tensor | None  # rows returned per token
    # False when every row fills the width: the mask is all ones, and the model is not given
    # it, so it neither builds nor checks one (one text, tiny model, CPU: ~0.13 ms of 1.4).
    padded: bool = True


def _accepts_token_types(module: nn.Module) -> bool:
    return "token_type_ids" in inspect.signature(module.forward).parameters


def _model_inputs(b: DeviceBatch, uses_token_types: bool) -> dict:
    kwargs = {"input_ids": b.input_ids}
    if b.padded:
        kwargs["attention_mask"] = b.attention_mask
    if uses_token_types and b.token_type_ids is not None:
        kwargs["token_type_ids"] = b.token_type_ids
    return kwargs


def _rows(rows: torch.Tensor, hidden: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> tuple:
    """`rows` of the batch's hidden states, lengths and mask. Rows ascend (collate's
    flatnonzero), so as many rows as the batch has are all of it, in order: no copy."""
    if rows.shape[0] == hidden.shape[0]:
        return hidden, lengths, mask
    return hidden[rows], lengths[rows], mask[rows]


# Below this much work a forward runs no faster on several CPU threads: each
# op takes microseconds and waking the other threads costs as much. Those
# threads then spin-wait, burning a core the API or the database could use
# (measured on 2 cores: a one-text batch of a 2-layer, 32-wide model took
# 1.8 ms on one thread, and the same wall time but twice the CPU on two;
# MiniLM-L6 already gains from a second thread at 16 tokens, ~340 MFLOP).
SMALL_FORWARD_FLOPS = 150e6


class CpuThreads:
    """Intra-op threads per batch on a CPU: one for a small forward, all otherwise."""

    def __init__(self, model: nn.Module):
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        skip = {id(p) for p in embeddings.parameters()} if embeddings is not None else set()
        # ~2 FLOPs per weight per token; the embedding lookup is no arithmetic.
        self.flops_per_token = 2 * sum(p.numel() for p in model.parameters() if id(p) not in skip)
        self.most = torch.get_num_threads()

    def fit(self, b: "DeviceBatch") -> None:
        # Set on every batch (a fraction of a microsecond): the setting is the
        # calling thread's, and a runner may be called from more than one.
        if b.input_ids.device.type == "cpu":
            small = b.input_ids.numel() * self.flops_per_token < SMALL_FORWARD_FLOPS
            torch.set_num_threads(1 if small else self.most)


class DirectBackbone:
    """A BERT-like backbone's embeddings then its encoder, called directly, and traced.

    What the model's forward adds around those two calls (its decorators' signature
    inspection, building the attention mask, the pooler we do not use, the output
    dataclass) is a fifth to a quarter of a small model's forward: on the tiny model, one
    CPU thread, one text 1.87 -> 1.51 ms; two threads, 18 padded rows of up to 128 tokens
    5.3 -> 3.9 ms. Made only where a probe at load shows it gives the forward's own output
    (`direct_forward`); `masks` says whether that held for padded rows too, given the
    mask as the [B, 1, 1, L] boolean one scaled-dot-product attention takes.

    Each form of the call (with or without a mask, with or without token type ids) then runs
    as a TorchScript trace where one gives the same output as the eager call on probes of
    other shapes (`_traced`). Why:
    an eager forward is hundreds of operator calls from Python, each of which lets go of the
    GIL and must take it back; in a worker whose other threads run Python (shaping results,
    JSON, the database driver, Celery) each take-back can wait a whole switch interval. On
    the tiny model, two CPU threads, 20 x 80 tokens: 3.4 ms a batch alone and 15.5 ms beside
    one busy Python thread eagerly, 2.6 and 8.2 traced (one CPU thread: 40 against 4.7 ms).
    A trace runs its whole graph in C++ after one release; on a GPU that is every kernel
    launch of the forward, which the device thread otherwise issues one GIL turn at a time.
    """

    def __init__(self, embeddings: nn.Module, encoder: nn.Module):
        self.embeddings = embeddings
        self.encoder = encoder
        self.masks = False
        # Traced calls by (token type ids given, mask given): text prompts come without type
        # ids, pairs with them, and each call's graph is its own.
        self.traces: dict[tuple[bool, bool], torch.jit.ScriptModule] = {}
        # The probes the traces were checked on, by (token type ids given): SplitRunner checks
        # its traces of the whole pooled call on the same ones.
        self.probes: dict[bool, list] = {}

    def eager(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
              mask: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.embeddings(**kwargs)
        if mask is None:
            out = self.encoder(hidden)
        else:
            out = self.encoder(hidden, attention_mask=mask[:, None, None, :].bool())
        return out[0] if isinstance(out, tuple) else out.last_hidden_state

    def __call__(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        traced = self.traces.get((token_type_ids is not None, mask is not None))
        if traced is None:
            return self.eager(input_ids, token_type_ids, mask)
        # The interpreter as traced, without the executor's optimizing passes: they specialize
        # on the shapes of the first calls and re-specialize as batch shapes change.
        # (The setting is the calling thread's.)
        with torch.jit.optimized_execution(False):
            return traced(*_positional(input_ids, token_type_ids, mask))


def _positional(input_ids: torch.Tensor, token_type_ids: torch.Tensor | None,
                mask: torch.Tensor | None) -> list[torch.Tensor]:
    """The direct call's arguments as a trace takes them: the ones given, the mask as the batch's
    [B, L] (the trace makes SDPA's boolean mask of it: as an eager operator before the call it
    let go of the GIL and took it back once more)."""
    return [input_ids] + ([token_type_ids] if token_type_ids is not None else []) + ([mask] if mask is not None else [])


class _Pieces(nn.Module):
    """Embeddings then encoder with positional tensors only, the form a trace takes."""

    def __init__(self, embeddings: nn.Module, encoder: nn.Module, with_types: bool, with_mask: bool):
        super().__init__()
        self.embeddings, self.encoder = embeddings, encoder
        self.with_types, self.with_mask = with_types, with_mask

    def forward(self, input_ids: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, **({"token_type_ids": rest[0]} if self.with_types else {})}
        hidden = self.embeddings(**kwargs)
        if self.with_mask:
            out = self.encoder(hidden, attention_mask=rest[-1][:, None, None, :].bool())
        else:
            out = self.encoder(hidden)
        return out[0] if isinstance(out, tuple) else out.last_hidden_state


def _probe(config, device, rows: int, width: int, real: int, uses_token_types: bool):
    """`rows` rows of `width` arbitrary ids, the last with `real` real tokens and the rest padding."""
    ids = (torch.arange(1, rows * width + 1, device=device) * 7919 % config.vocab_size).reshape(rows, width)
    mask = torch.ones_like(ids)
    mask[-1, real:] = 0
    types = None
    if uses_token_types:
        types = (torch.arange(width, device=device) >= width // 2).long().expand(rows, width)
        types = types.clamp(max=max(getattr(config, "type_vocab_size", 1) - 1, 0))
    return ids, types, mask


def _traced(direct: DirectBackbone, probes: list, masked: bool) -> torch.jit.ScriptModule | None:
    """A trace of the direct call, if it gives the eager call's output on every probe: the trace
    is taken on the first, and the others (other widths, row counts, padding) catch a shape or a
    branch baked into it. None where tracing fails or any probe differs."""
    pieces = _Pieces(direct.embeddings, direct.encoder, probes[0][1] is not None, masked)

    def call(ids, types, mask):
        given = mask if masked else None
        return _positional(ids, types, given), direct.eager(ids, types, given), given

    return _checked_trace(pieces, probes, call)


def _checked_trace(module: nn.Module, probes: list, call) -> torch.jit.ScriptModule | None:
    """`module` traced on the first probe, if the trace gives the eager output on every probe;
    `call(ids, types, mask)` gives a probe's positional arguments, its eager output and the mask
    of the positions to compare (None: all of them)."""
    import warnings

    try:
        with warnings.catch_warnings():
            # torch.jit.trace is deprecated in favour of torch.compile and torch.export, neither of
            # which runs a graph without Python between its operators; its tracer warnings are
            # what the probes below check for real.
            warnings.simplefilter("ignore")
            with torch.inference_mode():
                traced = torch.jit.trace(module, tuple(call(*probes[0])[0]), check_trace=False)
                with torch.jit.optimized_execution(False):
                    for probe in probes:
                        args, expected, compared = call(*probe)
                        if not _close(traced(*args), expected, compared):
                            return None
    except Exception:  # noqa: BLE001 - a module the tracer cannot follow: the eager call it is
        return None
    return traced


def direct_forward(backbone: nn.Module, uses_token_types: bool) -> DirectBackbone | None:
    """The backbone's pieces called directly (DirectBackbone), or None where the backbone is
    not built so or that does not give its forward's own output on a probe with no padding."""
    embeddings, encoder = getattr(backbone, "embeddings", None), getattr(backbone, "encoder", None)
    if not isinstance(embeddings, nn.Module) or not isinstance(encoder, nn.Module):
        return None
    direct = DirectBackbone(embeddings, encoder)
    try:
        config = backbone.config
        device = next(backbone.parameters()).device
        # Two rows of 13 arbitrary ids; the second also as 9 real tokens and 4 of padding.
        ids, types, mask = _probe(config, device, 2, 13, 9, uses_token_types)
        with torch.inference_mode():
            kwargs = {"input_ids": ids, **({"token_type_ids": types} if types is not None else {})}
            if not _close(direct.eager(ids, types), backbone(**kwargs).last_hidden_state, mask=None):
                return None
            try:
                direct.masks = _close(direct.eager(ids, types, mask),
                                      backbone(**kwargs, attention_mask=mask).last_hidden_state, mask)
            except Exception:  # noqa: BLE001 - an encoder that takes no such mask: unpadded only
                direct.masks = False
    except Exception:  # noqa: BLE001 - any family whose pieces do not take these calls
        return None
    probes = [(ids, types, mask), _probe(config, device, 3, 5, 2, uses_token_types),
              _probe(config, device, 1, 1, 1, uses_token_types), _probe(config, device, 5, 40, 17, uses_token_types)]
    for with_types in ((False, True) if types is not None else (False,)):
        given = probes if with_types else [(i, None, m) for i, _, m in probes]
        direct.probes[with_types] = given
        for masked in ((False, True) if direct.masks else (False,)):
            traced = _traced(direct, given, masked)
            if traced is not None:
                direct.traces[with_types, masked] = traced
    return direct


def _close(got: torch.Tensor, expected: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Equal on the real tokens (what padding positions hold is never read), to within the dtype's
    rounding: the same kernels run either way, so on a CPU they agree bit for bit."""
    if got.shape != expected.shape:
        return False
    if mask is not None:
        got, expected = got[mask.bool()], expected[mask.bool()]
    tol = 1e-4 if expected.dtype == torch.float32 else 2e-2
    return torch.allclose(got.float(), expected.float(), rtol=tol, atol=tol)


class SplitRunner:
    def __init__(self, backbone: nn.Module, heads: Heads, pooler: Pooler):
        self.backbone = backbone
        self.heads = heads
        self.pooler = pooler
        self.uses_token_types = _accepts_token_types(backbone)
        self.threads = CpuThreads(backbone)
        self.direct = direct_forward(backbone, self.uses_token_types)
        self.pooled = pooled_traces(self.direct, pooler, heads.seq)

    def __call__(self, b: DeviceBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        self.threads.fit(b)
        direct = self.direct
        if direct is not None and (not b.padded or direct.masks):
            types = b.token_type_ids if self.uses_token_types else None
            mask = b.attention_mask if b.padded else None
            if b.token_rows is None and b.seq_rows is not None and b.seq_rows.shape[0] == b.input_ids.shape[0]:
                pooled = self.pooled.get((types is not None, mask is not None))
                if pooled is not None:  # every row pooled: one graph from the ids to the logits
                    with torch.jit.optimized_execution(False):
                        return pooled(*_positional(b.input_ids, types, b.attention_mask), b.lengths), None
            hidden = direct(b.input_ids, types, mask)
        else:
            hidden = self.backbone(**_model_inputs(b, self.uses_token_types)).last_hidden_state
        seq = tok = None
        if b.seq_rows is not None:
            h, lengths, mask = _rows(b.seq_rows, hidden, b.lengths, b.attention_mask)
            seq = self.heads.seq(self.pooler(h, lengths, mask)).float()
        if b.token_rows is not None:
            h, _, mask = _rows(b.token_rows, hidden, b.lengths, b.attention_mask)
            tok = self.heads.token(all_tokens(h, mask)).float()
        return seq, tok


class _Pooled(nn.Module):
    """The direct call's trace, then the pooler and the sequence head, as one module to trace."""

    def __init__(self, backbone: nn.Module, masked: bool, pooler: Pooler, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.masked = masked
        self.pooler = pooler

    def forward(self, input_ids: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        # rest: the token type ids where the backbone takes them, the [B, L] mask (which the
        # backbone is given only where it masks), the lengths.
        *given, mask, lengths = rest
        hidden = self.backbone(input_ids, *given, *([mask] if self.masked else []))
        return self.head(self.pooler(hidden, lengths, mask)).float()


def pooled_traces(direct: DirectBackbone | None, pooler: Pooler,
                  head: nn.Module | None) -> dict[tuple[bool, bool], torch.jit.ScriptModule]:
    """Traces of the whole call for batches whose rows are all pooled (every classify or score
    batch), from the ids to the head's fp32 output, by (token type ids given, mask given): one
    for each form the direct call has a trace of, where it gives that trace's output, pooled and
    headed eagerly, on the direct call's probes (which that trace matched the eager call on).

    Why: each eager operator of the pooler and the head lets go of the GIL and must take it
    back. On the device thread of a busy worker every take-back waits behind the threads running
    Python: on 2 CPU threads, a 20 x 90 batch of the tiny model beside one busy Python thread
    took 17-18 ms with the pooler and head run eagerly after the traced backbone, 10-11 ms as
    one graph (5-6 ms alone either way). As one graph the batch lets go of it once.
    Each is traced around the backbone's own trace, which the tracer inlines without running
    the backbone's Python again: half the time of tracing it afresh, at every engine's load.
    """
    traces: dict[tuple[bool, bool], torch.jit.ScriptModule] = {}
    if direct is None or not isinstance(head, nn.Module):
        return traces
    for (with_types, masked), backbone in direct.traces.items():
        module = _Pooled(backbone, masked, pooler, head)

        def call(ids, types, mask, masked=masked, backbone=backbone):
            # Unmasked, every row is whole: the pooler sees full lengths and a mask of ones.
            mask = mask if masked else torch.ones_like(mask)
            lengths = mask.sum(dim=1)
            hidden = backbone(*_positional(ids, types, mask if masked else None))
            return [*_positional(ids, types, mask), lengths], head(pooler(hidden, lengths, mask)).float(), None

        traced = _checked_trace(module, direct.probes[with_types], call)
        if traced is not None:
            traces[with_types, masked] = traced
    return traces


class WholeModelRunner:
    def __init__(self, model: nn.Module):
        self.model = model
        self.uses_token_types = _accepts_token_types(model)
        self.threads = CpuThreads(model)

    def __call__(self, b: DeviceBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        self.threads.fit(b)
        logits = self.model(**_model_inputs(b, self.uses_token_types)).logits.float()
        seq = logits[b.seq_rows] if b.seq_rows is not None else None
        tok = None
        if b.token_rows is not None:
            tok = all_tokens(logits[b.token_rows], b.attention_mask[b.token_rows])
        return seq, tok
