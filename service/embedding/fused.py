"""An inference-only rewrite of speechbrain's ECAPA-TDNN: the same arithmetic in fewer, larger steps.

Built from the loaded speechbrain modules (their weights, not a copy of their code paths):

- BatchNorm is folded into the linear step that reads its output. speechbrain's TDNN block is
  conv -> ReLU -> BN, so a BN cannot go into its own convolution (the ReLU sits between); its
  per-channel scale and shift go into the *next* convolution's input columns and bias instead
  (reflect padding commutes with a per-channel affine map). Where a BN output is summed with a
  differently scaled tensor (the Res2Net chain) or multiplied (squeeze-excitation), the affine map
  is applied inside the sum or product that was there anyway. The last TDNN's BN goes through the
  attentive statistics (mean and std of ``a*r + c`` are ``a*mean(r) + c`` and ``|a|*std(r)``), and
  the pooled statistics' BN into the final linear layer.
- The attentive pooling never builds the 3x-wide ``[x, mean, std]`` concatenation: its weight is
  split, and the mean and std parts become a per-clip bias.
- Kernel-1 convolutions are matrix products where that is faster (bf16 on a CPU, any GPU).
- ``int8``: the large matrix products (each block's last 1024x1024 and the aggregation's 3072x3072) run
  in int8 with per-output-channel weight scales and per-frame activation scales (VNNI / AMX on a
  CPU), accumulating in int32; each input channel is first weighted by how much its weights
  amplify a rounding error (see `Matmul`). Written for the CPU: a GPU runs bf16.

The rewrite refuses (`FusionUnsupported`) a model whose layout it does not know, and the caller
keeps speechbrain's modules.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# Channels of the attentive statistics computed at once: bounds the pooling's memory as in
# `ecapa.lean_attentive_pooling`.
POOLING_CHANNELS = 512


class FusionUnsupported(Exception):
    """The model is not the ECAPA-TDNN layout this rewrite knows."""


def _affine(bn: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in eval mode as ``y = a * x + c`` per channel (fp32)."""
    norm = getattr(bn, "norm", bn)
    if not isinstance(norm, torch.nn.BatchNorm1d) or not norm.track_running_stats:
        raise FusionUnsupported(f"not an inference BatchNorm1d: {type(norm).__name__}")
    assert norm.running_var is not None and norm.running_mean is not None
    a = 1.0 / torch.sqrt(norm.running_var.float() + norm.eps)
    if norm.affine:
        a = a * norm.weight.float()
    c = -norm.running_mean.float() * a
    if norm.affine:
        c = c + norm.bias.float()
    return a.detach(), c.detach()


