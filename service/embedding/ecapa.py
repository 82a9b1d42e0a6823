"""The ECAPA-TDNN core: 16 kHz mono waveforms in, 192-d speaker vectors out.

It runs the same three modules as speechbrain's `EncoderClassifier.encode_batch` (Fbank, sentence
mean normalisation, ECAPA-TDNN), built from the model folder's own ``hyperparams.yaml`` and loaded
from its checked weights file, so an operator's own speechbrain ECAPA folder works the same way.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import shutil
import threading
import types
from collections.abc import Iterator, Sequence
from typing import Any, Literal, cast, get_args

import numpy as np
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml

from service.audio import MODEL_RATE
from service.concurrency import compute
from service.embedding.fused import FusedEcapa
from service.embedding.weights import ModelFiles
from service.errors import StartupError

log = logging.getLogger(__name__)

# How the model runs. fp32 / bf16: speechbrain's own modules (bf16 under autocast), with
# `skip_identity_padding` and `lean_attentive_pooling` applied (the same arithmetic). fused-*: the
# inference rewrite of `service.embedding.fused`, in fp32, bf16, or int8 for its large matrix
# products (bf16 elsewhere where the hardware has it, else fp32).
Precision = Literal["fp32", "bf16", "fused-fp32", "fused-bf16", "fused-int8"]
# A path is used only if its vectors of the built-in test signal are this close to speechbrain's
# fp32 ones (the lowest any path reached on real speech: fused-int8, 0.9993 on eval-telephone).
SELF_CHECK_COSINE = 0.999
# Batches are padded up to a multiple of this many samples (0.5 s). Backends cache one set of
# kernels per input shape (oneDNN's primitive cache on a CPU): with free lengths that cache, and
# the process, grew by about 2 MB per distinct length; with bucketed lengths it stays flat.
LENGTH_BUCKET = MODEL_RATE // 2


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_threads(threads: int) -> int:
    """Set torch's intra-op threads (0 = one per usable core) for the calling OS thread, and for
    threads that have not run torch yet; returns the count. The model's own thread is set with
    ``compute.run(configure_threads, n)``.

    Always set explicitly: importing silero_vad drops torch to one thread, so "torch's default"
    would leave the model on one core.
    """
    count = threads if threads > 0 else usable_cores()
    torch.set_num_threads(count)
    with contextlib.suppress(RuntimeError):  # already set once in this process
        torch.set_num_interop_threads(1)
    return count


def load_cohort(files: ModelFiles) -> np.ndarray | None:
    """The model's training-speaker prototypes, L2-normalised, ``(n, dim)`` float32, or None.

    speechbrain's ECAPA classifier scores ``cos(embedding, weight_k)`` directly (no hidden layer),
    so its weights live in the embedding space and serve as an impostor cohort.
    """
    if files.cohort is None:
        return None
    state = torch.load(files.cohort, map_location="cpu", weights_only=True)
    weight = state.get("weight") if isinstance(state, dict) else None
    if weight is None or weight.ndim != 2:
        log.warning("no usable cohort in %s; scores will be plain cosine", files.cohort)
        return None
    cohort = torch.nn.functional.normalize(weight.float(), dim=1)
    return cohort.numpy().astype(np.float32)


@functools.cache
def cpu_flags() -> str:
    """The CPU's feature flags as /proc/cpuinfo lists them ("" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return fh.read()
    except OSError:
        return ""


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 matrix work natively (else autocast would emulate it, slowly)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return any(flag in cpu_flags() for flag in ("avx512_bf16", "amx_bf16"))


