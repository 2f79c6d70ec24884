"""The fast decoder of the generation loop: a static KV cache, a lean LLM forward, CUDA graphs.

The eager decoder (`EagerDecoder`, the reference) runs transformers' `LlamaModel` with a growing
`DynamicCache` and a boolean mask rebuilt for the live cache length. `StaticDecoder` computes the
same numbers with none of its per-forward overhead:

- the KV cache is allocated once per request shape, (R, H_kv, S, D) per layer with
  S = prompt + text + masks columns, written in place at the chunk's columns (`index_copy_`);
- which keys are real (not left/right padding) is a (R, S) boolean buffer written with the cache,
  so the attention mask of a chunk is two comparisons against the chunk's columns, not a rebuild;
- RoPE comes from the position ids and the fixed inverse frequencies: transformers' dynamic-NTK
  update (`rope_type: dynamic`, the release's config) syncs with the host twice per forward
  (`torch.max(position_ids)` compared in Python), and below `max_position_embeddings` it never
  changes the frequencies (neither does the reference InternLM2 code), so it is skipped;
- the layers are called submodule by submodule (norms, projections, MLP: the same modules and the
  same operations as transformers' Llama with SDPA, so on the CPU the logits are bit-identical),
  without its kwargs/decorator/mask-helper layers and the DynamicCache's copy of every key per step;
- with `cuda_graphs=True` (CUDA only, `static_shapes` implied) each chunk width is captured once
  as a CUDA graph over the full cache width and replayed: one launch per forward, no host sync.

Everything here is per-request state owned by the caller (`generation.generate` or a
`Segmenter` that reuses one decoder so graphs are captured once); the model is only read.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from .model import ARGenSegModel


class UnsupportedByStaticDecoder(ValueError):
    """The model or request needs the eager decoder (it would not give the same numbers)."""


@dataclass
class ChunkInputs:
    """One forward's right-padded chunk, R rows of width n (see `model.embed`)."""
    input_ids_Rn: torch.Tensor
    slot_Rn: torch.Tensor
    slot_inputs_RnC: torch.Tensor
    valid_Rn: torch.Tensor
    position_ids_Rn: torch.Tensor


class EagerDecoder:
    """The reference: transformers' text model with a DynamicCache and a mask per forward."""

    def __init__(self, model: ARGenSegModel):
        self.model = model
        self.cache = DynamicCache(config=model.backbone.config.text_config)
        self.key_valid_RT: torch.Tensor | None = None

    def prefill(self, embeds_RTC: torch.Tensor, valid_RT: torch.Tensor,
                position_ids_RT: torch.Tensor) -> torch.Tensor:
        self.key_valid_RT = valid_RT
        return self.model.decode(embeds_RTC, valid_RT, position_ids_RT, cache=self.cache).last_hidden_state

    def step(self, chunk: ChunkInputs) -> torch.Tensor:
        embeds = self.model.embed(chunk.input_ids_Rn, slot_BT=chunk.slot_Rn, slot_inputs_BTC=chunk.slot_inputs_RnC)
        self.key_valid_RT = torch.cat([self.key_valid_RT, chunk.valid_Rn], dim=1)
        return self.model.decode(embeds, self.key_valid_RT, chunk.position_ids_Rn, cache=self.cache).last_hidden_state


def static_inverse_frequencies(model: ARGenSegModel, max_position: int) -> tuple[torch.Tensor, float]:
    """RoPE inverse frequencies valid for every position below `max_position` with no update.

    Dynamic NTK (transformers' and the reference InternLM2's) only rescales once a sequence
    grows past `max_position_embeddings`; below it the frequencies are the initial ones, which
    transformers keeps as `original_inv_freq`. Longer sequences must use the eager decoder.
    """
    rotary = model.backbone.model.language_model.rotary_emb
    kind = rotary.rope_type
    if kind == "longrope":
        raise UnsupportedByStaticDecoder("rope_type 'longrope' switches frequencies per forward")
    if "dynamic" in kind:
        if max_position > rotary.original_max_seq_len:
            raise UnsupportedByStaticDecoder(
                f"{max_position} positions exceed max_position_embeddings {rotary.original_max_seq_len}, "
                "where dynamic RoPE rescales")
        return rotary.original_inv_freq, float(rotary.attention_scaling)
    return rotary.inv_freq, float(rotary.attention_scaling)


def rope_cos_sin(position_ids_RT: torch.Tensor, inv_freq: torch.Tensor, scaling: float,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (R, T, D) of the positions, with the same operations as transformers' Llama RoPE."""
    freqs = position_ids_RT[..., None].float() * inv_freq.to(device=position_ids_RT.device, dtype=torch.float)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)