def _conv(module: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A speechbrain Conv1d's fp32 weight ``(out, in, k)``, bias and dilation; reflect "same"
    padding is assumed and checked."""
    conv = getattr(module, "conv", module)
    if not isinstance(conv, torch.nn.Conv1d) or conv.stride != (1,) or conv.groups != 1:
        raise FusionUnsupported(f"unexpected convolution {conv}")
    kernel = conv.kernel_size[0]
    padding = (getattr(module, "padding", None), getattr(module, "padding_mode", None))
    if kernel > 1 and (padding != ("same", "reflect") or kernel % 2 == 0):
        raise FusionUnsupported("only odd kernels with reflect 'same' padding are known")
    bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(conv.out_channels)
    return conv.weight.detach().float(), bias, conv.dilation[0]


def _fold_input(
    weight: torch.Tensor, bias: torch.Tensor, a: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv(a*x + c)`` as ``conv'(x)``: scale the input columns, move the shift into the bias
    (every tap sees the constant, reflect padding included)."""
    return weight * a[None, :, None], bias + weight.sum(2) @ c


class Matmul(torch.nn.Module):
    """A kernel-1 convolution ``(B, I, T) -> (B, O, T)`` as a matrix product, optionally int8."""

    weight: torch.Tensor
    bias: torch.Tensor
    scale: torch.Tensor
    input_scale: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        dtype: torch.dtype,
        int8: bool,
        input_scale: torch.Tensor | None = None,
    ) -> None:
        """`input_scale` (int8 only): the input's channels are multiplied by it before they are
        quantized, and the weight's columns divided; for an input whose channels differ widely in
        range (a BN folded into this weight), which would otherwise share one scale per frame."""
        super().__init__()
        weight = weight[:, :, 0] if weight.ndim == 3 else weight
        self.int8 = int8
        self.dtype = dtype
        self.register_buffer("input_scale", None)
        if int8:
            if input_scale is not None:
                weight = weight / input_scale[None, :]
            # Then a frame's channels are weighted by how much their weights amplify a rounding
            # error (SmoothQuant's balance at alpha 0.5, with the weights' side alone: no data).
            balance = weight.abs().amax(dim=0).clamp(min=1e-12).sqrt()
            weight = weight / balance[None, :]
            scaled = balance if input_scale is None else balance * input_scale
            self.input_scale = scaled.float()[:, None]
            scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            self.register_buffer("weight", torch.round(weight / scale[:, None]).to(torch.int8))
            self.register_buffer("scale", scale[:, None])
        else:
            self.register_buffer("weight", weight.to(dtype))
        self.register_buffer("bias", bias.to(torch.float32 if int8 else dtype)[:, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.int8:
            return torch.stack([self._int8(clip) for clip in x]) if len(x) > 1 else self._int8(x[0])[None]
        if x.device.type != "cpu":
            return torch.matmul(self.weight, x).add_(self.bias)
        if self.dtype == torch.float32:  # oneDNN's fp32 convolution beat the fp32 matrix product
            return F.conv1d(x, self.weight[:, :, None], self.bias[:, 0])
        # bf16: one 2-D product per clip beat both the convolution and torch.matmul's batched form.
        rows = [torch.addmm(self.bias, self.weight, clip) for clip in x]
        return torch.stack(rows) if len(rows) > 1 else rows[0][None]

    def _int8(self, x: torch.Tensor) -> torch.Tensor:
        """One clip's ``(I, T)`` -> ``(O, T)``; a frame's channels share one scale."""
        assert self.input_scale is not None
        x = x * self.input_scale
        frame_scale = x.abs().amax(dim=0, keepdim=True).float().clamp(min=1e-12) / 127.0
        quantized = torch.round(x / frame_scale).to(torch.int8)  # not in place: x may be the input
        product = torch._int_mm(self.weight, quantized).float()
        return product.mul_(frame_scale).mul_(self.scale).add_(self.bias).to(self.dtype)


class Conv(torch.nn.Module):
    """A kernel > 1 convolution with reflect "same" padding."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, dilation: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("weight", weight.to(dtype))
        self.register_buffer("bias", bias.to(dtype))
        self.dilation = dilation
        self.pad = dilation * (weight.shape[2] - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad, self.pad), mode="reflect")
        return F.conv1d(x, self.weight, self.bias, dilation=self.dilation)


def _mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """``(B, 1, T)`` float: 1 on a clip's frames, 0 on its padding (speechbrain's own masking)."""
    from speechbrain.dataio.dataio import length_to_mask

    mask: torch.Tensor = length_to_mask(lengths * frames, max_len=frames, device=lengths.device)
    return mask.float().unsqueeze(1)


class FusedSERes2Net(torch.nn.Module):
    """speechbrain's SERes2NetBlock (TDNN, Res2Net, TDNN, squeeze-excitation, residual)."""

    se1_w: torch.Tensor
    se1_b: torch.Tensor
    se2_w: torch.Tensor
    se2_b: torch.Tensor
    a2: torch.Tensor
    c2: torch.Tensor

    def __init__(self, block: Any, dtype: torch.dtype, int8: bool) -> None:
        super().__init__()
        if block.shortcut is not None:
            raise FusionUnsupported("a shortcut convolution")
        scale_count = block.res2net_block.scale
        w1, b1, _ = _conv(block.tdnn1.conv)
        # Never int8: its input is the residual stream, whose rounding moved telephone speech's
        # vectors to cosine 0.9987 of fp32 (0.9993 with this product in bf16).
        self.tdnn1 = Matmul(w1, b1, dtype, False)
        a1, c1 = _affine(block.tdnn1.norm)
        width = w1.shape[0] // scale_count
        self.width = width
        w2, b2, _ = _conv(block.tdnn2.conv)
        # tdnn2 reads [t1 chunk 0, y_1 .. y_{s-1}]: fold chunk 0's BN and every y's BN into it.
        a_cat = torch.empty(w2.shape[1])
        c_cat = torch.empty(w2.shape[1])
        a_cat[:width], c_cat[:width] = a1[:width], c1[:width]
        convs, sums_a, sums_c = [], [], []
        prev_a: torch.Tensor | None = None
        prev_c: torch.Tensor | None = None
        for k, tdnn in enumerate(block.res2net_block.blocks, start=1):
            part = slice(k * width, (k + 1) * width)
            weight, bias, dilation = _conv(tdnn.conv)
            if k == 1:  # reads t1's chunk 1 alone: fold its BN into the convolution
                weight, bias = _fold_input(weight, bias, a1[part], c1[part])
                sums_a.append(torch.zeros(0))
                sums_c.append(torch.zeros(0))
            else:  # reads chunk k + y_{k-1}: both BNs applied in the sum
                assert prev_a is not None and prev_c is not None
                sums_a.append(torch.stack([a1[part], prev_a]))
                sums_c.append(c1[part] + prev_c)
            convs.append(Conv(weight, bias, dilation, dtype))
            prev_a, prev_c = _affine(tdnn.norm)
            a_cat[part], c_cat[part] = prev_a, prev_c
        self.convs = torch.nn.ModuleList(convs)
        for k, (a, c) in enumerate(zip(sums_a, sums_c, strict=True)):
            self.register_buffer(f"sum_a{k}", a.to(dtype)[:, :, None] if a.numel() else a)
            self.register_buffer(f"sum_c{k}", c.to(dtype)[:, None] if c.numel() else c)
        w2, b2 = _fold_input(w2, b2, a_cat, c_cat)
        # In int8 its input is quantized as the BN would scale it (the unscaled ReLUs differ by
        # orders of magnitude from channel to channel).
        spread = a_cat.abs().clamp(min=1e-3 * float(a_cat.abs().max()))
        self.tdnn2 = Matmul(w2, b2, dtype, int8, input_scale=spread)
        # tdnn2's own BN goes into the squeeze-excitation: its mean is a*mean(r)+c (into conv1),
        # and the output a*r*s + c*s + x is one multiply-add over the frames.
        a2, c2 = _affine(block.tdnn2.norm)
        se1_w, se1_b, _ = _conv(block.se_block.conv1)
        se1_w, se1_b = _fold_input(se1_w, se1_b, a2, c2)
        se2_w, se2_b, _ = _conv(block.se_block.conv2)
        self.register_buffer("se1_w", se1_w[:, :, 0])
        self.register_buffer("se1_b", se1_b)
        self.register_buffer("se2_w", se2_w[:, :, 0])
        self.register_buffer("se2_b", se2_b)
        self.register_buffer("a2", a2[:, None])
        self.register_buffer("c2", c2[:, None])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        r1 = torch.relu_(self.tdnn1(x))
        chunks = torch.split(r1, self.width, dim=1)
        relus = [chunks[0]]
        for k, conv in enumerate(self.convs):
            if k == 0:
                inp = chunks[1]
            else:
                a = getattr(self, f"sum_a{k}")
                inp = torch.addcmul(getattr(self, f"sum_c{k}"), a[0], chunks[k + 1])
                inp.addcmul_(a[1], relus[-1])
            relus.append(torch.relu_(conv(inp)))
        r2 = torch.relu_(self.tdnn2(torch.cat(relus, dim=1)))
        # Squeeze-excitation on BN(r2) = a2*r2 + c2, in fp32 (a vector per clip).
        mean = (r2 * mask.to(r2.dtype)).sum(dim=2, dtype=torch.float32) / mask.sum(dim=2)
        s = torch.relu(mean @ self.se1_w.T + self.se1_b)
        s = torch.sigmoid(s @ self.se2_w.T + self.se2_b).unsqueeze(2)
        return torch.addcmul(x + (s * self.c2).to(x.dtype), r2, (s * self.a2).to(x.dtype))


class FusedEcapa(torch.nn.Module):
    """``(B, T, n_mels)`` normalised features and relative lengths -> ``(B, dim)`` fp32 vectors."""

    a0: torch.Tensor
    c0: torch.Tensor
    am: torch.Tensor
    cm: torch.Tensor
    pool_mean_w: torch.Tensor
    pool_std_w: torch.Tensor
    at: torch.Tensor
    ct: torch.Tensor
    attention_w: torch.Tensor
    attention_b: torch.Tensor
    fc_w: torch.Tensor
    fc_b: torch.Tensor

    def __init__(self, model: Any, dtype: torch.dtype = torch.float32, int8: bool = False) -> None:
        super().__init__()
        from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, SERes2NetBlock, TDNNBlock

        if not isinstance(model, ECAPA_TDNN):
            raise FusionUnsupported(f"not speechbrain's ECAPA_TDNN: {type(model).__name__}")
        first, *blocks = model.blocks
        if not isinstance(first, TDNNBlock) or not all(isinstance(b, SERes2NetBlock) for b in blocks):
            raise FusionUnsupported("unexpected block layout")
        if not model.asp.global_context:
            raise FusionUnsupported("attentive pooling without global context")
        tdnns = [m for m in model.modules() if isinstance(m, TDNNBlock)]
        if not all(isinstance(m.activation, torch.nn.ReLU) for m in tdnns):
            raise FusionUnsupported("a TDNN block whose activation is not ReLU")
        self.dtype = dtype
        w0, b0, d0 = _conv(first.conv)
        self.first = Conv(w0, b0, d0, dtype)
        a0, c0 = _affine(first.norm)
        self.register_buffer("a0", a0.to(dtype)[:, None])
        self.register_buffer("c0", c0.to(dtype)[:, None])
        self.blocks = torch.nn.ModuleList(FusedSERes2Net(b, dtype, int8) for b in blocks)
        wm, bm, _ = _conv(model.mfa.conv)
        self.mfa = Matmul(wm, bm, dtype, int8)
        am, cm = _affine(model.mfa.norm)
        self.register_buffer("am", am)
        self.register_buffer("cm", cm)
        asp = model.asp
        self.eps = asp.eps
        wt, bt, _ = _conv(asp.tdnn.conv)
        channels = wm.shape[0]
        wt = wt[:, :, 0]
        if wt.shape[1] != 3 * channels:
            raise FusionUnsupported("attentive pooling input is not [x, mean, std]")
        # tdnn([a*r + c, mean, std]): the frame part reads r (a folded in, c into the bias); the
        # mean and std parts are constant over time, a per-clip bias.
        self.pool_tdnn = Matmul(wt[:, :channels] * am[None, :], bt + wt[:, :channels] @ cm, dtype, False)
        self.register_buffer("pool_mean_w", wt[:, channels : 2 * channels].T.contiguous())
        self.register_buffer("pool_std_w", wt[:, 2 * channels :].T.contiguous())
        at, ct = _affine(asp.tdnn.norm)
        self.register_buffer("at", at.to(dtype)[:, None])
        self.register_buffer("ct", ct.to(dtype)[:, None])
        wa, ba, _ = _conv(asp.conv)
        self.register_buffer("attention_w", wa[:, :, 0].to(dtype))
        self.register_buffer("attention_b", ba.to(dtype)[:, None])
        # fc(BN(pooled)): one linear map.
        ap, cp = _affine(model.asp_bn)
        wf, bf, _ = _conv(model.fc)
        wf = wf[:, :, 0]
        self.register_buffer("fc_w", (wf * ap[None, :]).T.contiguous())
        self.register_buffer("fc_b", bf + wf @ cp)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = feats.transpose(1, 2).to(self.dtype)
        frames = x.shape[2]
        mask = _mask(lengths, frames)
        x = torch.addcmul(self.c0, torch.relu_(self.first(x)), self.a0)
        outputs = []
        for block in self.blocks:
            x = block(x, mask)
            outputs.append(x)
        r = torch.relu_(self.mfa(torch.cat(outputs, dim=1)))  # the aggregation before its BN: x = am*r + cm
        return self._pool(r, mask)

    def _pool(self, r: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        channels = r.shape[1]
        uniform = mask / mask.sum(dim=2, keepdim=True)
        mean_r, var_r = _moments(r, uniform, channels)
        mean_x = self.am * mean_r + self.cm
        std_x = torch.sqrt((self.am * self.am * var_r).clamp(self.eps))
        context = mean_x @ self.pool_mean_w + std_x @ self.pool_std_w
        hidden = torch.relu_(self.pool_tdnn(r).add_(context.to(self.dtype).unsqueeze(2)))
        hidden = torch.tanh(torch.addcmul(self.ct, hidden, self.at))
        blocked = mask == 0
        means, variances = [], []
        for c in range(0, channels, POOLING_CHANNELS):
            block = slice(c, c + POOLING_CHANNELS)
            logits = torch.matmul(self.attention_w[block], hidden).add_(self.attention_b[block])
            weights = F.softmax(logits.float().masked_fill_(blocked, float("-inf")), dim=2)
            mean, var = _moments(r[:, block], weights, POOLING_CHANNELS)
            means.append(mean)
            variances.append(var)
        mean_r, var_r = torch.cat(means, dim=1), torch.cat(variances, dim=1)
        pooled = torch.cat(
            [self.am * mean_r + self.cm, torch.sqrt((self.am * self.am * var_r).clamp(self.eps))], dim=1
        )
        out: torch.Tensor = pooled @ self.fc_w + self.fc_b
        return out


def _moments(r: torch.Tensor, weights: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 weighted mean and variance over time of ``(B, C, T)`` `r` (fp32 `weights` that sum to
    one over time), `block` channels at a time."""
    means, variances = [], []
    for c in range(0, r.shape[1], block):
        x = r[:, c : c + block]
        w = weights if weights.shape[1] == 1 else weights[:, c : c + block]
        weighted = w * x  # fp32: the weights are
        mean = weighted.sum(2)
        means.append(mean)
        # E[x^2] - mean^2 with weights summing to one; fp32 keeps the difference exact enough.
        variances.append((weighted.mul_(x).sum(2) - mean * mean).clamp_(min=0))
    return torch.cat(means, dim=1), torch.cat(variances, dim=1)