def native_int8(device: torch.device) -> bool:
    """Whether `device` has int8 dot-product instructions (VNNI, AMX) that the int8 path needs to pay."""
    if device.type != "cpu":
        return False  # the int8 path is written for the CPU; a GPU runs bf16
    return any(flag in cpu_flags() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def precision_candidates(requested: str, device: torch.device) -> list[Precision]:
    """The paths to try, fastest first: `requested` alone, or for ``auto`` every path the hardware
    runs natively, in the order the bench measured them, down to fp32, which always passes."""
    known: tuple[Precision, ...] = get_args(Precision)
    if requested != "auto":
        if requested not in known:
            raise StartupError(f"unknown precision {requested!r}: use auto, {', '.join(known)}")
        return [requested]
    order: list[Precision] = []
    if native_int8(device):
        order.append("fused-int8")
    if native_bf16(device):
        order += ["fused-bf16", "bf16"]
    return [*order, "fused-fp32", "fp32"]


def pick_precision(requested: str, device: torch.device) -> Precision:
    """The path `requested` starts with (``auto``: the fastest the hardware has; the start-up
    self-check may still fall back from it, see `EcapaEmbedder.precision`)."""
    return precision_candidates(requested, device)[0]


def self_check_signal() -> list[np.ndarray]:
    """Two speech-like 16 kHz clips of different lengths (so a padded batch): a voice whose pitch
    glides under syllable-rate loudness changes, through two formant-like resonances, with a
    little noise. Deterministic, built in: the start-up check needs no files."""
    rng = np.random.default_rng(20260101)
    clips = []
    for seconds, f0 in ((3.0, 120.0), (2.2, 190.0)):
        t = np.arange(int(seconds * MODEL_RATE)) / MODEL_RATE
        pitch = f0 * (1 + 0.15 * np.sin(2 * np.pi * 0.7 * t))
        phase = 2 * np.pi * np.cumsum(pitch) / MODEL_RATE
        formants = {4, 5, 6, 11, 12, 13, 14}
        voice = sum(np.sin(k * phase) / k * (1.5 if k in formants else 1.0) for k in range(1, 30))
        envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t) ** 2
        clip = 0.05 * voice * envelope + 0.003 * rng.standard_normal(len(t))
        clips.append(clip.astype(np.float32))
    return clips


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise StartupError("SPK_DEVICE=cuda but torch sees no GPU; use SPK_DEVICE=cpu or auto")
    return torch.device(requested)


def skip_identity_padding(model: torch.nn.Module) -> int:
    """Drop the no-op padding step of speechbrain's kernel-1 convolutions; returns how many.

    speechbrain's ``Conv1d(padding="same")`` reflect-pads its input before every convolution, and
    for a kernel of 1 the pad is empty but still copies the whole tensor. Those copies were a fifth
    of the bf16 forward time on a CPU. "valid" is the same convolution without the copy; kernels
    wider than 1 keep their reflect padding.
    """
    # Imported here: importing speechbrain registers lazy stand-ins for its optional integrations
    # (k2, ...) that break tools which walk sys.modules (pytest's collection with hypothesis).
    from speechbrain.nnet.CNN import Conv1d as SpeechbrainConv1d

    count = 0
    for module in model.modules():
        if (
            isinstance(module, SpeechbrainConv1d)
            and module.padding == "same"
            and module.kernel_size == 1
            and module.stride == 1
        ):
            module.padding = "valid"
            count += 1
    return count


# Channels of the attention's statistics computed at once (of 3072 in the VoxCeleb model).
POOLING_CHANNELS = 512


def lean_attentive_pooling(model: torch.nn.Module) -> int:
    """Give speechbrain's attentive statistics pooling a forward pass that needs far less memory;
    returns how many pooling layers were changed.

    speechbrain's version holds about eight ``(batch, channels, frames)`` tensors at once (the
    input, it and its mean and std repeated over time and concatenated, the attention before and
    after masking and softmax, and the products of the statistics): most of the model's peak memory,
    about 10 MB per second of audio. This one computes the same thing with the concatenated input's
    convolution split by parts (the mean and std parts are constant over time: a matrix-vector
    product each) and the attention and statistics a block of channels at a time, so besides its
    input it holds ``(batch, POOLING_CHANNELS, frames)`` tensors only. The arithmetic is the same
    up to the order of float sums.
    """
    from speechbrain.lobes.models.ECAPA_TDNN import AttentiveStatisticsPooling

    count = 0
    for module in model.modules():
        if isinstance(module, AttentiveStatisticsPooling) and module.global_context:
            module.forward = types.MethodType(_lean_pooling_forward, module)
            count += 1
    return count


