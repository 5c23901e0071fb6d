"""OSFT: Orthogonal Subspace Fine-Tuning (Nayak et al. 2025, "Sculpting Subspaces: Constrained Full
Fine-Tuning in LLMs for Continual Learning", arXiv:2504.07097).

Every target weight matrix W0 (N x M, R = min(N, M)) is decomposed once, W0 = U S V^T (float32). Its top
k = floor((1 - u) R) singular directions (u = ``unfreeze_rank_ratio``) are frozen: training may change W only
in the orthogonal complement of both U_h = U[:, :k] and V_h = V[:, :k], so at every step

    U_h^T W_t = U_h^T W0    and    W_t V_h = W0 V_h.

W stays an ordinary ``nn.Parameter`` (the forward pass is the model's own matrix product, and every checkpoint
is a plain Hugging Face model). Two hooks of the one training loop enforce the constraint
(:mod:`hone.algorithms.osft_subspace` has the algebra and the cost of each layout):

* after backward: G <- (I - U_h U_h^T) G (I - V_h V_h^T), so clipping and AdamW's moments see only the
  trainable directions (what the paper prescribes);
* after the optimizer step: AdamW's per-element scaling and its weight decay leak into the frozen directions
  (projecting gradients alone is not enough), so W is put back onto the constraint, W <- P(W) + F with F the
  frozen part of W0. This is exact and does not accumulate rounding.

u = 1 freezes nothing: no decomposition, no projection, and the run equals SFT bit for bit. u = 0 freezes all of
each target's directions: its weight is simply not trained. Parameters that are not targets (embeddings,
norms, ``lm_head``, biases) train normally, as in Training Hub.

Targets are found from the model's structure (never from its name): every linear-like module with a 2-D
``weight`` inside the transformer blocks (:func:`hone.models.structure.transformer_blocks`): q/k/v/o and
gate/up/down projections, fused qkv / gate_up layouts included. ``target_patterns`` (regular expressions searched
in parameter names) replaces that choice.

``rank_policy="adaptive"`` is the paper's per-layer rule (its section on adaptive rank selection, after AdaSVD):
a layer's importance I is the mean cosine similarity between the hidden states entering and leaving that
transformer block, measured on a few batches of the training data, clipped to [0, 1]; the layer freezes the
fraction r = mrr + I (trr - mrr) of each target's directions, with mrr = 0.1 (the paper's minimum retention
ratio) and trr = 1 - u (the paper's target retention ratio, 0.8 there, is the user's frozen fraction here, so u
keeps its meaning: u = 1 is still SFT); when trr < 0.1, mrr = trr.

Distributed: the SVD is shared out across ranks (:func:`hone.algorithms.osft_subspace.decompose`); the hooks find
the parameters by name in the model they are given (DDP, FSDP2, activation checkpointing), and with FSDP2's
row-sharded weights each rank keeps the bases of its rows and sums the projections' small products over ranks.
docs/osft.md has the whole story, with the cost and the measured figures.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hone.algorithms.osft_subspace import SVDCache, Subspace, choose_kind, decompose, frozen_rank
from hone.config import OSFTConfig
from hone.errors import HoneError
from hone.models.structure import block_of, linear_layers, plain_name, transformer_blocks, unwrap
from hone.training.hooks import AlgorithmHooks

log = logging.getLogger("hone")

MIN_RETENTION_RATIO = 0.1      # mrr, arXiv:2504.07097
IMPORTANCE_BATCHES = 4         # batches of training data the adaptive policy measures
IMPORTANCE_TOKENS = 2048       # tokens per such batch (a longer sample forms a batch of its own)
STATE_FORMAT = "hone-osft-state-v1"


@dataclass
class Target:
    """One target matrix: its name, frozen rank and subspace (None when k is 0 or R).

    ``param`` is the live parameter, looked up by name when the hooks first run (FSDP2 replaces parameters when it
    shards the model, and activation checkpointing renames them); holding the parameter object of
    ``prepare_model`` across sharding would keep the unsharded weights alive and train nothing.
    """

    name: str
    shape: tuple[int, int]
    dtype: torch.dtype
    block: int | None
    k: int = 0
    importance: float | None = None
    subspace: Subspace | None = None
    param: nn.Parameter | None = None
    local: Subspace | None = None        # the subspace for this rank's rows (FSDP2), else ``subspace``
    reduce: Any = None                   # all-reduce over the ranks sharing this matrix's rows, or None
    full_state: dict | None = None       # the whole subspace for checkpoints, kept (on CPU) by rank 0 when sharded
    live_name: str | None = None         # the parameter's name in the model being trained
    rows: tuple[int, int] | None = None  # the rows ``subspace`` was cut to (FSDP2), None when whole

    @property
    def rank(self) -> int:
        return min(self.shape)

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def trainable_dof(self) -> int:
        """Dimension of the matrices this target may still move in: (N - k)(M - k)."""
        n, m = self.shape
        return (n - self.k) * (m - self.k)


# -- finding targets -------------------------------------------------------------------------------------

def default_target_names(model: nn.Module) -> list[str]:
    """Parameter names of the 2-D weights of linear-like modules inside the transformer blocks."""
    if not transformer_blocks(model):
        raise HoneError("cannot find the transformer blocks of this model (no nn.ModuleList of layers)",
                        where="the model's module structure",
                        fix="pass target_patterns, regular expressions over parameter names, e.g. "
                            "'layers\\.\\d+\\..*proj\\.weight$'")
    names = [f"{n}.weight" for n in linear_layers(model, any_matrix=True)]
    if not names:
        raise HoneError("the transformer blocks hold no 2-D weight matrices to target",
                        where="the model's transformer blocks",
                        fix="pass target_patterns naming the weight matrices to constrain")
    return names


def select_targets(model: nn.Module, patterns: list[str] | None) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the targets: the default choice, or every parameter a pattern matches."""
    params = dict(model.named_parameters())
    if not patterns:
        return [(n, params[n]) for n in default_target_names(model) if n in params]
    compiled = _compile_patterns(patterns)
    chosen: dict[str, nn.Parameter] = {}
    for pat, rx in compiled:
        hits = [n for n in params if rx.search(n)]
        if not hits:
            examples = [n for n in params if params[n].ndim == 2][:4]
            raise HoneError(f"target pattern {pat!r} matches no parameter of the model",
                            where="target_patterns",
                            fix="patterns are regular expressions searched in parameter names such as "
                                + ", ".join(repr(e) for e in examples))
        for n in hits:
            p = params[n]
            # `q_proj` also matches q_proj.bias: a bias beside its matched weight trains normally.
            if p.ndim != 2 and n.endswith(".bias") and n[:-len("bias")] + "weight" in hits:
                continue
            if p.ndim != 2:
                raise HoneError(f"target pattern {pat!r} matches {n} of shape {tuple(p.shape)}, which is not a "
                                "2-D weight matrix", where="target_patterns",
                                fix="OSFT constrains weight matrices only; narrow the pattern, e.g. end it with "
                                    "'proj\\.weight$'")
            chosen.setdefault(n, p)
    return list(chosen.items())


