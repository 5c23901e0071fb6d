"""The linear algebra of OSFT: one frozen subspace per target matrix, its projections, and the float32 SVD
(cached on disk, shared out across ranks under torchrun).

For a target W0 (N x M, R = min(N, M)) with SVD W0 = U S V^T, the top k singular directions are frozen:
U_h = U[:, :k], V_h = V[:, :k]. The matrices training may add to W are those X with U_h^T X = 0 and X V_h = 0;
the orthogonal projection onto them is

    P(X) = (I - U_h U_h^T) X (I - V_h V_h^T)

and the frozen part of W0 is F = W0 - P(W0) = U_h U_h^T W0 = W0 V_h V_h^T (= U_h S_h V_h^T).
OSFT keeps W = F + P(W) at every step:

* ``project_(G)``: the gradient becomes P(G) before clipping and AdamW see it;
* ``restore_(W)``: after AdamW's step (whose per-element scaling and weight decay leak into the frozen
  directions) W becomes P(W) + F, which is the nearest matrix meeting U_h^T W = U_h^T W0 and W V_h = W0 V_h.
  It is not incremental, so float rounding never accumulates in the frozen directions.

Three storage layouts compute the same P; which is cheaper depends on k (c = R - k trainable directions):

``direct``  U_h (N x k), V_h (M x k), S_h.  P(X) = X - U_h A - (B - U_h A V_h) V_h^T with A = U_h^T X,
            B = X V_h; restore subtracts the same with A - S_h V_h^T and B - U_h S_h.  ~4kNM flops each.
``tall``    (M == R) U_h (N x k), the trainable right basis V_c (M x c) and A0 = U_h^T W0 (k x M): since
            [V_h V_c] is a full basis of R^M, (I - V_h V_h^T) = V_c V_c^T and
            P(X) = (I - U_h U_h^T) X V_c V_c^T; restore is W = P(W) + U_h A0.  ~(2c + k)NM + 2Nkc flops.
``wide``    (N == R) the mirror image: U_c (N x c), V_h (M x k), B0 = W0 V_h (N x k),
            P(X) = U_c U_c^T X (I - V_h V_h^T), restore W = P(W) + B0 V_h^T.

``tall``/``wide`` recompute W from a product, which in 16-bit would re-round all of W every step, so 16-bit
parameters always use ``direct`` (whose corrections are small updates, rounded like any optimizer step).
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

log = logging.getLogger("hone")

KINDS = ("direct", "tall", "wide")
CACHE_FORMAT = "hone-osft-svd-v1"
# A complement layout keeps a k x M (or N x k) product besides the bases, so it is used only when it saves at
# least 5% of the projection work (measured on CPU it is faster still: fewer, fatter matrix products).
COMPLEMENT_GAIN = 0.95


def frozen_rank(ratio_frozen: float, rank: int) -> int:
    """k = floor(ratio * R), robust to float noise such as (1 - 0.7) * 10 = 2.9999999999999996."""
    return max(0, min(rank, int(ratio_frozen * rank + 1e-9)))


def projection_flops(kind: str, shape: tuple[int, int], k: int) -> int:
    """Multiply-adds of one gradient projection plus one restore (the per-step cost of a target)."""
    n, m = shape
    r = min(n, m)
    c = r - k
    if kind == "direct":
        return 4 * k * n * m + 4 * k * n * m
    if kind == "tall":
        return (4 * c + k) * n * m + 4 * n * k * c
    if kind == "wide":
        return (4 * c + k) * n * m + 4 * m * k * c
    raise ValueError(kind)


def choose_kind(shape: tuple[int, int], k: int, dtype: torch.dtype) -> str:
    """The cheapest exact layout for this target (``direct`` for 16-bit parameters, see the module doc)."""
    n, m = shape
    if dtype != torch.float32:
        return "direct"
    direct = projection_flops("direct", shape, k)
    options = {}
    if m == min(n, m):
        options["tall"] = projection_flops("tall", shape, k)
    if n == min(n, m):
        options["wide"] = projection_flops("wide", shape, k)
    best = min(options, key=options.get) if options else None
    if best is not None and options[best] < COMPLEMENT_GAIN * direct:
        return best
    return "direct"


@dataclass
class Subspace:
    """The frozen subspace of one target matrix and the tensors its layout needs (see the module doc)."""

    kind: str
    k: int
    shape: tuple[int, int]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return min(self.shape)

    @classmethod
    def build(cls, w0: torch.Tensor, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, k: int, kind: str,
              dtype: torch.dtype) -> "Subspace":
        """From W0 and its thin float32 SVD (U: N x R, S: R, Vh: R x M) keep what ``kind`` needs, in ``dtype``."""
        n, m = w0.shape
        assert 0 < k < min(n, m), k
        w = w0.detach().float()
        if kind == "direct":
            t = {"U": u[:, :k], "V": vh[:k].T, "S": s[:k]}
        elif kind == "tall":
            uh = u[:, :k]
            t = {"U": uh, "Vc": vh[k:].T, "A0": uh.T @ w}
        elif kind == "wide":
            vhk = vh[:k].T
            t = {"Uc": u[:, k:], "V": vhk, "B0": w @ vhk}
        else:
            raise ValueError(kind)
        return cls(kind, k, (n, m), {name: x.to(dtype).contiguous() for name, x in t.items()})

    # -- the two operations -----------------------------------------------------------------------------
    # ``x`` / ``w`` may be this rank's rows of a row-sharded matrix (FSDP2's Shard(0)); then the row-side tensors
    # hold the same rows (see :meth:`rows`) and ``reduce`` sums the (small) products over the N rows across ranks.
    @torch.no_grad()
    def project_(self, x: torch.Tensor, reduce=None) -> None:
        """x <- (I - U_h U_h^T) x (I - V_h V_h^T), in place."""
        t = self.tensors
        if self.kind == "direct":
            u, v = t["U"], t["V"]
            a = _summed(u.T @ x, reduce)      # k x M
            b = x @ v                         # N x k
            b.addmm_(u, a @ v, alpha=-1)      # B - U_h (U_h^T x V_h)
            x.addmm_(u, a, alpha=-1)
            x.addmm_(b, v.T, alpha=-1)
        elif self.kind == "tall":
            u, vc = t["U"], t["Vc"]
            y = x @ vc                        # N x c
            y.addmm_(u, _summed(u.T @ y, reduce), alpha=-1)
            torch.mm(y, vc.T, out=x)
        else:
            uc, v = t["Uc"], t["V"]
            y = _summed(uc.T @ x, reduce)     # c x M
            y.addmm_(y @ v, v.T, alpha=-1)
            torch.mm(uc, y, out=x)

    @torch.no_grad()
    def restore_(self, w: torch.Tensor, reduce=None) -> None:
        """w <- P(w) + F: the frozen components of w become W0's again, in place."""
        t = self.tensors
        if self.kind == "direct":
            u, v, s = t["U"], t["V"], t["S"]
            a = _summed(u.T @ w, reduce)
            a.sub_(s[:, None] * v.T)          # A_d = U_h^T w - S_h V_h^T
            b = w @ v
            b.sub_(u * s)                     # B_d = w V_h - U_h S_h
            b.addmm_(u, a @ v, alpha=-1)      # B_d - U_h (A_d V_h)
            w.addmm_(u, a, alpha=-1)
            w.addmm_(b, v.T, alpha=-1)
        elif self.kind == "tall":
            u, vc = t["U"], t["Vc"]
            y = w @ vc
            y.addmm_(u, _summed(u.T @ y, reduce), alpha=-1)
            torch.mm(y, vc.T, out=w)
            w.addmm_(u, t["A0"])
        else:
            uc, v = t["Uc"], t["V"]
            y = _summed(uc.T @ w, reduce)
            y.addmm_(y @ v, v.T, alpha=-1)
            torch.mm(uc, y, out=w)
            w.addmm_(t["B0"], v.T)

    ROW_TENSORS = {"direct": ("U",), "tall": ("U",), "wide": ("Uc", "B0")}

    def rows(self, start: int, end: int) -> "Subspace":
        """This subspace for rows [start, end) of W (a row shard): the N-side tensors are sliced, the rest kept."""
        keep = self.ROW_TENSORS[self.kind]
        return Subspace(self.kind, self.k, self.shape,
                        {n: x[start:end].clone() if n in keep else x for n, x in self.tensors.items()})

    # -- what a full-state checkpoint keeps --------------------------------------------------------------
    def state(self) -> dict:
        return {"kind": self.kind, "k": self.k, "shape": list(self.shape),
                "tensors": {name: x.detach().cpu() for name, x in self.tensors.items()}}

    @classmethod
    def from_state(cls, state: dict, device: torch.device | str | None = None) -> "Subspace":
        tensors = {name: x.to(device) if device is not None else x for name, x in state["tensors"].items()}
        return cls(state["kind"], int(state["k"]), tuple(state["shape"]), tensors)

    def to(self, device) -> "Subspace":
        if all(x.device == torch.device(device) for x in self.tensors.values()):
            return self
        return Subspace(self.kind, self.k, self.shape, {n: x.to(device) for n, x in self.tensors.items()})

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self.tensors.values())