def _weighted_statistics(
    x: torch.Tensor, weights: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """speechbrain's `_compute_statistics`: mean and std over time of ``(N, C, L)`` `x` with
    ``(N, 1 or C, L)`` `weights` that sum to one over time."""
    mean = (weights * x).sum(2)
    std = torch.sqrt((weights * (x - mean.unsqueeze(2)).pow(2)).sum(2).clamp(eps))
    return mean, std


def _lean_pooling_forward(self: Any, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, C, L)`` frames and relative `lengths` -> ``(N, 2C, 1)``: attention-weighted means and
    stds per channel, as speechbrain's AttentiveStatisticsPooling.forward with global context."""
    from speechbrain.dataio.dataio import length_to_mask

    batch, channels, frames = x.shape
    if lengths is None:
        lengths = torch.ones(batch, device=x.device)
    mask = length_to_mask(lengths * frames, max_len=frames, device=x.device).unsqueeze(1)
    uniform = mask / mask.sum(dim=2, keepdim=True).float()
    # The global context: the utterance's mean and std, one vector each.
    context_mean, context_std = zip(
        *(
            _weighted_statistics(x[:, c : c + POOLING_CHANNELS], uniform, self.eps)
            for c in range(0, channels, POOLING_CHANNELS)
        ),
        strict=True,
    )
    mean_all, std_all = torch.cat(context_mean, dim=1), torch.cat(context_std, dim=1)
    # tdnn(cat[x, mean repeated, std repeated]) without building the concatenation.
    tdnn = self.tdnn
    conv = tdnn.conv.conv
    weight = conv.weight[:, :, 0]
    hidden = F.conv1d(x, conv.weight[:, :channels], conv.bias)
    context = mean_all @ weight[:, channels : 2 * channels].T + std_all @ weight[:, 2 * channels :].T
    hidden = hidden + context.to(hidden.dtype).unsqueeze(2)
    hidden = self.tanh(tdnn.dropout(tdnn.norm(tdnn.activation(hidden))))
    # Attention and its statistics, a block of channels at a time.
    attention = self.conv.conv
    means, stds = [], []
    for c in range(0, channels, POOLING_CHANNELS):
        block = slice(c, c + POOLING_CHANNELS)
        logits = F.conv1d(
            hidden, attention.weight[block], attention.bias[block] if attention.bias is not None else None
        )
        logits = logits.masked_fill(mask == 0, float("-inf"))
        mean, std = _weighted_statistics(x[:, block], F.softmax(logits, dim=2), self.eps)
        means.append(mean)
        stds.append(std)
    return torch.cat(means + stds, dim=1).unsqueeze(2)


Compile = Literal["auto", "on", "off"]


def compiler_available(device: torch.device) -> bool:
    """Whether torch.compile can generate code for `device` here: triton and a C compiler (triton
    builds its launcher with one: `CC`, or gcc or clang on PATH) for a GPU, a C++ compiler for
    a CPU."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        named = os.environ.get("CC")
        return bool(shutil.which(named) if named else any(shutil.which(cc) for cc in ("gcc", "clang")))
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


class EcapaEmbedder:
    """Loads once; `embed_batch` is thread-safe (one forward at a time per process). On a CPU every
    torch call runs on the process's compute thread (`service.concurrency`)."""

    sample_rate = MODEL_RATE

    def __init__(
        self,
        files: ModelFiles,
        device: str = "auto",
        precision: Precision | Literal["auto"] = "fp32",
        length_bucket: int = LENGTH_BUCKET,
        compile: Compile = "auto",
    ) -> None:
        """`compile`: run a fused path under torch.compile ("auto": on a GPU only; a CPU pays
        minutes of compilation at start-up, see the README's Speed section)."""
        self.files = files
        self.length_bucket = max(1, length_bucket)
        self.checksum = files.sha256
        self.torch_device = pick_device(device)
        candidates = precision_candidates(precision, self.torch_device)
        if compile not in ("auto", "on", "off"):
            raise StartupError(f"unknown compile setting {compile!r}: use auto, on or off")
        self._compile = compile == "on" or (compile == "auto" and self.torch_device.type == "cuda")
        # On a CPU the model shares the cores with speech detection: one torch call at a time, on
        # the one thread whose torch thread count is set. On a GPU the batcher's threads take turns.
        self._compute = compute if self.torch_device.type == "cpu" else None
        self._lock = threading.Lock()
        self.threads_used = 0  # torch's thread count in the thread that ran the last forward
        with files.hyperparams.open() as fh:
            # The pretrainer entry names hub paths; it is built but never asked to fetch anything.
            hparams: dict[str, Any] = load_hyperpyyaml(fh)
        try:
            self.compute_features: torch.nn.Module = hparams["compute_features"]
            self.mean_var_norm: torch.nn.Module = hparams["mean_var_norm"]
            self.embedding_model: torch.nn.Module = hparams["embedding_model"]
        except KeyError as exc:
            raise StartupError(f"{files.hyperparams} lacks {exc}: not a speechbrain ECAPA folder") from exc
        state = torch.load(files.weights, map_location="cpu", weights_only=True)
        try:
            self.embedding_model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise StartupError(f"{files.weights} does not fit {files.hyperparams}: {exc}") from exc
        for module in (self.compute_features, self.mean_var_norm, self.embedding_model):
            module.eval()
            module.to(self.torch_device)
        skip_identity_padding(self.embedding_model)
        lean_attentive_pooling(self.embedding_model)
        self.precision: Precision = "fp32"
        self.compiled = False  # whether torch.compile runs the model
        self._model: torch.nn.Module = self.embedding_model
        self.self_check_cosine = self._choose(candidates)
        # From here on only the chosen path is kept (speechbrain's fp32 modules were its source).
        self.embedding_model = self._model
        self.dim = int(self.forward(torch.zeros(1, MODEL_RATE), torch.ones(1)).shape[1])
        log.info(
            "model loaded",
            extra={
                "device": str(self.torch_device),
                "precision": self.precision,
                "compiled": self.compiled,
                "self_check_cosine": self.self_check_cosine,
                "sha256": self.checksum,
            },
        )

    def _choose(self, candidates: Sequence[Precision]) -> float:
        """Set up the first of `candidates` whose vectors of `self_check_signal` are within
        `SELF_CHECK_COSINE` of speechbrain's fp32 ones; returns its lowest cosine. A path that
        cannot be built or fails the check is logged and the next one tried; when none is left,
        start-up fails (an explicit precision that fails its check is refused, not replaced)."""
        waves = self_check_signal()
        batch, lens = self.preprocess(waves)
        reference = self.forward(batch, lens)  # speechbrain's modules in fp32
        problems: list[str] = []
        attempts = [
            (candidate, compiled)
            for candidate in candidates
            # With compilation on, a fused path is tried compiled first, then as it is.
            for compiled in ((True, False) if self._compilable(candidate) else (False,))
        ]
        for candidate, compiled in attempts:
            if candidate == "fp32":
                self._use("fp32")
                return 1.0
            try:
                self._use(candidate, compiled)
                vectors = self.forward(batch, lens)
            except Exception as exc:  # a path that cannot be built or run here; compilers raise many kinds
                problems.append(f"{candidate}{' compiled' if compiled else ''}: {exc}")
                extra = {"precision": candidate, "compiled": compiled, "error": str(exc)}
                log.warning("model path unusable", extra=extra)
                continue
            lowest = float(F.cosine_similarity(vectors, reference).min())
            if lowest >= SELF_CHECK_COSINE and bool(torch.isfinite(vectors).all()):
                return lowest
            problems.append(f"{candidate}: cosine {lowest:.5f} to fp32 on the self-check signal")
            log.warning(
                "model path failed its self-check",
                extra={"precision": candidate, "compiled": compiled, "cosine": lowest},
            )
        self._use("fp32")
        raise StartupError("no model path passed the start-up self-check: " + "; ".join(problems))

    def _compilable(self, precision: Precision) -> bool:
        return self._compile and precision.startswith("fused-") and compiler_available(self.torch_device)

    def _use(self, precision: Precision, compiled: bool = False) -> None:
        """Make `precision` the path `forward` runs (`compiled`: under torch.compile); speechbrain's
        fp32 modules stay as they are."""
        self.precision, self.compiled, self._model = "fp32", False, self.embedding_model
        if precision == "bf16":
            # A copy whose convolution weights are cast once here instead of by autocast on every
            # call (20M parameters a forward); normalisation layers keep their fp32 statistics.
            model = copy.deepcopy(self.embedding_model)
            for module in model.modules():
                if isinstance(module, torch.nn.Conv1d):
                    module.to(torch.bfloat16)
            self._model = model
        elif precision != "fp32":
            int8 = precision == "fused-int8"
            bf16 = precision == "fused-bf16" or (int8 and native_bf16(self.torch_device))
            fused = FusedEcapa(self.embedding_model, torch.bfloat16 if bf16 else torch.float32, int8=int8)
            self._model = fused.to(self.torch_device).eval()
            if compiled:
                # Shapes symbolic: batches and lengths vary. Compilation happens on the first
                # call (the self-check). CUDA graphs are not used: they are recorded per shape.
                self._model = cast(torch.nn.Module, torch.compile(self._model, dynamic=True))
                self.compiled = True
        self.precision = precision

    @property
    def device(self) -> str:
        """The device kind, "cpu" or "cuda" (torch's own device object is `torch_device`)."""
        return self.torch_device.type

    # --- the runner's surface: preprocess / forward / postprocess / warmup ----------------------

    def preprocess(self, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad 1-D float32 16 kHz waveforms into ``(batch, time)``.

        ``time`` is the longest waveform rounded up to `length_bucket` samples. Returns the padded
        batch and ``wav_lens``: each waveform's length relative to ``time``, which is how speechbrain
        masks padding in normalisation and pooling (the padding moves a vector by cosine < 2e-4).
        """
        if not waves:
            raise ValueError("empty batch")
        longest = max(len(w) for w in waves)
        padded = -(-longest // self.length_bucket) * self.length_bucket
        pinned = self.torch_device.type == "cuda"  # page-locked, so the copy to the device is asynchronous
        batch = torch.zeros(len(waves), padded, dtype=torch.float32, pin_memory=pinned)
        for row, wave in enumerate(waves):
            batch[row, : len(wave)] = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        lens = torch.tensor([len(w) / padded for w in waves], dtype=torch.float32)
        return batch, lens

    def forward(self, batch: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        """``(batch, time)`` at 16 kHz -> ``(batch, dim)`` float32 on the CPU; the only device work."""
        if self._compute is not None:
            return self._compute.run(self._forward, batch, wav_lens)
        with self._lock:
            return self._forward(batch, wav_lens)

    @staticmethod
    def postprocess(vectors: torch.Tensor) -> np.ndarray:
        return vectors.numpy().astype(np.float32, copy=False)

    def warmup(self) -> None:
        for seconds in (1.0, 3.0):
            self.embed_batch([np.zeros(int(seconds * MODEL_RATE), dtype=np.float32)])

    # --- convenience ------------------------------------------------------------------------------

    def embed_batch(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """1-D float32 16 kHz waveforms -> ``(len(waves), dim)`` float32, not length-normalised."""
        if self._compute is not None:  # padding the batch is torch work too
            return self._compute.run(self._embed_batch, waves)
        return self._embed_batch(waves)

    def embed(self, wave: np.ndarray) -> np.ndarray:
        return np.asarray(self.embed_batch([wave])[0])

    # --- internals --------------------------------------------------------------------------------

    def _embed_batch(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        batch, lens = self.preprocess(waves)
        return self.postprocess(self.forward(batch, lens))

    def _forward(self, batch: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        self.threads_used = torch.get_num_threads()
        return self._forward_padded(batch, wav_lens).float().cpu()

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.precision == "bf16":  # the fused paths cast by themselves
            with torch.autocast(self.torch_device.type, dtype=torch.bfloat16):
                yield
        else:
            yield

    @torch.inference_mode()
    def _forward_padded(self, batch: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.torch_device, non_blocking=True)
        wav_lens = wav_lens.to(self.torch_device, non_blocking=True)
        # Features and their normalisation stay in fp32: they are cheap and precision-sensitive.
        feats = self.compute_features(batch)
        feats = self.mean_var_norm(feats, wav_lens)
        with self._autocast():
            out = self._model(feats, wav_lens)  # = embedding_model once the path is chosen
        flat: torch.Tensor = out.reshape(out.shape[0], -1)
        return flat