@dataclass
class StaticKVCache:
    """Keys and values of every layer, (R, H_kv, S, D), plus which of the S columns are real."""
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    key_valid_RS: torch.Tensor
    length: int = 0       # columns written so far; host-side, every chunk's width is known there

    @classmethod
    def allocate(cls, model: ARGenSegModel, rows: int, capacity: int, device: torch.device,
                 dtype: torch.dtype) -> "StaticKVCache":
        text = model.backbone.config.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        shape = (rows, text.num_key_value_heads, capacity, head_dim)
        # zeros, not empty: masked columns are multiplied by an exactly-zero weight, and 0 * NaN is NaN
        return cls(keys=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(text.num_hidden_layers)],
                   values=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(text.num_hidden_layers)],
                   key_valid_RS=torch.zeros(rows, capacity, dtype=torch.bool, device=device))

    @property
    def rows(self) -> int:
        return self.key_valid_RS.shape[0]

    @property
    def capacity(self) -> int:
        return self.key_valid_RS.shape[1]

    def reset(self) -> None:
        """Forget the previous request: only `key_valid` matters, stale keys are masked."""
        self.key_valid_RS.zero_()
        self.length = 0


def _attention(attn: torch.nn.Module, h_RnC: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               mask_R1nS: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               columns_n: torch.Tensor, S: int) -> torch.Tensor:
    """transformers' LlamaAttention + sdpa_attention_forward, writing the cache in place."""
    R, n, _ = h_RnC.shape
    shape = (R, n, -1, attn.head_dim)
    q = attn.q_proj(h_RnC).view(shape).transpose(1, 2)
    k = attn.k_proj(h_RnC).view(shape).transpose(1, 2)
    v = attn.v_proj(h_RnC).view(shape).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    keys.index_copy_(2, columns_n, k)
    values.index_copy_(2, columns_n, v)
    k_all, v_all = keys[:, :, :S], values[:, :, :S]
    groups = attn.num_key_value_groups
    if groups > 1 and n == 1:      # one query: its heads become rows of their KV head (no repeat)
        q = q.reshape(R, -1, groups, attn.head_dim)
    elif groups > 1:
        k_all, v_all = repeat_kv(k_all, groups), repeat_kv(v_all, groups)
    out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask_R1nS, scale=attn.scaling)
    out = out.reshape(R, -1, n, attn.head_dim).transpose(1, 2).contiguous()
    return attn.o_proj(out.reshape(R, n, -1).contiguous())


def static_forward(model: ARGenSegModel, embeds_RnC: torch.Tensor, valid_Rn: torch.Tensor,
                   position_ids_Rn: torch.Tensor, columns_n: torch.Tensor, cache: StaticKVCache,
                   inv_freq: torch.Tensor, rope_scaling: float, key_len: int | None) -> torch.Tensor:
    """The text model over one chunk written at cache `columns_n`; returns the normed hidden states.

    Attends over the first `key_len` columns (None: all of them, for fixed shapes). A key is seen
    if it is real and not after the query in cache order; a query always sees itself, so padded
    rows never give NaNs (their outputs are ignored), as in `model.causal_attention_mask`.
    """
    lm = model.backbone.model.language_model
    S = cache.capacity if key_len is None else key_len
    cache.key_valid_RS.index_copy_(1, columns_n, valid_Rn)
    key_idx_S = torch.arange(S, device=columns_n.device)
    not_after_nS = key_idx_S[None, :] <= columns_n[:, None]
    itself_nS = key_idx_S[None, :] == columns_n[:, None]
    mask_R1nS = ((cache.key_valid_RS[:, None, :S] & not_after_nS[None]) | itself_nS[None])[:, None]
    cos, sin = rope_cos_sin(position_ids_Rn, inv_freq, rope_scaling, embeds_RnC.dtype)
    x = embeds_RnC
    for i, layer in enumerate(lm.layers):
        x = x + _attention(layer.self_attn, layer.input_layernorm(x), cos, sin, mask_R1nS,
                           cache.keys[i], cache.values[i], columns_n, S)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return lm.norm(x)


@dataclass
class _Graph:
    """One captured step of width n: inputs are copied into `inputs`, `graph.replay()` fills `hidden`."""
    graph: "torch.cuda.CUDAGraph"
    inputs: dict[str, torch.Tensor]
    hidden: torch.Tensor


