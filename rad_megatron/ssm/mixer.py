"""A Mamba-2 mixer for Megatron-Core's hybrid stack (the `M` layer), with MambaInLlama's narrow x/B layout.

Contract: the constructor, `forward(hidden_states, inference_context=None, ...) -> (out, bias)`, the static-batching
inference state (`key_value_memory_dict[layer_number] = (conv_state, ssm_state)`, shapes from
`mamba_state_shapes_per_request`) and `sharded_state_dict` follow `megatron.core.ssm.mamba_mixer.MambaMixer`.

Layout. in_proj packs [z, x, B, C, dt] and conv1d packs [x, B, C]; each component is TP-sharded on its own, so rank r
holds cat(z[r], x[r], B[r], C[r], dt[r]). Widths: z = d_inner = nheads*headdim, C = ngroups*d_state, dt = nheads and
  - standard Mamba-2 (d_xb == d_inner): x = d_inner, B = ngroups*d_state; keys and shapes equal Megatron's mixer;
  - MIL (d_xb < d_inner): x = B = d_xb (= n_kv_heads*head_dim); after the conv, x and B are repeated per head
    (head h reads x/B head h // (nheads / (d_xb/headdim))), exactly HF's repeat_kv. MIL sets ngroups = nheads,
    d_state = headdim.
Unlike Megatron's mixer, a forward with an inference state continues from that state for any number of new tokens
(the speculative verifier feeds K+1 at once); one token takes the O(1) step path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.ssm.utils import _split_tensor_factory
from megatron.core.tensor_parallel import get_cuda_rng_tracker
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.utils import (
    ensure_metadata_has_dp_cp_group,
    make_sharded_tensors_for_checkpoint,
    sharded_state_dict_default,
)
from torch import nn

from rad_megatron.ssm.norm import GatedRMSNorm
from rad_megatron.ssm.ssd import fused_available, ssd_scan, ssd_step

try:
    from causal_conv1d import causal_conv1d_fn
except Exception:  # noqa: BLE001
    causal_conv1d_fn = None


@dataclass
class HybridMambaMixerSubmodules:
    in_proj: Union[ModuleSpec, type] = None
    out_proj: Union[ModuleSpec, type] = None


@dataclass(frozen=True)
class MixerShape:
    """Global (unsharded) widths of one mixer and their per-rank parts."""

    d_model: int
    nheads: int
    headdim: int
    d_state: int
    ngroups: int
    d_xb: int
    tp: int

    @property
    def d_inner(self):
        return self.nheads * self.headdim

    @property
    def mil_layout(self):
        return self.d_xb != self.d_inner

    @property
    def b_width(self):
        return self.d_xb if self.mil_layout else self.ngroups * self.d_state

    @property
    def component_widths(self) -> dict[str, int]:
        """Global in_proj row widths, in packing order."""
        return {"z": self.d_inner, "x": self.d_xb, "B": self.b_width, "C": self.ngroups * self.d_state,
                "dt": self.nheads}

    def local(self, name: str) -> int:
        return self.component_widths[name] // self.tp

    def check(self):
        x_heads, b_groups = self.d_xb // self.headdim, self.b_width // self.d_state
        rules = [
            (self.d_xb % self.headdim == 0, f"d_xb={self.d_xb} must be a multiple of headdim={self.headdim}"),
            (self.b_width % self.d_state == 0, f"B width {self.b_width} must be a multiple of d_state={self.d_state}"),
            (self.nheads % max(x_heads, 1) == 0, f"nheads={self.nheads} must be a multiple of d_xb/headdim={x_heads}"),
            (self.nheads % max(b_groups, 1) == 0, f"nheads={self.nheads} must be a multiple of B groups={b_groups}"),
            (self.nheads % self.ngroups == 0, f"nheads={self.nheads} must be a multiple of ngroups={self.ngroups}"),
        ]
        for div, what in ((self.nheads, "nheads"), (self.ngroups, "ngroups"), (x_heads, "x heads (d_xb/headdim)"),
                          (b_groups, "B groups")):
            rules.append((div % self.tp == 0, f"tensor-parallel size {self.tp} must divide {what}={div}"))
        for ok, msg in rules:
            if not ok:
                raise ValueError(f"Mamba mixer shape: {msg}")


class HybridMambaMixer(MegatronModule):
    """Mamba-2 mixer; see the module docstring. Extra argument over MambaMixer: `d_xb` (None = standard layout)."""

    def __init__(self, config, submodules: HybridMambaMixerSubmodules, d_model, d_conv=4, conv_init=None, expand=2,
                 A_init_range=(1, 16), D_has_hdim=False, rmsnorm=True, norm_before_gate=False, dt_min=0.001,
                 dt_max=0.1, dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, bias=False, conv_bias=True,
                 chunk_size=128, layer_number=None, pg_collection=None, pp_layer_offset=0, name=None, d_xb=None):
        super().__init__(config)
        assert pg_collection is not None, "pg_collection must be provided for HybridMambaMixer"
        assert not bias and conv_bias and not norm_before_gate, "Mamba-2 mixer: no linear bias, conv bias, gate first"
        self.pg_collection, self.tp_group = pg_collection, pg_collection.tp
        headdim = config.mamba_head_dim
        nheads = config.mamba_num_heads or int(expand * d_model) // headdim
        self.shape = MixerShape(d_model=d_model, nheads=nheads, headdim=headdim, d_state=config.mamba_state_dim,
                                ngroups=config.mamba_num_groups, d_xb=d_xb or nheads * headdim,
                                tp=self.tp_group.size())
        self.shape.check()
        s = self.shape
        self.d_model, self.d_conv, self.chunk_size = d_model, d_conv, chunk_size
        self.nheads, self.headdim, self.d_state, self.ngroups, self.d_inner = \
            s.nheads, s.headdim, s.d_state, s.ngroups, s.d_inner
        self.D_has_hdim, self.rmsnorm = D_has_hdim, rmsnorm
        self.layer_number, self.pp_layer_offset = layer_number, pp_layer_offset
        self.cached_batch_size = None
        self.nheads_local_tp, self.d_inner_local_tp = s.local("dt"), s.local("z")
        self.ngroups_local_tp = s.ngroups // s.tp
        self.in_proj_sizes = [s.local(k) for k in ("z", "x", "B", "C", "dt")]
        self.conv_sizes = self.in_proj_sizes[1:4]

        self.in_proj = build_module(
            submodules.in_proj, d_model, sum(s.component_widths.values()), config=config,
            init_method=config.init_method, gather_output=False, bias=False, skip_bias_add=False, is_expert=False,
            tp_comm_buffer_name="fc1", tp_group=self.tp_group, name=f"{name}.in_proj" if name else None)
        self.in_proj.weight.partition_sizes = list(self.in_proj_sizes)
        self._init_ssm_params(config, A_init_range, dt_min, dt_max, dt_init_floor, conv_init)
        if rmsnorm:
            self.norm = GatedRMSNorm(self.d_inner_local_tp, self.d_inner_local_tp // self.ngroups_local_tp,
                                     eps=1e-5, device=self.D.device, dtype=config.params_dtype)
            self.norm.weight.tensor_model_parallel, self.norm.weight.partition_dim = True, 0
        self.out_proj = build_module(
            submodules.out_proj, s.d_inner, d_model, config=config, init_method=config.output_layer_init_method,
            bias=False, input_is_parallel=True, skip_bias_add=True, is_expert=False, tp_comm_buffer_name="fc2",
            tp_group=self.tp_group, name=f"{name}.out_proj" if name else None)

    def _init_ssm_params(self, config, A_init_range, dt_min, dt_max, dt_init_floor, conv_init):
        """Mamba-2 defaults: kaiming conv, dt = exp(U[log dt_min, log dt_max]) via inverse softplus, A ~ U(1,16), D=1."""
        device = "cuda" if torch.cuda.is_available() and not config.use_cpu_initialization else "cpu"
        conv_dim, nh = sum(self.conv_sizes), self.nheads_local_tp
        with get_cuda_rng_tracker().fork():
            self.conv1d_weight = nn.Parameter(torch.empty(conv_dim, 1, self.d_conv, device=device,
                                                          dtype=config.params_dtype))
            self.conv1d_bias = nn.Parameter(torch.empty(conv_dim, device=device, dtype=config.params_dtype))
            nn.init.kaiming_uniform_(self.conv1d_weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(self.d_conv)
            nn.init.uniform_(self.conv1d_bias, -bound, bound)
            if conv_init is not None:
                nn.init.uniform_(self.conv1d_weight, -conv_init, conv_init)
            dt = torch.exp(torch.rand(nh, device=device) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=dt_init_floor)
            self.dt_bias = nn.Parameter((dt + torch.log(-torch.expm1(-dt))).to(config.params_dtype))
            A = torch.empty(nh, dtype=torch.float32, device=device).uniform_(*A_init_range)
            self.A_log = nn.Parameter(torch.log(A))  # fp32 on purpose, as in Mamba-2
        self.D = nn.Parameter(torch.ones(self.d_inner_local_tp if self.D_has_hdim else nh, device=device))
        for p in (self.conv1d_weight, self.conv1d_bias, self.dt_bias, self.A_log, self.D):
            p.tensor_model_parallel, p.partition_dim = True, 0
        self.conv1d_weight.partition_sizes = self.conv1d_bias.partition_sizes = list(self.conv_sizes)

    # ---- forward ------------------------------------------------------------------------------------------------
    def forward(self, hidden_states, inference_context=None, *, inference_params=None, packed_seq_params=None):
        """hidden_states [l, b, d_model] -> (out [l, b, d_model], bias None)."""
        inference_context = inference_context if inference_context is not None else inference_params
        assert packed_seq_params is None, "HybridMambaMixer does not support packed sequences"
        zxbcdt, _ = self.in_proj(hidden_states)
        conv_state = ssm_state = None
        if inference_context is not None:
            assert inference_context.is_static_batching(), "HybridMambaMixer supports static batching only"
            conv_state, ssm_state = self._get_states_from_cache(inference_context, hidden_states.shape[1])
        y = self.mix(zxbcdt.transpose(0, 1), conv_state, ssm_state)
        out, out_bias = self.out_proj(y.transpose(0, 1).contiguous())
        return out, out_bias

    def mix(self, zxbcdt, conv_state=None, ssm_state=None):
        """zxbcdt [b, l, in_proj_local] -> y [b, l, d_inner_local]; states (if given) are advanced in place."""
        z, xBC, dt = torch.split(zxbcdt, [self.in_proj_sizes[0], sum(self.conv_sizes), self.in_proj_sizes[4]], -1)
        xBC = self._conv(xBC, conv_state)
        x, B, C = torch.split(xBC, self.conv_sizes, dim=-1)
        b, l, _ = x.shape
        h, p, n = self.nheads_local_tp, self.headdim, self.d_state
        x = _per_head(x, h, p)
        B, C = _per_head(B, h, n), _per_head(C, h, n)
        A = -torch.exp(self.A_log.float())
        D = None if self.D_has_hdim else self.D
        if ssm_state is not None and l == 1:
            y = ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], ssm_state, D=D, dt_bias=self.dt_bias)[:, None]
        elif ssm_state is None and self._recompute_scan(x):
            y = tensor_parallel.checkpoint(self._scan_output, False, x, dt, A, B, C, D, self.dt_bias)
        else:
            y, final = ssd_scan(x, dt, A, B, C, self.chunk_size, D=D, dt_bias=self.dt_bias,
                                initial_state=None if ssm_state is None else ssm_state)
            if ssm_state is not None:
                ssm_state.copy_(final)
        if self.D_has_hdim:
            y = y + x.float() * self.D.float().view(h, p)
        y = y.reshape(b, l, h * p).to(zxbcdt.dtype)
        return self.norm(y, z) if self.rmsnorm else y * F.silu(z)

    def _recompute_scan(self, x) -> bool:
        """Selective recompute: Megatron recomputes core attention only and leaves Mamba layers alone; here the torch
        chunked scan (whose [b, h, chunks, T, T] decay and score tensors are most of a Mamba layer's activations) is
        recomputed in the backward pass too. The fused kernel keeps only its inputs and output already: not
        recomputed."""
        return (self.config.recompute_granularity == "selective" and self.training and torch.is_grad_enabled()
                and not fused_available(x))

    def _scan_output(self, x, dt, A, B, C, D, dt_bias):
        return ssd_scan(x, dt, A, B, C, self.chunk_size, D=D, dt_bias=dt_bias)[0]

    def _conv(self, xBC, conv_state):
        """Causal depthwise conv + SiLU over [b, l, c]; with a state, continues from its last d_conv inputs."""
        xt = xBC.transpose(1, 2)  # [b, c, l]
        if conv_state is not None:
            return self._conv_with_state(xt, conv_state)
        if causal_conv1d_fn is not None and xt.is_cuda:
            return causal_conv1d_fn(xt, self.conv1d_weight.squeeze(1), self.conv1d_bias,
                                    activation="silu").transpose(1, 2)
        full = torch.cat([xt.new_zeros(xt.shape[0], xt.shape[1], self.d_conv - 1), xt], dim=-1)
        out = F.conv1d(full, self.conv1d_weight, self.conv1d_bias, groups=xt.shape[1])
        return F.silu(out).transpose(1, 2)

    def _conv_with_state(self, xt, conv_state):
        """The cached path (decode steps, speculative verification, a prefill into a cache): d_conv shifted
        multiply-adds instead of F.conv1d, whose CPU depthwise kernel took 10-90 ms for a decode step's [b, c, 4]
        window (bench/hybrid_decode.py); the state keeps the last d_conv inputs, written in place."""
        l = xt.shape[-1]
        full = torch.cat([conv_state[..., 1:].to(xt.dtype), xt], dim=-1)  # [b, c, d_conv - 1 + l]
        conv_state.copy_(full[..., -self.d_conv:])
        w = self.conv1d_weight[:, 0].to(xt.dtype)  # [c, d_conv]
        out = torch.addcmul(self.conv1d_bias.to(xt.dtype)[:, None], full[..., :l], w[:, :1])
        for k in range(1, self.d_conv):
            out.addcmul_(full[..., k:k + l], w[:, k:k + 1])
        return F.silu(out).transpose(1, 2)

    # ---- inference state ----------------------------------------------------------------------------------------
    def mamba_state_shapes_per_request(self):
        return (sum(self.conv_sizes), self.d_conv), (self.nheads_local_tp, self.headdim, self.d_state)

    def _get_states_from_cache(self, inference_context, batch_size, *, inference_params=None):
        """(conv_state, ssm_state) of this layer in the context; fresh zeros at the start of a sequence."""
        cache = inference_context.key_value_memory_dict
        if self.layer_number not in cache or batch_size != self.cached_batch_size:
            conv_shape, ssm_shape = self.mamba_state_shapes_per_request()
            cache[self.layer_number] = (
                torch.zeros(batch_size, *conv_shape, device=self.conv1d_weight.device, dtype=self.conv1d_weight.dtype),
                torch.zeros(batch_size, *ssm_shape, device=self.conv1d_weight.device, dtype=torch.float32))
            self.cached_batch_size = batch_size
        conv_state, ssm_state = cache[self.layer_number]
        if inference_context.sequence_len_offset == 0:
            conv_state.zero_()
            ssm_state.zero_()
        return conv_state, ssm_state

    # ---- checkpoint ---------------------------------------------------------------------------------------------
    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        own = {}
        self._save_to_state_dict(own, "", keep_vars=True)
        sd = make_sharded_tensors_for_checkpoint(
            own, prefix, {k: 0 for k in ("A_log", "dt_bias", "D", "conv1d_weight", "conv1d_bias")},
            sharded_offsets, tp_group=self.tp_group, dp_cp_group=metadata["dp_cp_group"])
        for name, module in self.named_children():
            if name == "norm":
                sd.update(make_sharded_tensors_for_checkpoint(
                    module.state_dict(prefix="", keep_vars=True), f"{prefix}norm.", {"weight": 0}, sharded_offsets,
                    tp_group=self.tp_group, dp_cp_group=metadata["dp_cp_group"]))
            else:
                sd.update(sharded_state_dict_default(module, f"{prefix}{name}.", sharded_offsets, metadata,
                                                     tp_group=self.tp_group))
        for param, key in (("conv1d_weight", "conv1d.weight"), ("conv1d_bias", "conv1d.bias")):
            sd[f"{prefix}{param}"].key = f"{prefix}{key}"
            sd[f"{prefix}{param}"] = _split_tensor_factory(sd[f"{prefix}{param}"], list(self.conv_sizes),
                                                           ["x", "B", "C"], 0)
        sd[f"{prefix}in_proj.weight"] = _split_tensor_factory(
            sd[f"{prefix}in_proj.weight"], list(self.in_proj_sizes), ["z", "x", "B", "C", "dt"], 0)
        return sd


def _per_head(t, nheads, width):
    """[b, l, g*width] -> [b, l, nheads, width], group g serving heads g*nheads/G ... (g+1)*nheads/G - 1."""
    b, l, gw = t.shape
    g = gw // width
    t = t.view(b, l, g, width)
    return t if g == nheads else t.repeat_interleave(nheads // g, dim=2)