def _summed(x: torch.Tensor, reduce) -> torch.Tensor:
    if reduce is not None:
        reduce(x)
    return x


# -- the SVD: float32, cached by a hash of the weights, shared out across ranks ------------------------------

def weight_key(w: torch.Tensor) -> str:
    """A hash of the matrix's exact bytes, shape and dtype (the cache key of its SVD)."""
    t = w.detach().contiguous().cpu()
    h = hashlib.sha256(f"{CACHE_FORMAT}|{tuple(t.shape)}|{t.dtype}|".encode())
    h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


class SVDCache:
    """``<dir>/<sha256>.safetensors`` holding U, S, Vh of one matrix; written atomically (temp file + rename)."""

    def __init__(self, directory: str | Path | None):
        self.dir = Path(directory) if directory else None

    def path(self, key: str) -> Path | None:
        return self.dir / f"{key}.safetensors" if self.dir else None

    def load(self, key: str, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            d = load_file(str(path), device=str(device))
            return d["U"], d["S"], d["Vh"]
        except Exception as err:  # a damaged entry is recomputed and rewritten, never trusted
            log.warning("osft: ignoring unreadable SVD cache entry %s (%s)", path, err)
            return None

    def save(self, key: str, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> None:
        path = self.path(key)
        if path is None:
            return
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        os.close(fd)
        try:
            save_file({"U": u.contiguous().cpu(), "S": s.contiguous().cpu(), "Vh": vh.contiguous().cpu()}, tmp,
                      metadata={"format": CACHE_FORMAT})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def thin_svd(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U (N x R), S (R), Vh (R x M) of w in float32, on w's device."""
    u, s, vh = torch.linalg.svd(w.detach().float(), full_matrices=False)
    return u, s, vh


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def decompose(weights: list[tuple[str, torch.Tensor]], cache: SVDCache, *, progress: bool | None = None
              ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (name, U, S, Vh) for each weight, in order.

    Single process: one matrix at a time (from the cache when its key is there). Under torch.distributed the
    matrices go round-robin to the ranks; in each round every rank decomposes (or loads) its one matrix and
    the round's results are broadcast from their owners, so each rank does 1/world of the work and memory
    holds at most one round of decompositions.
    """
    from tqdm.auto import tqdm

    rank, world = _dist_info()
    hits = 0
    bar = tqdm(total=len(weights), desc="OSFT SVD", unit="matrix",
               disable=(not progress) if progress is not None else None, dynamic_ncols=True)

    def one(w: torch.Tensor):
        nonlocal hits
        key = weight_key(w) if cache.dir else None
        got = cache.load(key, w.device) if key else None
        if got is not None:
            hits += 1
            return got
        u, s, vh = thin_svd(w)
        if key:
            cache.save(key, u, s, vh)
        return u, s, vh

    try:
        for start in range(0, len(weights), world):
            chunk = weights[start:start + world]
            mine = one(chunk[rank][1]) if rank < len(chunk) else None
            for owner, (name, w) in enumerate(chunk):
                if world == 1:
                    u, s, vh = mine
                else:
                    n, m = w.shape
                    r = min(n, m)
                    if owner == rank:
                        u, s, vh = (x.contiguous() for x in mine)
                    else:
                        u = torch.empty(n, r, dtype=torch.float32, device=w.device)
                        s = torch.empty(r, dtype=torch.float32, device=w.device)
                        vh = torch.empty(r, m, dtype=torch.float32, device=w.device)
                    for x in (u, s, vh):
                        torch.distributed.broadcast(x, src=owner)
                yield name, u, s, vh
                bar.update(1)
    finally:
        bar.close()
    if cache.dir:
        log.info("osft: SVD of %d matrices (%d from the cache %s)", len(weights), hits, cache.dir)