@dataclass
class StaticDecoder:
    """Static-cache decoder for R rows; reusable across requests of the same R (call `start`).

    `static_shapes=True` attends over the whole cache width every step (the shapes CUDA graphs
    need; testable on the CPU); `cuda_graphs=True` also captures each chunk width once.
    """
    model: ARGenSegModel
    cache: StaticKVCache
    inv_freq: torch.Tensor
    rope_scaling: float
    max_position: int                 # RoPE positions below this are exact with `inv_freq`
    static_shapes: bool = False
    cuda_graphs: bool = False
    graphs: dict[int, _Graph] = field(default_factory=dict)
    graph_pool: tuple | None = None

    @classmethod
    def allocate(cls, model: ARGenSegModel, rows: int, capacity: int, *, max_position: int | None = None,
                 static_shapes: bool = False, cuda_graphs: bool = False) -> "StaticDecoder":
        """`max_position`: the largest RoPE position a request may reach (default: `capacity`)."""
        device, dtype = model.pos_1LC.device, model.pos_1LC.dtype
        max_position = capacity if max_position is None else max_position
        if cuda_graphs and device.type != "cuda":
            raise ValueError("cuda_graphs needs the model on a CUDA device")
        if model.backbone.config.text_config._attn_implementation != "sdpa":
            raise UnsupportedByStaticDecoder("the static decoder computes attention as transformers' 'sdpa'")
        inv_freq, scaling = static_inverse_frequencies(model, max_position)
        return cls(model=model, cache=StaticKVCache.allocate(model, rows, capacity, device, dtype),
                   inv_freq=inv_freq, rope_scaling=scaling, max_position=max_position,
                   static_shapes=static_shapes or cuda_graphs, cuda_graphs=cuda_graphs)

    def fits(self, rows: int, capacity: int, max_position: int) -> bool:
        return self.cache.rows == rows and self.cache.capacity >= capacity and self.max_position >= max_position

    def start(self) -> "StaticDecoder":
        self.cache.reset()
        return self

    def _columns(self, n: int) -> torch.Tensor:
        begin = self.cache.length
        if begin + n > self.cache.capacity:
            raise RuntimeError(f"static KV cache of {self.cache.capacity} columns is full ({begin} + {n})")
        self.cache.length = begin + n
        return torch.arange(begin, begin + n, device=self.cache.key_valid_RS.device)

    def _forward(self, embeds: torch.Tensor, valid: torch.Tensor, position_ids: torch.Tensor,
                 columns: torch.Tensor, key_len: int | None) -> torch.Tensor:
        return static_forward(self.model, embeds, valid, position_ids, columns, self.cache,
                              self.inv_freq, self.rope_scaling, key_len)

    def prefill(self, embeds_RTC: torch.Tensor, valid_RT: torch.Tensor,
                position_ids_RT: torch.Tensor) -> torch.Tensor:
        columns = self._columns(embeds_RTC.shape[1])
        return self._forward(embeds_RTC, valid_RT, position_ids_RT, columns, self.cache.length)

    def _embed_and_forward(self, input_ids: torch.Tensor, slot: torch.Tensor, slot_inputs: torch.Tensor,
                           valid: torch.Tensor, position_ids: torch.Tensor, columns: torch.Tensor,
                           key_len: int | None) -> torch.Tensor:
        embeds = self.model.embed(input_ids, slot_BT=slot, slot_inputs_BTC=slot_inputs)
        return self._forward(embeds, valid, position_ids, columns, key_len)

    def step(self, chunk: ChunkInputs) -> torch.Tensor:
        columns = self._columns(chunk.input_ids_Rn.shape[1])
        inputs = dict(input_ids=chunk.input_ids_Rn, slot=chunk.slot_Rn, slot_inputs=chunk.slot_inputs_RnC,
                      valid=chunk.valid_Rn, position_ids=chunk.position_ids_Rn, columns=columns)
        if not self.cuda_graphs:
            return self._embed_and_forward(**inputs, key_len=None if self.static_shapes else self.cache.length)
        graph = self.graphs.get(columns.numel())
        if graph is None:
            try:
                graph = self.graphs[columns.numel()] = self._capture(inputs)
            except RuntimeError as err:       # e.g. an op that cannot be captured: run uncaptured from now on
                warnings.warn(f"CUDA graph capture failed, running without graphs: {err}", RuntimeWarning,
                              stacklevel=2)
                self.cuda_graphs, self.graphs = False, {}
                return self._embed_and_forward(**inputs, key_len=None)   # same keys again at the same columns
        else:
            for name, tensor in inputs.items():
                graph.inputs[name].copy_(tensor)
            graph.graph.replay()
        return graph.hidden

    def _capture(self, inputs: dict[str, torch.Tensor]) -> _Graph:
        """Capture this step's forward. The warm-up run on a side stream IS this step (writing the
        same keys at the same columns again is harmless), so the cache stays right throughout."""
        static = {name: t.clone() for name, t in inputs.items()}

        def run() -> torch.Tensor:
            return self._embed_and_forward(**static, key_len=None)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.graph_pool):
            hidden = run()
        self.graph_pool = graph.pool()
        graph.replay()
        return _Graph(graph=graph, inputs=static, hidden=hidden)