def _compile_patterns(patterns: list[str]) -> list[tuple[str, re.Pattern]]:
    out = []
    for pat in patterns:
        try:
            out.append((pat, re.compile(pat)))
        except re.error as err:
            raise HoneError(f"target pattern {pat!r} is not a valid regular expression ({err})",
                            where="target_patterns", fix="fix the pattern (Python `re` syntax)") from None
    return out


# -- adaptive rank -----------------------------------------------------------------------------------------

def _sample_batches(data, max_batches: int = IMPORTANCE_BATCHES, max_tokens: int = IMPORTANCE_TOKENS) -> list:
    from hone.data.batching import pack

    batches, current, size = [], [], 0
    for sample in data.samples:
        n = len(sample.input_ids)
        if current and size + n > max_tokens:
            batches.append(pack(current))
            current, size = [], 0
            if len(batches) == max_batches:
                break
        current.append(sample)
        size += n
    if current and len(batches) < max_batches:
        batches.append(pack(current))
    return batches


@torch.no_grad()
def block_importance(model: nn.Module, blocks: list[nn.Module], data, device: torch.device | None) -> list[float]:
    """Mean cosine similarity between each block's input and output hidden states (arXiv:2504.07097),
    over the tokens of a few batches of ``data``, clipped to [0, 1]. A block the text forward pass does not run
    (another tower of a multimodal model) gets the mean of the others."""
    sums = [0.0] * len(blocks)
    counts = [0] * len(blocks)

    def hook(i: int):
        def record(module, args, kwargs, output):
            x = args[0] if args else kwargs.get("hidden_states")
            y = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape:
                cs = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)
                sums[i] += float(cs.sum())
                counts[i] += cs.numel()
        return record

    handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    was_training = model.training
    body = getattr(model, "base_model", model)  # the decoder without the LM head: its logits are not needed
    model.eval()
    try:
        for batch in _sample_batches(data):
            if device is not None:
                batch = batch.to(device)
            body(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not any(counts):
        raise HoneError("could not measure layer importance: the transformer blocks' inputs and outputs were not "
                        "seen as hidden-state tensors of one shape", where="rank_policy=adaptive",
                        fix="use rank_policy=uniform for this model")
    seen = [min(1.0, max(0.0, s / c)) for s, c in zip(sums, counts) if c]
    mean = sum(seen) / len(seen)
    return [min(1.0, max(0.0, s / c)) if c else mean for s, c in zip(sums, counts)]


def adaptive_ratio(importance: float, unfreeze_rank_ratio: float) -> float:
    """Frozen fraction r = mrr + I (trr - mrr), trr = 1 - u, mrr = min(0.1, trr) (arXiv:2504.07097)."""
    trr = 1.0 - unfreeze_rank_ratio
    mrr = min(MIN_RETENTION_RATIO, trr)
    return mrr + importance * (trr - mrr)


# -- the hooks -------------------------------------------------------------------------------------------

class OSFTHooks(AlgorithmHooks):
    """Plugs OSFT into the trainer: decompose in :meth:`prepare_model`, project after backward, restore the
    frozen components after every optimizer step."""

    name = "osft"

    @classmethod
    def from_config(cls, cfg: Any) -> "OSFTHooks":
        return cls(cfg.osft, seed=cfg.train.seed)

    def __init__(self, cfg: OSFTConfig, *, seed: int = 42, progress: bool | None = None):
        self.cfg = cfg
        self.seed = seed
        self.progress = progress
        self.targets: list[Target] = []
        self.importance: list[float] | None = None
        self._pending_state: dict[str, Any] | None = None
        self._prepared = False

    # -- before loading ----------------------------------------------------------------------------------
    def validate(self) -> None:
        u = self.cfg.unfreeze_rank_ratio
        if not 0.0 <= u <= 1.0:  # the schema checks it too; a hand-built config might not have been validated
            raise HoneError(f"unfreeze_rank_ratio must be in [0, 1], got {u}", where="parameter unfreeze_rank_ratio",
                            fix="use 0 (freeze every direction) to 1 (plain SFT), e.g. 0.25")
        if self.cfg.target_patterns:
            _compile_patterns(self.cfg.target_patterns)

    # -- preparing the model -----------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module, *, data=None, device: torch.device | None = None) -> nn.Module:
        self.validate()
        if not self.cfg.osft:  # mini-trainer's osft=False: plain full fine-tuning through the OSFT entry point
            log.info("osft=False: every parameter trains (plain SFT); unfreeze_rank_ratio and target_patterns unused")
            self.targets, self._prepared = [], True
            return model
        u = self.cfg.unfreeze_rank_ratio
        chosen = select_targets(model, self.cfg.target_patterns)
        block_names = transformer_blocks(model)
        blocks = [model.get_submodule(b) for b in block_names]
        targets = [Target(n, tuple(p.shape), p.dtype, block_of(n, block_names), param=p) for n, p in chosen]

        if self._pending_state is not None:
            self._restore_state(targets, self._pending_state)
        else:
            self._choose_ranks(targets, model, blocks, data, device, u)
            todo = [t for t in targets if 0 < t.k < t.rank]
            if todo:
                cache = SVDCache(self.cfg.osft_svd_cache_dir)
                by_name = {t.name: t for t in todo}
                for name, uu, ss, vh in decompose([(t.name, t.param.detach()) for t in todo], cache,
                                                  progress=self.progress):
                    t = by_name[name]
                    kind = choose_kind(t.shape, t.k, t.dtype)
                    t.subspace = Subspace.build(t.param, uu, ss, vh, t.k, kind, t.dtype)
                    del uu, ss, vh
        for t in targets:
            if t.k >= t.rank:
                # Every direction frozen: P(X) = 0, so the weight is simply not trained.
                t.param.requires_grad_(False)
            t.param = None  # looked up again when training starts (see Target)
        self.targets = targets
        self._prepared = True
        self._log_summary()
        return model

    def _choose_ranks(self, targets: list[Target], model, blocks, data, device, u: float) -> None:
        if self.cfg.rank_policy == "adaptive" and u < 1.0:
            if data is None or not getattr(data, "samples", None):
                raise HoneError("rank_policy=adaptive measures layer importance on the training data, and none "
                                "was given", where="rank_policy", fix="train through hone.osft / the trainer, or "
                                "use rank_policy=uniform")
            if not len(blocks):
                raise HoneError("rank_policy=adaptive needs the model's transformer blocks, and none were found",
                                where="rank_policy", fix="use rank_policy=uniform")
            rng = torch.random.get_rng_state()
            self.importance = block_importance(model, blocks, data, device)
            torch.random.set_rng_state(rng)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                # every rank must freeze the same ranks: rank 0's measurement decides (float noise could differ)
                shared = torch.tensor(self.importance, dtype=torch.float64, device=device)
                torch.distributed.broadcast(shared, src=0)
                self.importance = shared.tolist()
            mean = sum(self.importance) / len(self.importance)
            for t in targets:
                imp = self.importance[t.block] if t.block is not None else mean
                t.importance = imp
                t.k = frozen_rank(adaptive_ratio(imp, u), t.rank)
        else:
            for t in targets:
                t.k = frozen_rank(1.0 - u, t.rank)

    # -- the training loop's hooks -----------------------------------------------------------------------
    def after_backward(self, model: nn.Module) -> None:
        for t in self._bound(model):
            if t.local is not None and t.param.grad is not None:
                t.local.project_(_local(t.param.grad), t.reduce)

    def after_optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for t in self._bound(model):
            # A parameter without a gradient was not stepped (AdamW skips it), so it has nothing to restore.
            if t.local is not None and t.param.grad is not None:
                t.local.restore_(_local(t.param.data), t.reduce)

    def _bound(self, model: nn.Module) -> list[Target]:
        """The targets with their live parameters (looked up again whenever the model's parameters changed)."""
        active = [t for t in self.targets if t.subspace is not None]
        if not active:
            return active
        root = unwrap(model)
        first = active[0]
        if first.param is not None and _find_param(root, first.live_name) is first.param:
            return active
        params = {plain_name(n): (n, p) for n, p in root.named_parameters()}
        main = not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
            or torch.distributed.get_rank() == 0
        for t in active:
            live_name, p = params.get(t.name, (None, None))
            if p is None or tuple(p.shape) != t.shape:
                raise HoneError(f"OSFT target {t.name} is no longer a {t.shape[0]}x{t.shape[1]} parameter of the "
                                "model being trained", where="osft (model wrapping after prepare_model)",
                                fix="report this: the model was changed in a way OSFT does not follow")
            t.param, t.live_name = p, live_name
            shard = _row_shard(p, t.name)
            if shard is None:
                t.subspace = t.subspace.to(_local(p).device)
                t.local, t.reduce = t.subspace, None
                continue
            start, end, group = shard
            if t.rows is None:
                t.full_state = t.subspace.state() if main else None
                # only this rank's rows stay on the device (rank 0 keeps the whole bases on the CPU for checkpoints)
                t.subspace = t.subspace.rows(start, end).to(_local(p).device)
                t.rows = (start, end)
            elif t.rows != (start, end):
                raise HoneError(f"the rows of {t.name} held by this rank changed during training",
                                where="osft with FSDP", fix="report this")
            t.local = t.subspace
            t.reduce = lambda x, g=group: torch.distributed.all_reduce(x, group=g)
        return active

    # -- reporting ---------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        layers = []
        for t in self.targets:
            n, m = t.shape
            layers.append({"name": t.name, "shape": [n, m], "rank": t.rank, "frozen_directions": t.k,
                           "trainable_directions": t.rank - t.k,
                           "layout": t.subspace.kind if t.subspace else ("frozen" if t.k >= t.rank else "none"),
                           **({"importance": round(t.importance, 6)} if t.importance is not None else {})})
        return {
            "unfreeze_rank_ratio": self.cfg.unfreeze_rank_ratio,
            "rank_policy": self.cfg.rank_policy,
            "target_matrices": len(self.targets),
            "target_parameters": sum(t.numel for t in self.targets),
            "frozen_directions": sum(t.k for t in self.targets),
            "trainable_directions": sum(t.rank - t.k for t in self.targets),
            "target_trainable_parameters": sum(t.trainable_dof for t in self.targets),
            "basis_bytes": sum(t.subspace.nbytes() for t in self.targets if t.subspace),  # this rank's
            **({"block_importance": [round(x, 6) for x in self.importance]} if self.importance else {}),
            "targets": layers,
        }

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Parameter counts, with each target counted by the directions it may still move in:
        ``trainable_parameters`` = non-target trainable parameters + sum over targets of (N - k)(M - k)."""
        total = sum(p.numel() for p in model.parameters())
        targets = {t.name for t in self.targets}
        others = sum(p.numel() for n, p in model.named_parameters()
                     if p.requires_grad and plain_name(n) not in targets)
        osft = self.summary()
        return {"trainable_parameters": others + osft["target_trainable_parameters"], "total_parameters": total,
                "osft": osft}

    def _log_summary(self) -> None:
        s = self.summary()
        log.info("osft: %d target matrices (%s parameters), %s of %s singular directions frozen, %s trainable; "
                 "bases %.1f MiB", s["target_matrices"], f"{s['target_parameters']:,}", f"{s['frozen_directions']:,}",
                 f"{s['frozen_directions'] + s['trainable_directions']:,}", f"{s['trainable_directions']:,}",
                 s["basis_bytes"] / 2**20)
        for row in s["targets"]:
            log.debug("osft target %s %s: %d frozen / %d trainable directions (%s)", row["name"], row["shape"],
                      row["frozen_directions"], row["trainable_directions"], row["layout"])

    # -- full-state checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The frozen bases and ranks: a resumed run must keep W0's subspaces, not decompose the trained W."""
        return {"format": STATE_FORMAT, "unfreeze_rank_ratio": self.cfg.unfreeze_rank_ratio,
                "rank_policy": self.cfg.rank_policy, "importance": self.importance,
                "targets": {t.name: {"k": t.k, "importance": t.importance,
                                     "subspace": t.full_state or (t.subspace.state() if t.subspace else None)}
                            for t in self.targets}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise HoneError("the checkpoint's OSFT state is not in a format this version reads",
                            where="full-state checkpoint (osft)", fix="resume with the hone version that wrote it")
        if self._prepared:
            self._restore_state(self.targets, state)
        else:
            self._pending_state = state

    def _restore_state(self, targets: list[Target], state: dict[str, Any]) -> None:
        saved = state["targets"]
        names = [t.name for t in targets]
        if sorted(saved) != sorted(names):
            differ = sorted(set(saved) ^ set(names))[:4]
            raise HoneError("the checkpoint's OSFT targets differ from this model's (e.g. " + ", ".join(differ) + ")",
                            where="full-state checkpoint (osft)",
                            fix="resume with the same model and target_patterns as the run that wrote it")
        self.importance = state.get("importance")
        for t in targets:
            entry = saved[t.name]
            if int(entry["k"]) != t.k and self._prepared:
                raise HoneError(f"the checkpoint freezes {entry['k']} directions of {t.name}, this run {t.k}",
                                where="full-state checkpoint (osft)",
                                fix="resume with the same unfreeze_rank_ratio and rank_policy as the run that wrote it")
            t.k = int(entry["k"])
            t.importance = entry.get("importance")
            sub = entry.get("subspace")
            t.subspace = Subspace.from_state(sub) if sub else None
            if t.subspace is not None and tuple(t.subspace.shape) != t.shape:
                raise HoneError(f"the checkpoint's OSFT basis for {t.name} has shape {t.subspace.shape}, the model's "
                                f"weight {t.shape}", where="full-state checkpoint (osft)",
                                fix="resume with the same model as the run that wrote it")
            # bound (moved to the parameter's device, cut to this rank's rows) when the hooks next run
            t.local = t.reduce = t.full_state = t.rows = t.live_name = None
            if self._prepared:
                t.param = None


# -- parameters as the trainer holds them (DDP, FSDP2, activation checkpointing) ---------------------------------

def _find_param(root: nn.Module, name: str) -> nn.Parameter | None:
    try:
        return root.get_parameter(name)
    except AttributeError:
        return None  # renamed (activation checkpointing): the caller rebuilds its lookup


def _is_dtensor(x) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(x, DTensor)


def _local(x: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (possibly sharded) tensor, sharing its storage."""
    return x._local_tensor if _is_dtensor(x) else x


def _row_shard(p: torch.Tensor, name: str) -> tuple[int, int, Any] | None:
    """(first row, end row, process group) of this rank's rows when FSDP2 shards ``p`` by rows; None when this
    rank holds the whole matrix (single process, DDP, or a replicated placement)."""
    if not _is_dtensor(p):
        return None
    from torch.distributed.tensor import Replicate, Shard

    mesh, placements = p.device_mesh, p.placements
    shard_dims = [d for d, pl in enumerate(placements) if isinstance(pl, Shard)]
    if any(not isinstance(pl, (Shard, Replicate)) for pl in placements) or \
            any(placements[d].dim != 0 for d in shard_dims) or len(shard_dims) > 1:
        raise HoneError(f"OSFT cannot follow the sharding of {name} ({placements})", where="osft with FSDP",
                        fix="shard weight matrices by rows (FSDP2's default Shard(0)) or use fsdp_sharding_strategy="
                            "NO_SHARD")
    if not shard_dims:
        return None
    d = shard_dims[0]
    n, size, coord = p.shape[0], mesh.size(d), mesh.get_local_rank(d)
    chunk = -(-n // size)  # torch.chunk, as FSDP2 and DTensor's Shard(0) split rows
    start = min(coord * chunk, n)
    end = min(start + chunk, n)
    rows = _local(p).shape[0]
    if end - start != rows:
        raise HoneError(f"OSFT cannot locate this rank's rows of {name} ({rows} rows held, {end - start} expected)",
                        where="osft with FSDP", fix="use fsdp_sharding_strategy=NO_SHARD")
    return start, end, mesh.get_group(d)
